"""``cw``: the Carlini-Wagner margin loss optimised under the l-inf constraint.

Foolbox ships only an L2 Carlini-Wagner attack; this one keeps Foolbox's l-inf
projected-gradient machinery and swaps the loss for the CW margin
``max_{j != y} f_j(x') - f_y(x')``, capped at ``confidence`` (as CW's ``kappa``).
"""

from __future__ import annotations

import math
from typing import Callable

import eagerpy as ep
from foolbox.attacks.gradient_descent_base import LinfBaseGradientDescent
from foolbox.models import Model

from attacks.foolbox_attack import FoolboxAttack
from bench.contract import BOOLEAN, POSITIVE, Integer, check_options


class LinfMarginAscent(LinfBaseGradientDescent):
    """Foolbox l-inf signed-gradient ascent on the CW margin loss."""

    def __init__(self, *, rel_stepsize: float, steps: int, random_start: bool,
                 confidence: float) -> None:
        super().__init__(rel_stepsize=rel_stepsize, steps=steps, random_start=random_start)
        self.confidence = confidence

    def get_loss_fn(self, model: Model, labels: ep.Tensor) -> Callable[[ep.Tensor], ep.Tensor]:
        def loss_fn(inputs: ep.Tensor) -> ep.Tensor:
            logits = model(inputs)
            true = (logits * ep.onehot_like(logits, labels)).sum(axis=-1)
            other = (logits - ep.onehot_like(logits, labels, value=math.inf)).max(axis=-1)
            return ep.minimum(other - true, self.confidence).sum()
        return loss_fn


class CarliniWagnerLinf(FoolboxAttack):
    """l-inf attack on the CW margin; starts at ``x`` (deterministic) unless ``random_start``."""

    name = "cw"

    def __init__(self, *, steps: int = 100, rel_stepsize: float = 0.05,
                 confidence: float = math.inf, random_start: bool = False,
                 restarts: int = 1) -> None:
        check_options(steps=(steps, Integer(1)), rel_stepsize=(rel_stepsize, POSITIVE),
                      confidence=(confidence, POSITIVE) if math.isfinite(confidence)
                      else (1, POSITIVE), random_start=(random_start, BOOLEAN),
                      restarts=(restarts, Integer(1)))
        self.steps = steps
        self.rel_stepsize = rel_stepsize
        self.confidence = confidence
        self.random_start = random_start
        self.restarts = restarts

    def make_attack(self) -> LinfMarginAscent:
        return LinfMarginAscent(rel_stepsize=self.rel_stepsize, steps=self.steps,
                                random_start=self.random_start, confidence=self.confidence)
