"""``spectral``: paper eq. 17, ``f_jy(x) + eps sqrt(d) ||W||_2 ||V_j - V_y||_2`` (upper bound)."""

from __future__ import annotations

import torch

from verifiers.norm.norm_bound import NormBoundVerifier


class Spectral(NormBoundVerifier):
    """Spectral-norm bound for one-hidden-layer networks (largest singular value of ``W``)."""

    name = "spectral"

    def weight_norm(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.linalg.matrix_norm(weight, ord=2)
