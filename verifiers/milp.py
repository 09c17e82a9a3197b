"""``milp``: exact verification by mixed-integer programming (Tjeng, Xiao & Tedrake 2019).

Per sample, the worst margin ``max_j max_{x' in B_eps(x) ∩ [0,1]^d} f_j(x') - f_y(x')``
is settled with HiGHS branch and bound on the big-M encoding of every crossing ReLU
(stable units are fixed by the tightest of interval, Wong-Kolter and CROWN bounds,
which also give the big-M constants). Classes are tried from the loosest LP bound
down; a class whose CROWN/LP bound is already negative needs no MILP. The search stops
as soon as the sample's sign is decided: a point with a positive margin (``broken``;
a few signed-gradient steps look for one first, and seed every MILP's incumbent),
or every class's dual bound below zero (``certified``); the per-sample time limit
leaves the rest ``unknown`` with an interval.

The verifier returns per class the upper bound (the MILP dual bound, or the LP-family
bound where no MILP ran). The points it finds are the attack ``milp-cex``
(:mod:`attacks.milp_cex`), evaluated by the harness like any attack; both share one
solve per sample through a cache. ``statistics()`` gives per sample the verdict,
the interval, nodes and seconds.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np
import torch

from bench.contract import Configurable, margins
from models import MLP, weights_summary

from .linear_bounds import backward_upper, crown_slope, finish_margins, input_box, margin_spec
from .relu_program import ReluProgram, sample_batch, solve_mip

CACHE_SIZE = 4096


@dataclass
class SampleVerdict:
    """The MILP outcome for one sample: ``lower <= worst <= upper``."""

    upper: np.ndarray            # (K,) per-class upper bounds, -inf at the label
    lower: float                 # best margin found (-inf if none)
    witness: np.ndarray | None   # (d,) the point that reaches ``lower``
    verdict: str                 # "certified", "broken" or "unknown"
    nodes: int
    seconds: float
    milps: int


_CACHE: "OrderedDict[tuple, SampleVerdict]" = OrderedDict()


def _key(net_key: str, eps: float, config: tuple, x: torch.Tensor, label: int) -> tuple:
    """Cache key; ``x`` as float32 bytes so the verifier's float64 and the attack's
    float32 copy of one image (``k / 255``) meet."""
    digest = hashlib.sha256(x.detach().to(torch.float32).cpu().numpy().tobytes()).hexdigest()
    return (net_key, float(eps), config, digest, label)


def seed_points(net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float, clip: bool,
                steps: int = 30) -> torch.Tensor:
    """Signed-gradient ascent on ``max_j f_j - f_y`` inside the box: ``(N, d)`` float64.

    A cheap primal heuristic: a positive margin decides a sample at once; otherwise
    the point seeds each MILP's incumbent.
    """
    net64 = net.float64_copy().requires_grad_(False)
    lo, hi = input_box(x.to(torch.float64), eps, clip)
    point = x.to(torch.float64).clone()
    best, best_value = point.clone(), torch.full((len(y),), -torch.inf, dtype=torch.float64)
    for _ in range(steps + 1):
        point.requires_grad_(True)
        with torch.enable_grad():
            worst = margins(net64(point), y).amax(dim=1)
            grad, = torch.autograd.grad(worst.sum(), point)
        with torch.no_grad():
            better = worst > best_value
            best[better], best_value[better] = point[better], worst[better]
            point = torch.minimum(torch.maximum(point + eps / 4 * grad.sign(), lo), hi)
    return best.detach()


def solve_samples(net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                  time_limit: float, clip: bool) -> list[SampleVerdict]:
    """MILP verdicts for ``x (N, d)``, ``y (N,)``, cached per weights, eps, input and label."""
    net_key = weights_summary(net)
    config = (time_limit, clip)
    keys = [_key(net_key, eps, config, x[n], int(y[n])) for n in range(len(y))]
    missing = [n for n, key in enumerate(keys) if key not in _CACHE]
    if missing:
        batch = sample_batch(net, x[missing], eps, clip)
        with torch.no_grad():
            spec = margin_spec(y[missing], net.num_classes, torch.float64)
            quick = finish_margins(backward_upper(batch.params, batch.bounds, spec, batch.lo,
                                                  batch.hi, crown_slope), y[missing])
        seeds = seed_points(net, x[missing], y[missing], eps, clip)
        np_params = batch.np_params
        for row, n in enumerate(missing):
            _CACHE[keys[n]] = _solve_one(np_params, partial(batch.program, row, binaries=True),
                                         int(y[n]), quick[row].numpy(), seeds[row].numpy(),
                                         time_limit)
            while len(_CACHE) > CACHE_SIZE:
                _CACHE.popitem(last=False)
    return [_CACHE[key] for key in keys]


def _forward(params, x: np.ndarray) -> np.ndarray:
    z = x
    for w, b in params[:-1]:
        z = np.maximum(w @ z + b, 0.0)
    return params[-1][0] @ z + params[-1][1]


def _solve_one(params, make_program: Callable[[], ReluProgram], label: int,
               quick: np.ndarray, seed: np.ndarray, time_limit: float) -> SampleVerdict:
    """One sample: the seed point first, then MILPs per class from the loosest bound down
    (``make_program`` builds the sample's MILP only if one is needed)."""
    began = time.perf_counter()
    upper = quick.copy()                      # sound per-class bounds to start from
    logits = _forward(params, seed)
    seed_margins = logits - logits[label]
    seed_margins[label] = -np.inf
    lower, witness = float(seed_margins.max()), seed
    nodes, milps = 0, 0
    program = start = None
    for j in np.argsort(-quick):
        if lower >= 0:
            break
        if j == label or upper[j] < 0:
            continue
        remaining = time_limit - (time.perf_counter() - began)
        if remaining <= 0:
            break
        if program is None:
            program = make_program()
            start = program.point(params, seed)
        obj, const = program.margin_objective(int(j), label)
        outcome = solve_mip(program, obj, time_limit=remaining, stop_above=-const,
                            stop_below=-const, start=start)
        milps += 1
        nodes += outcome.nodes
        upper[j] = min(upper[j], outcome.upper + const)
        if outcome.lower + const > lower:
            lower, witness = outcome.lower + const, outcome.witness
    worst = float(np.max(upper))
    verdict = "broken" if lower >= 0 else "certified" if worst < 0 else "unknown"
    return SampleVerdict(upper, float(lower), witness, verdict, nodes,
                         time.perf_counter() - began, milps)


class MILP(Configurable):
    """Exact upper bound ``U (N, K)`` (float64) by MILP; opt-in, per-sample time limit."""

    name = "milp"
    opt_in = True
    exact = True

    def __init__(self, *, time_limit: float = 60.0, clip: bool = True) -> None:
        self.time_limit = time_limit
        self.clip = clip
        self._stats: list[dict[str, Any]] = []

    def bound(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)``, ``y (N,)`` -> ``U (N, K)`` float64, ``U[n, y_n] = -inf``."""
        verdicts = solve_samples(net, x, y, eps, time_limit=self.time_limit, clip=self.clip)
        for row, v in enumerate(verdicts):
            self._stats.append({"row": row, "verdict": v.verdict, "lower": v.lower,
                                "upper": float(np.max(v.upper)), "nodes": v.nodes,
                                "milps": v.milps, "seconds": v.seconds})
        return torch.from_numpy(np.stack([v.upper for v in verdicts]))

    def statistics(self) -> list[dict[str, Any]]:
        """Per sample (``row`` within its batch): verdict, interval, nodes, MILPs, seconds."""
        return list(self._stats)


def exact_class_margins(net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                        clip: bool = True, time_limit: float = 600.0) -> np.ndarray:
    """Every class's exact worst margin (no early stop), ``(N, K)``, ``-inf`` at the label.

    For tests and small networks: one MILP per sample and class, solved to optimality.
    """
    batch = sample_batch(net, x, eps, clip)
    out = np.full((len(y), net.num_classes), -np.inf)
    for n in range(len(y)):
        program = batch.program(n, binaries=True)
        for j in range(net.num_classes):
            if j == int(y[n]):
                continue
            obj, const = program.margin_objective(j, int(y[n]))
            outcome = solve_mip(program, obj, time_limit=time_limit)
            out[n, j] = outcome.lower + const
    return out
