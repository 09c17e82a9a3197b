"""``crown``: backward linear bound propagation with adaptive lower ReLU slopes.

Like ``lp`` but a crossing unit's lower line is ``relu(z) >= z`` when ``u > -l`` and
``relu(z) >= 0`` otherwise (CROWN, Zhang et al. 2018; DeepPoly's choice), for the
intermediate layers as well as the output. Sound for any slope in ``[0, 1]``.
"""

from __future__ import annotations

from verifiers.linear.propagation import crown_slope
from verifiers.linear.relaxation_verifier import LinearRelaxationVerifier


class Crown(LinearRelaxationVerifier):
    """CROWN upper bound ``U (N, K)`` for ReLU MLPs of any depth."""

    name = "crown"
    graphs = True      # operator graphs: verifiers.linear.graph_propagation
    slope_rule = staticmethod(crown_slope)
