"""The multi-layer SDP of :mod:`verifiers.sdp_deep.relaxation` as a primal cvxpy problem.

For small networks only (the PSD variable is ``(1 + d + n) x (1 + d + n)``). It writes
the relaxation from its definition, on the lifted matrix ``P`` of ``(1, x, c)``,
independently of the dual code, so the two cross-check each other. The reported bound
is still a certificate: the constraints' dual values are the Lagrange multipliers of
the dual, which :func:`verifiers.sdp_deep.relaxation.certify` turns into a sound bound (a
solver's objective can sit below the optimum).
"""

from __future__ import annotations

import numpy as np
import torch

from verifiers.cvxpy_solvers import check_solver
from verifiers.sdp_deep.relaxation import Multipliers, Relaxation


def solve_primal(rel: Relaxation, *, solver: str = "SCS", eps: float = 1e-7
                 ) -> tuple[float, Multipliers | None, str]:
    """Problem 0 of ``rel``: ``(primal value, its multipliers as a batch of 1 or None,
    solver status)``."""
    import cvxpy as cp

    check_solver(solver)
    keep = np.flatnonzero(rel.alive[0].numpy() > 0)
    a, cmat, beta = (t[0].numpy()[keep] for t in (rel.inputs, rel.hidden, rel.offset))
    cmat = cmat[:, keep]
    low, up = rel.lower[0].numpy()[keep], rel.upper[0].numpy()[keep]
    lo, hi = rel.lo[0].numpy(), rel.hi[0].numpy()
    d, n = lo.shape[0], len(keep)
    p = cp.Variable((1 + d + n, 1 + d + n), symmetric=True)
    xs, cs = slice(1, 1 + d), slice(1 + d, 1 + d + n)
    x, c = p[0, xs], p[0, cs]
    cons = {"box_in": cp.multiply(lo + hi, x) - lo * hi - cp.diag(p[xs, xs]) >= 0}
    if n:
        zhat = a @ x + cmat @ c + beta                     # first-order pre-activations
        # second order: E[c_j zhat_j] = (A P_xc)_jj + (C P_cc)_jj + beta_j c_j
        c_zhat = cp.sum(cp.multiply(a, p[cs, xs]), axis=1) \
            + cp.sum(cp.multiply(cmat, p[cs, cs]), axis=1) + cp.multiply(beta, c)
        s = up / (up - low)
        cons |= {"pos": c >= 0, "pre": c - zhat >= 0,
                 "up": cp.multiply(s, zhat) - s * low - c >= 0,
                 "quad": c_zhat - cp.diag(p[cs, cs]) == 0,
                 "box": cp.multiply(up, c) - cp.diag(p[cs, cs]) >= 0}
    objective = rel.g_x[0].numpy() @ x + rel.g_c[0].numpy()[keep] @ c + float(rel.g_0[0])
    problem = cp.Problem(cp.Maximize(objective),
                         [p >> 0, p[0, 0] == 1] + list(cons.values()))
    options = {"eps_abs": eps, "eps_rel": eps, "max_iters": 200_000} \
        if solver.upper() == "SCS" else {}
    try:
        problem.solve(solver=solver.upper(), **options)
    except cp.error.SolverError as exc:
        return float("nan"), None, f"{solver} failed: {str(exc).splitlines()[0]}"
    if problem.value is None or any(con.dual_value is None for con in cons.values()):
        return float("nan"), None, str(problem.status)
    width = rel.alive.shape[1]

    def spread(name: str) -> torch.Tensor:
        out = torch.zeros(1, width, dtype=torch.float64)
        if name in cons:
            out[0, torch.as_tensor(keep)] = torch.as_tensor(
                np.asarray(cons[name].dual_value, dtype=np.float64).reshape(-1))
        return out

    # cvxpy's dual of an equality enters its Lagrangian with the opposite sign to our
    # ``quad`` (which multiplies c zhat - c^2); the inequalities' duals are ours
    mult = Multipliers(spread("pos"), spread("pre"), spread("up"), -spread("quad"),
                       spread("box"), torch.as_tensor(np.asarray(cons["box_in"].dual_value,
                                                                 dtype=np.float64))[None])
    return float(problem.value), mult, str(problem.status)
