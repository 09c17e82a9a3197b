"""``lp``: the Wong-Kolter dual-network bound of the LP relaxation (Kolter & Wong 2017).

For ``c = e_j - e_y`` it returns ``c^T c0 + nu2^T b + nu1^T x + eps ||nu1||_1 - sum over
crossing units of l_k max(nu2_k, 0)`` (one hidden layer; deeper nets repeat the pass
layer by layer for the pre-activation bounds), computed as one batched backward pass
over samples and classes with the input set ``B_eps(x) ∩ [0, 1]^d``. Any fixed slopes
give a dual-feasible point of the triangle LP, so this is an upper bound on the LP
optimum and on the true worst case. Differentiable in the weights (used for training).
"""

from __future__ import annotations

import torch

from bench.contract import Configurable
from models import MLP

from .linear_bounds import margin_upper_bounds, wong_kolter_slope


class LP(Configurable):
    """Wong-Kolter dual bound ``U (N, K)`` for ReLU MLPs of any depth (upper bound)."""

    name = "lp"

    def __init__(self, *, clip: bool = True) -> None:
        self.clip = clip

    def bound(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)``, ``y (N,)`` -> ``U (N, K)`` in ``x``'s dtype, ``U[n, y_n] = -inf``."""
        return margin_upper_bounds(net, x, y, eps, wong_kolter_slope, self.clip)
