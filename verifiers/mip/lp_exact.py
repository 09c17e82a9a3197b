"""``lp-exact``: the triangle LP relaxation of a ReLU MLP solved exactly with HiGHS.

Per sample and wrong class ``j``: maximise ``f_j - f_y`` over ``x`` in the box
``B_eps(x) ∩ [0, 1]^d`` and post-activations ``z_k`` with, per hidden unit and
pre-activation ``zhat = W z_prev + b`` bounded by ``[l, u]``: ``z = zhat`` if ``l >= 0``;
``z = 0`` if ``u <= 0``; otherwise ``z >= 0``, ``z >= zhat``, ``z <= u (zhat - l) / (u - l)``.
The bounds ``[l, u]`` are the tightest of interval, Wong-Kolter and CROWN bounds,
so this LP's optimum is never above ``lp``'s dual value (issue: ``lp-exact <= lp``).

The reported value is certified: from HiGHS's row multipliers ``y`` (clipped to
the signs the row bounds allow) weak duality gives ``max c^T v <= sum over rows of
max(y_i row_hi_i, y_i row_lo_i) + sum over columns of max over [lo_i, hi_i] of
(c - A^T y)_i v_i``, evaluated in float64 and valid for any multipliers, so solver
tolerances cannot make the bound too small.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.contract import Configurable
from models import MLP
from verifiers.mip.relu_program import sample_batch


class LPExact(Configurable):
    """Exact triangle-LP upper bound ``U (N, K)`` (float64) for ReLU MLPs of any depth."""

    name = "lp-exact"
    opt_in = True   # one LP per sample and class: seconds per sample on 784-500-10

    def __init__(self, *, clip: bool = True) -> None:
        self.clip = clip

    def bound(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)``, ``y (N,)`` -> ``U (N, K)`` float64, ``U[n, y_n] = -inf``."""
        batch = sample_batch(net, x, eps, self.clip)
        out = np.full((len(y), net.num_classes), -np.inf)
        for n in range(len(y)):
            problem = batch.program(n)
            for j in range(net.num_classes):
                if j == int(y[n]):
                    continue
                obj, const = problem.margin_objective(j, int(y[n]))
                out[n, j] = problem.solve_max(obj)[0] + const
        return torch.from_numpy(out)
