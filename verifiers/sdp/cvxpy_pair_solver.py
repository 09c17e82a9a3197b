"""The SDP of :mod:`verifiers.sdp.pair_solver` through cvxpy (SCS, MOSEK, or any installed
SDP solver).

Used to cross-check the native solver. It solves the dual form
``min 1^T c  s.t.  diag(c) - M psd`` (``D`` variables and one PSD constraint, which
cvxpy canonicalises quickly, unlike ``trace(M @ P)`` over ``D^2`` primal variables).
Whatever the solver returns, the reported upper bound is the certificate of its
``c`` computed by :func:`certified_value`, because a generic solver's objective can
sit below the optimum. The primal point is the PSD constraint's dual matrix, projected
onto the PSD cone and rescaled to ``diag(P) <= 1`` so that its value is feasible.
"""

from __future__ import annotations

import time

import numpy as np

from verifiers.cvxpy_solvers import SolverUnavailable, check_solver
from verifiers.sdp.pair_solver import Solution, certified_value, dense_matrix, fallback


def feasible_primal(matrix: np.ndarray, p: np.ndarray) -> float:
    """``<M, P'>`` for ``P'`` the PSD part of ``p``, scaled so that ``diag(P') <= 1``."""
    vals, vecs = np.linalg.eigh((p + p.T) / 2)
    psd = (vecs * np.maximum(vals, 0)) @ vecs.T
    scale = 1 / np.sqrt(np.maximum(np.diag(psd), 1.0))
    return float(np.sum(matrix * (psd * scale[:, None] * scale[None, :])))


def solve_cvxpy(block: np.ndarray, *, solver: str = "SCS", eps: float = 1e-6,
                max_iters: int = 100_000) -> Solution:
    """Solve ``SDP(M)`` for ``B (d, m+1)`` with a cvxpy solver and certify its dual vector."""
    import cvxpy as cp

    check_solver(solver)
    began = time.perf_counter()
    matrix = dense_matrix(block)
    size = matrix.shape[0]
    c = cp.Variable(size)
    psd = cp.diag(c) - matrix >> 0
    problem = cp.Problem(cp.Minimize(cp.sum(c)), [psd])
    options: dict = {}
    if solver.upper() == "SCS":
        options = {"eps_abs": eps, "eps_rel": eps, "max_iters": max_iters}
    try:
        problem.solve(solver=solver.upper(), **options)
    except cp.error.SolverError as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "licen" in str(exc).lower():
            raise SolverUnavailable(f"cvxpy solver {solver} has no valid licence: {text}") from None
        return fallback(block, f"{solver} failed: {text}", time.perf_counter() - began)
    if c.value is None or not np.all(np.isfinite(c.value)):
        return fallback(block, f"{solver} status {problem.status}", time.perf_counter() - began)
    certified, _ = certified_value(block, np.asarray(c.value, dtype=np.float64))
    primal = float("nan") if psd.dual_value is None else feasible_primal(matrix, psd.dual_value)
    stats = problem.solver_stats
    return Solution(primal, certified, int(getattr(stats, "num_iters", 0) or 0),
                    time.perf_counter() - began, str(problem.status),
                    np.asarray(c.value, dtype=np.float64))
