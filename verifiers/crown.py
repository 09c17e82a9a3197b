"""``crown``: backward linear bound propagation with adaptive lower ReLU slopes.

Like ``lp`` but a crossing unit's lower line is ``relu(z) >= z`` when ``u > -l`` and
``relu(z) >= 0`` otherwise (CROWN, Zhang et al. 2018; DeepPoly's choice), for the
intermediate layers as well as the output. Sound for any slope in ``[0, 1]``.
"""

from __future__ import annotations

import torch

from bench.contract import Configurable
from models import MLP

from .linear_bounds import crown_slope, margin_upper_bounds


class Crown(Configurable):
    """CROWN upper bound ``U (N, K)`` for ReLU MLPs of any depth."""

    name = "crown"

    def __init__(self, *, clip: bool = True) -> None:
        self.clip = clip

    def bound(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)``, ``y (N,)`` -> ``U (N, K)`` in ``x``'s dtype, ``U[n, y_n] = -inf``."""
        return margin_upper_bounds(net, x, y, eps, crown_slope, self.clip)
