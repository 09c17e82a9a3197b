"""``pgd``: projected gradient ascent on cross-entropy with random restarts (paper sec. 6)."""

from __future__ import annotations

from foolbox.attacks import LinfPGD

from attacks.foolbox_attack import FoolboxAttack
from bench.contract import POSITIVE, Integer, check_options


class PGD(FoolboxAttack):
    """l-inf PGD: random start in the ball, ``steps`` signed steps of ``rel_stepsize * eps``.

    ``restarts`` random starts (5, as in the paper); the best per sample is kept.
    """

    name = "pgd"

    def __init__(self, *, steps: int = 40, rel_stepsize: float = 0.1, restarts: int = 5) -> None:
        check_options(steps=(steps, Integer(1)), rel_stepsize=(rel_stepsize, POSITIVE),
                      restarts=(restarts, Integer(1)))
        self.steps = steps
        self.rel_stepsize = rel_stepsize
        self.restarts = restarts

    def make_attack(self) -> LinfPGD:
        return LinfPGD(rel_stepsize=self.rel_stepsize, steps=self.steps, random_start=True)
