"""``bab-cex``: the counterexamples found by the ``bab`` verifier, as an attack.

Returns, per sample, the counterexample that branch and bound found (or ``x`` itself
when it found none); the harness evaluates it with a plain forward pass like any
attack. Without it, a sample that only ``bab`` breaks (a point inside a subdomain, which
no gradient attack reached) would count as undecided in the ground truth. It declares
the same shared work as the ``bab`` verifier, so in a run with both each sample is
searched once. Opt-in.
"""

from __future__ import annotations

import torch

from models import MLP
from verifiers.bab.sample_searches import SharedSearches
from verifiers.verdicts import witness_points


class BranchAndBoundCounterexample(SharedSearches):
    """Points ``x_adv (N, d)`` from branch and bound (same options as ``bab``)."""

    name = "bab-cex"
    opt_in = True
    exact = True

    def perturb(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """Each sample's counterexample, or ``x`` itself: ``x (N, d)`` -> ``(N, d)``."""
        return witness_points(self.verdicts(net, x, y, eps), x)
