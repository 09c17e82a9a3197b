"""``bab-cex``: the counterexamples found by the ``bab`` verifier, as an attack.

Returns, per sample, the counterexample that branch and bound found (or ``x`` itself
when it found none); the harness evaluates it with a plain forward pass like any
attack. Without it, a sample that only ``bab`` breaks (a point inside a subdomain, which
no gradient attack reached) would count as undecided in the ground truth. It declares
the same shared work as the ``bab`` verifier, so in a run with both each sample is
searched once. Opt-in.
"""

from __future__ import annotations

from attacks.milp_cex import MILPCounterexample
from verifiers.bab import SharedSearches


class BranchAndBoundCounterexample(SharedSearches):
    """Points ``x_adv (N, d)`` from branch and bound (same options as ``bab``)."""

    name = "bab-cex"
    opt_in = True
    exact = True

    # each sample's witness, or x itself: the same step as milp-cex, on bab's verdicts
    perturb = MILPCounterexample.perturb
