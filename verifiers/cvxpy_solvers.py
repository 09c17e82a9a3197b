"""Which cvxpy SDP solvers are installed here: the one check both SDP families make
before they reach for cvxpy."""

from __future__ import annotations

from bench.errors import CertbenchError

SDP_SOLVERS = ("SCS", "MOSEK", "CLARABEL", "CVXOPT", "COPT", "SDPA")


class SolverUnavailable(CertbenchError, ValueError):
    """The named cvxpy solver is not installed or not licensed (one-line message)."""


def check_solver(name: str) -> None:
    """Raise :class:`SolverUnavailable` (one line) unless cvxpy has the SDP solver ``name``."""
    import cvxpy as cp

    installed = [s for s in cp.installed_solvers() if s in SDP_SOLVERS]
    if name.upper() not in installed:
        hint = " (pip install 'certbench[mosek]', plus a MOSEK licence)" \
            if name.upper() == "MOSEK" else ""
        raise SolverUnavailable(f"cvxpy solver {name!r} is not installed{hint}; SDP solvers "
                                f"available: {', '.join(installed) or 'none'}")
