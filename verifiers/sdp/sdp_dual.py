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
from verifiers.sdp.pair_solver import (
    Solution,
    certified_value,
    dual_key,
    first_order_duals,
    pair_block,
    pair_seed,
)
from verifiers.sdp.pairwise_bound import PairwiseSDPBound


class SDPDual(PairwiseSDPBound):
    """Dual SDP certificate ``f_jy(x) + eps/4 * [D lambda_max^+(M - diag c) + 1^T max(c, 0)]``."""

    name = "sdp-dual"

    def __init__(self, *, steps: int = 30, rank: int = 8, use_trained: bool = True,
                 seed: int = 0) -> None:
        super().__init__()
        if int(steps) < 1 or int(rank) < 1:
            raise ValueError("steps and rank must be positive")
        self.steps = steps
        self.rank = rank
        self.use_trained = use_trained
        self.seed = seed

    def trained_dual(self, net: MLP, size: int, i: int, j: int) -> np.ndarray | None:
        """The network's stored ``c (D,)`` for pair ``(i, j)``, if it has one of that size."""
        trained = net.certificates.get(dual_key(i, j)) if self.use_trained else None
        if trained is not None and tuple(trained.shape) == (size,):
            return trained.detach().double().cpu().numpy()
        return None

    def solve_pairs(self, net: MLP, weight: np.ndarray, v: np.ndarray,
                    pairs: list[tuple[int, int]], on_done: object = None) -> list[Solution]:
        """One certificate per pair (fast; ``on_done`` is not called)."""
        began = time.perf_counter()
        size = 1 + weight.shape[1] + weight.shape[0]
        trained = [self.trained_dual(net, size, i, j) for i, j in pairs]
        missing = [p for p, c in enumerate(trained) if c is None]
        if missing:
            quick = first_order_duals(weight, v[missing], steps=self.steps, rank=self.rank,
                                      seeds=[pair_seed(self.seed, *pairs[p]) for p in missing])
            for row, p in enumerate(missing):
                trained[p] = quick[row]
        share = (time.perf_counter() - began) / len(pairs)   # the batched first-order rounds
        out = []
        for p, c in enumerate(trained):
            started = time.perf_counter()
            certified, _ = certified_value(pair_block(weight, v[p]), c)
            source = "first-order" if p in missing else "trained"
            out.append(Solution(float("nan"), certified, self.steps if p in missing else 0,
                                share + time.perf_counter() - started, source, c))
        return out
