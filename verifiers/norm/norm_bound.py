"""Shared form of the paper's norm bounds (eq. 17 and 18) for one hidden layer.

For ``f = V relu(W x + b) + c0`` and any ``x'`` in ``B_eps(x)``:
``f_j(x') - f_y(x') <= f_j(x) - f_y(x) + eps * sqrt(d) * ||W||_* * ||V_j - V_y||_2``,
because relu is 1-Lipschitz, ``||x' - x||_2 <= eps sqrt(d)`` and ``||W||_F >= ||W||_2``
bounds how far ``W x`` moves. ``||W||_*`` is the spectral or the Frobenius norm.
The bound is an upper bound (sound); it ignores the ``[0, 1]`` box.
"""

from __future__ import annotations

import math

import torch

from bench.contract import Configurable, margins, pair_difference_norms
from models import MLP, weights_summary


class NormBoundVerifier(Configurable):
    """Upper bound ``U (N, K)`` from a norm of the first-layer weights ``W (m, d)``.

    The weight-only factor ``eps``-free slack per class pair is computed once per
    weights (an SVD for the spectral norm) and cached.
    """

    def __init__(self) -> None:
        self._slack: dict[str, torch.Tensor] = {}

    def weight_norm(self, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def supports(self, net: MLP) -> bool:
        return net.hidden_layers == 1

    def bound(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)``, ``y (N,)`` -> ``U (N, K)`` float64, ``U[n, y_n] = -inf``."""
        with torch.no_grad():
            net64 = net.float64_copy()
            clean = margins(net64(x.to(torch.float64)), y)
            return clean + eps * self.pair_slack(net64)[y]

    def pair_slack(self, net: MLP) -> torch.Tensor:
        """``sqrt(d) ||W||_* ||V_j - V_i||_2`` for every class pair: ``(K, K)`` float64."""
        key = weights_summary(net)
        if key not in self._slack:
            weight, _, last, _ = net.one_hidden_layer()
            weight, last = weight.detach().double(), last.detach().double()
            self._slack[key] = (math.sqrt(weight.shape[1]) * self.weight_norm(weight)
                                * pair_difference_norms(last))
        return self._slack[key]

