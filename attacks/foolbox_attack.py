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

import copy

import foolbox
import torch
from foolbox.attacks.base import FixedEpsilonAttack

from bench.contract import Configurable, margins, project
from models import MLP


class FoolboxAttack(Configurable):
    """Base class; subclasses set ``name`` and implement :meth:`make_attack`."""

    restarts: int = 1

    def make_attack(self) -> FixedEpsilonAttack:
        raise NotImplementedError

    def perturb(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)`` in ``[0, 1]``, ``y (N,)`` -> ``x_adv (N, d)`` float32 in the ball."""
        # a private float32 copy whose weights need no gradient: autograd then only
        # differentiates with respect to the input
        net = copy.deepcopy(net).float().eval().requires_grad_(False)
        x = x.detach().to(torch.float32)
        y = y.to(torch.int64)
        fmodel = foolbox.PyTorchModel(net, bounds=(0.0, 1.0), device="cpu")
        attack = self.make_attack()
        best = x.clone()
        with torch.no_grad():
            best_margin = margins(net(best), y).amax(dim=1)
        for restart in range(max(1, self.restarts)):
            todo = torch.arange(len(x)) if restart == 0 else torch.nonzero(best_margin < 0).view(-1)
            if len(todo) == 0:
                break
            with torch.enable_grad():
                candidate = attack.run(fmodel, x[todo],
                                       foolbox.criteria.Misclassification(y[todo]),
                                       epsilon=float(eps))
            candidate = project(candidate.detach(), x[todo], eps)
            with torch.no_grad():
                margin = margins(net(candidate), y[todo]).amax(dim=1)
            better = margin > best_margin[todo]
            best[todo[better]] = candidate[better]
            best_margin[todo[better]] = margin[better]
        return best
