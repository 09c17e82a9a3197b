"""``milp-cex``: the counterexamples found by the ``milp`` verifier, as an attack.

Returns, per sample, the point of largest margin that the MILP search found (or
``x`` itself when it found none); the harness evaluates it with a plain forward pass
like any attack. It shares the ``milp`` verifier's per-sample cache, so in a run with
both the MILPs are solved once. Opt-in.
"""

from __future__ import annotations

import torch

from bench.contract import Configurable, check_options
from models import MLP
from verifiers.milp import solve_samples


class MILPCounterexample(Configurable):
    """Points ``x_adv (N, d)`` from exact MILP search (same options as ``milp``)."""

    name = "milp-cex"
    opt_in = True
    exact = True

    def __init__(self, *, time_limit: float = 60.0, clip: bool = True,
                 apgd_seed: bool = True) -> None:
        check_options(time_limit=(time_limit, "number>0"), clip=(clip, "bool"),
                      apgd_seed=(apgd_seed, "bool"))
        self.time_limit = time_limit
        self.clip = clip
        self.apgd_seed = apgd_seed

    def perturb(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        verdicts = solve_samples(net, x, y, eps, time_limit=self.time_limit, clip=self.clip,
                                 apgd_seed=self.apgd_seed)
        out = x.detach().clone()
        for n, verdict in enumerate(verdicts):
            if verdict.witness is not None:
                out[n] = torch.from_numpy(verdict.witness).to(x.dtype)
        return out
