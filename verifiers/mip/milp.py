"""``milp``: exact verification by mixed-integer programming (Tjeng, Xiao & Tedrake 2019).

Per sample, the worst margin ``max_j max_{x' in B_eps(x) ∩ [0,1]^d} f_j(x') - f_y(x')``
is settled with HiGHS branch and bound on the big-M encoding of every crossing ReLU
(stable units are fixed by the tightest of interval, Wong-Kolter and CROWN bounds, and
on networks of two or more hidden layers alpha-CROWN's, which also give the big-M
constants). Classes are tried from the loosest LP bound
down; a class whose CROWN/LP bound is already negative needs no MILP. The search stops
as soon as the sample's sign is decided: a point with a positive margin (``broken``;
a few signed-gradient steps look for one first, and seed every MILP's incumbent),
or every class's dual bound below zero (``certified``); the per-sample time limit
leaves the rest ``unknown`` with an interval.

The verifier returns per class the upper bound (the MILP dual bound, or the LP-family
bound where no MILP ran). The points it finds are the attack ``milp-cex``
(:mod:`verifiers.mip.milp_cex`), evaluated by the harness like any attack. Both declare a
batch's solves as one piece of shared work under the same key (:class:`SharedVerdicts`),
so in a run with both the harness solves each batch once, on any worker, and hands
the verdicts to both. ``statistics()`` gives per sample the verdict, the interval,
nodes and seconds.
"""


from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from bench.contract import (
    Property,
    split_rows,
)
from models import MLP
from verifiers.linear.propagation import backward_upper, crown_slope
from verifiers.mip.relu_program import box_batch, solve_mip
from verifiers.mip.sample_solves import SharedVerdicts


class MILP(SharedVerdicts):
    """Exact upper bound ``U (N, K)`` (float64) by MILP; opt-in, per-sample time limit."""

    name = "milp"
    opt_in = True
    exact = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._stats: list[dict[str, Any]] = []

    def bound(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)``, ``y (N,)`` -> ``U (N, K)`` float64, ``U[n, y_n] = -inf``."""
        verdicts = self.verdicts(net, x, y, eps)
        for row, v in enumerate(verdicts):
            self._stats.append({"row": row, "verdict": v.verdict, "lower": v.lower,
                                "upper": float(np.max(v.upper)), "nodes": v.nodes,
                                "milps": v.milps, "seconds": v.seconds})
        return torch.from_numpy(np.stack([v.upper for v in verdicts]))

    def bound_property(self, net: MLP, prop: Property) -> list[torch.Tensor]:
        """Per group of ``prop``, ``(r_g,)`` upper bounds on ``c_i . f(x) - d_i`` over its
        box: a MILP per row (the MILP's dual bound, or CROWN's where smaller), stopping a
        row once its sign is settled and a group once one row is below zero (its other
        rows keep CROWN's bound). ``time_limit`` is shared by all rows."""
        began = time.perf_counter()
        batch = box_batch(net, prop.lo[None], prop.hi[None])
        rows, offsets, sizes = split_rows(prop)
        with torch.no_grad():
            quick = backward_upper(batch.params, batch.bounds, rows[None], batch.lo, batch.hi,
                                   crown_slope)[0] - offsets
        program = batch.program(0, binaries=True)
        upper = quick.clone()
        first = 0
        for size in sizes:
            for i in sorted(range(first, first + size), key=lambda r: float(quick[r])):
                if bool((upper[first:first + size] < 0).any()):
                    break                                   # the group is refuted
                remaining = self.time_limit - (time.perf_counter() - began)
                if remaining <= 0:
                    break
                obj, const = program.output_objective(rows[i].numpy())
                const -= float(offsets[i])
                outcome = solve_mip(program, obj, time_limit=remaining, stop_above=-const,
                                    stop_below=-const)
                upper[i] = min(float(upper[i]), outcome.upper + const)
            first += size
        return list(upper.split(sizes))

    def statistics(self) -> list[dict[str, Any]]:
        """Per sample (``row`` within its batch): verdict, interval, nodes, MILPs, seconds."""
        return list(self._stats)


