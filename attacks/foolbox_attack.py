"""Shared base of the Foolbox-backed attacks: restarts, projection, keep-the-best.

Template method: a subclass only says which Foolbox attack runs (``make_attack``).
The base runs it ``restarts`` times (later restarts only on samples not yet broken),
projects every candidate into ``B_eps(x) ∩ [0, 1]^d``, and keeps per sample the
candidate with the largest margin ``max_{j != y} f_j - f_y``. It returns points only;
the harness re-projects and re-evaluates them, so an attack cannot claim a margin
it did not reach. Randomness comes from torch's global generator (the harness
seeds it before every batch).
"""

from __future__ import annotations

import foolbox
import torch
from foolbox.attacks.base import FixedEpsilonAttack

from attacks.common import frozen_copy, unbroken_runs, worst_margin
from bench.contract import Configurable, project
from models import MLP


class FoolboxAttack(Configurable):
    """Base class; subclasses set ``name`` and implement :meth:`make_attack`."""

    graphs = True          # needs only forward passes: any network

    restarts: int = 1

    def make_attack(self) -> FixedEpsilonAttack:
        raise NotImplementedError

    def perturb(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)`` in ``[0, 1]``, ``y (N,)`` -> ``x_adv (N, d)`` float32 in the ball."""
        net = frozen_copy(net)
        x = x.detach().to(torch.float32)
        y = y.to(torch.int64)
        fmodel = foolbox.PyTorchModel(net, bounds=(0.0, 1.0), device="cpu")
        attack = self.make_attack()

        def attempt(rows: torch.Tensor, run: int) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.enable_grad():
                candidate = attack.run(fmodel, x[rows],
                                       foolbox.criteria.Misclassification(y[rows]),
                                       epsilon=float(eps))
            candidate = project(candidate.detach(), x[rows], eps)
            return candidate, worst_margin(net, candidate, y[rows])

        return unbroken_runs(net, x, y, max(1, self.restarts), attempt)
