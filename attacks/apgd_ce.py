"""``apgd-ce``: Auto-PGD on cross-entropy (AutoAttack's first member), l-inf."""

from __future__ import annotations

import torch

from attacks.apgd import apgd, ce_loss
from attacks.common import frozen_copy, unbroken_runs
from bench.contract import Configurable, Integer, check_options
from models import MLP


class APGDCrossEntropy(Configurable):
    """APGD with the cross-entropy loss: ``steps`` iterations from a random start in the
    ball; ``restarts`` runs, later ones only on samples not yet broken; best point kept."""

    name = "apgd-ce"
    graphs = True          # needs only forward passes: any network

    def __init__(self, *, steps: int = 100, restarts: int = 1) -> None:
        check_options(steps=(steps, Integer(1)), restarts=(restarts, Integer(1)))
        self.steps = steps
        self.restarts = restarts

    def perturb(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)`` in ``[0, 1]``, ``y (N,)`` -> ``x_adv (N, d)`` float32 in the ball."""
        net = frozen_copy(net)
        x, y = x.detach().to(torch.float32), y.to(torch.int64)
        return unbroken_runs(net, x, y, self.restarts, lambda rows, run: apgd(
            net, x[rows], y[rows], float(eps), ce_loss, steps=self.steps))
