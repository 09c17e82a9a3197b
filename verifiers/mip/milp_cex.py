"""``milp-cex``: the counterexamples found by the ``milp`` verifier, as an attack.

Returns, per sample, the point of largest margin that the MILP search found (or
``x`` itself when it found none); the harness evaluates it with a plain forward pass
like any attack. It declares the same shared work as the ``milp`` verifier, so in a
run with both the MILPs are solved once. Opt-in.
"""

from __future__ import annotations

import torch

from models import MLP
from verifiers.mip.sample_solves import SharedVerdicts
from verifiers.verdicts import witness_points


class MILPCounterexample(SharedVerdicts):
    """Points ``x_adv (N, d)`` from exact MILP search (same options as ``milp``)."""

    name = "milp-cex"
    opt_in = True
    exact = True

    def perturb(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        return witness_points(self.verdicts(net, x, y, eps), x)
