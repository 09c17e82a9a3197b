"""``frobenius``: paper eq. 18, ``f_jy(x) + eps sqrt(d) ||W||_F ||V_j - V_y||_2`` (upper bound)."""

from __future__ import annotations

import torch

from verifiers.norm.norm_bound import NormBoundVerifier


class Frobenius(NormBoundVerifier):
    """Frobenius-norm bound for one-hidden-layer networks; looser than ``spectral``."""

    name = "frobenius"

    def weight_norm(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.linalg.matrix_norm(weight, ord="fro")
