"""``sdp``: the exact SDP certificate of the paper (eq. 10-11), solved per class pair.

Backends: ``mixing`` (default; our low-rank solver, all pairs of a network batched,
seconds for a 784-500-10 network) and ``cvxpy`` (``solver`` = SCS by default, MOSEK
if licensed, or any installed cvxpy SDP solver) to cross-check. Either way the bound
is the certificate of a dual vector (eq. 14) in float64, an upper bound on the SDP
value, hence sound.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from bench.contract import Choice, check_options
from models import MLP
from verifiers.cvxpy_solvers import check_solver
from verifiers.sdp.cvxpy_pair_solver import solve_cvxpy
from verifiers.sdp.pair_solver import Solution, fallback, pair_block, pair_seed, solve_pairs
from verifiers.sdp.pairwise_bound import PairwiseSDPBound

BACKENDS = ("mixing", "cvxpy")


class SDP(PairwiseSDPBound):
    """Certified SDP bound ``f_jy(x) + eps/4 * SDP(M(V_j - V_y, W))`` (upper bound)."""

    name = "sdp"

    def __init__(self, *, backend: str = "mixing", solver: str = "SCS",
                 target_gap: float = 1e-5, max_iters: int = 5000, rank: int | None = None,
                 solver_eps: float = 1e-6, seed: int = 0) -> None:
        super().__init__()
        check_options(backend=(backend, Choice(BACKENDS)))
        if backend == "cvxpy":
            check_solver(solver)
        if not 0 < target_gap < 1:
            raise ValueError(f"target_gap must be in (0, 1), got {target_gap!r}")
        if int(max_iters) < 1 or (rank is not None and int(rank) < 1):
            raise ValueError("max_iters and rank must be positive")
        self.backend = backend
        self.solver = solver
        self.target_gap = target_gap
        self.max_iters = max_iters
        self.rank = rank
        self.solver_eps = solver_eps
        self.seed = seed

    def solve_pairs(self, net: MLP, weight: np.ndarray, v: np.ndarray,
                    pairs: list[tuple[int, int]],
                    on_done: Callable[[int, Solution], None] | None = None) -> list[Solution]:
        if self.backend == "cvxpy":
            out = []
            for index, row in enumerate(v):
                out.append(solve_cvxpy(pair_block(weight, row), solver=self.solver,
                                       eps=self.solver_eps))
                if on_done is not None:
                    on_done(index, out[-1])
            return out
        try:
            solutions = solve_pairs(weight, v, rank=self.rank, target_gap=self.target_gap,
                                    max_iters=self.max_iters,
                                    seeds=[pair_seed(self.seed, i, j) for i, j in pairs],
                                    on_done=on_done)
        except (ArithmeticError, np.linalg.LinAlgError, RuntimeError) as exc:
            return [fallback(pair_block(weight, row), f"{type(exc).__name__}: {exc}")
                    for row in v]
        return [s if np.isfinite(s.certified) else
                fallback(pair_block(weight, row), "non-finite certificate")
                for s, row in zip(solutions, v)]
