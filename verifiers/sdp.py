"""``sdp``: the exact SDP certificate of the paper (eq. 10-11), solved per class pair.

Backends: ``mixing`` (default; our low-rank solver, seconds for a 784-500-10 network)
and ``cvxpy`` (``solver`` = SCS by default, MOSEK if licensed, or any installed
cvxpy SDP solver) to cross-check. Either way the bound is the certificate of a dual
vector (eq. 14) in float64, an upper bound on the SDP value, hence sound.
"""

from __future__ import annotations

import numpy as np

from models import MLP

from .pairwise_sdp import PairwiseSDPBound
from .sdp_core import Solution, fallback, solve_mixing
from .sdp_cvxpy import check_solver, solve_cvxpy

BACKENDS = ("mixing", "cvxpy")


class SDP(PairwiseSDPBound):
    """Certified SDP bound ``f_jy(x) + eps/4 * SDP(M(V_j - V_y, W))`` (upper bound)."""

    name = "sdp"

    def __init__(self, *, backend: str = "mixing", solver: str = "SCS",
                 target_gap: float = 1e-5, max_iters: int = 5000, rank: int | None = None,
                 solver_eps: float = 1e-6, seed: int = 0) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "cvxpy":
            check_solver(solver)
        self.backend = backend
        self.solver = solver
        self.target_gap = target_gap
        self.max_iters = max_iters
        self.rank = rank
        self.solver_eps = solver_eps
        self.seed = seed

    def solve_pair(self, net: MLP, block: np.ndarray, i: int, j: int) -> Solution:
        try:
            if self.backend == "cvxpy":
                return solve_cvxpy(block, solver=self.solver, eps=self.solver_eps)
            solution = solve_mixing(block, rank=self.rank, target_gap=self.target_gap,
                                    max_iters=self.max_iters, seed=self.seed)
        except (ArithmeticError, np.linalg.LinAlgError) as exc:
            return fallback(block, f"{type(exc).__name__}: {exc}")
        if not np.isfinite(solution.certified):
            return fallback(block, "non-finite certificate")
        return solution
