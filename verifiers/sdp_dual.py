"""``sdp-dual``: the quick dual certificate of eq. 14/16 from one dual vector per pair.

``SDP(M) <= D * lambda_max^+(M - diag(c)) + sum(max(c, 0))`` holds for ANY ``c``, so
one float64 eigenvalue per class pair certifies. ``c`` comes from the network file
when it carries trained dual vectors (tensor ``certificates.sdp_dual.I.J`` of shape
``(D,)`` in the order ``[1, t, s]``, as the paper's SDP-NN, Figure 4b); otherwise
from a fixed small budget of ``steps`` mixing rounds (first-order, rank ``rank``).
"""

from __future__ import annotations

import time

import numpy as np

from models import MLP

from .pairwise_sdp import PairwiseSDPBound
from .sdp_core import Solution, certified_value, first_order_dual

TRAINED_KEY = "sdp_dual.{i}.{j}"


class SDPDual(PairwiseSDPBound):
    """Dual SDP certificate ``f_jy(x) + eps/4 * [D lambda_max^+(M - diag c) + 1^T max(c, 0)]``."""

    name = "sdp-dual"

    def __init__(self, *, steps: int = 30, rank: int = 8, use_trained: bool = True,
                 seed: int = 0) -> None:
        super().__init__()
        self.steps = steps
        self.rank = rank
        self.use_trained = use_trained
        self.seed = seed

    def dual_for(self, net: MLP, block: np.ndarray, i: int, j: int) -> tuple[np.ndarray, str]:
        size = 1 + block.shape[0] + block.shape[1] - 1
        trained = net.certificates.get(TRAINED_KEY.format(i=i, j=j)) if self.use_trained else None
        if trained is not None and tuple(trained.shape) == (size,):
            return trained.detach().double().cpu().numpy(), "trained"
        return (first_order_dual(block, steps=self.steps, rank=self.rank, seed=self.seed),
                "first-order")

    def solve_pair(self, net: MLP, block: np.ndarray, i: int, j: int) -> Solution:
        began = time.perf_counter()
        c, source = self.dual_for(net, block, i, j)
        certified, _ = certified_value(block, c)
        return Solution(float("nan"), certified, 0 if source == "trained" else self.steps,
                        time.perf_counter() - began, source, c)
