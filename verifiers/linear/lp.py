"""``lp``: the Wong-Kolter dual-network bound of the LP relaxation (Kolter & Wong 2017).

For ``c = e_j - e_y`` it returns ``c^T c0 + nu2^T b + nu1^T x + eps ||nu1||_1 - sum over
crossing units of l_k max(nu2_k, 0)`` (one hidden layer; deeper nets repeat the pass
layer by layer for the pre-activation bounds), computed as one batched backward pass
over samples and classes with the input set ``B_eps(x) ∩ [0, 1]^d``. Any fixed slopes
give a dual-feasible point of the triangle LP, so this is an upper bound on the LP
optimum and on the true worst case. Differentiable in the weights (used for training).
"""

from __future__ import annotations

from verifiers.linear.propagation import wong_kolter_slope
from verifiers.linear.relaxation_verifier import LinearRelaxationVerifier


class LP(LinearRelaxationVerifier):
    """Wong-Kolter dual bound ``U (N, K)`` for ReLU MLPs of any depth (upper bound)."""

    name = "lp"
    graphs = True      # operator graphs: the same engine with this lower slope
    slope_rule = staticmethod(wong_kolter_slope)
