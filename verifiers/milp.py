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
(:mod:`attacks.milp_cex`), evaluated by the harness like any attack. Both declare a
batch's solves as one piece of shared work under the same key (:class:`SharedVerdicts`),
so in a run with both the harness solves each batch once, on any worker, and hands
the verdicts to both. ``statistics()`` gives per sample the verdict, the interval,
nodes and seconds.
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

from bench.contract import (Configurable, Property, check_options, input_box, margins,
                            project_box, signed_ascent)
from models import MLP, weights_summary

from .linear_bounds import backward_upper, crown_slope, finish_margins, margin_spec, split_rows
from .relu_program import ReluProgram, box_batch, sample_batch, solve_mip

CACHE_SIZE = 4096


@dataclass
class SampleVerdict:
    """The MILP outcome for one sample: ``lower <= worst <= upper``."""

    upper: np.ndarray            # (K,) per-class upper bounds, -inf at the label
    lower: float                 # worst margin of ``witness`` (float64 forward pass)
    witness: np.ndarray | None   # (d,) the point that reaches ``lower``
    verdict: str                 # "certified", "broken" or "unknown"
    nodes: int
    seconds: float
    milps: int


class VerdictCache:
    """MILP verdicts per (weights, eps, options, input, label), least recently used out.

    Keys hold the input's float64 bytes, so two inputs that differ anywhere never share
    a verdict. The ``milp-cex`` attack receives the float32 copy of an image that the
    ``milp`` verifier received in float64 (``k / 255``); :meth:`for_attack` finds the
    verdict whose float64 input rounds to it. An attack's point is re-checked by the
    harness, so that lookup can never make a result wrong, only save a solve.
    """

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._verdicts: "OrderedDict[tuple, SampleVerdict]" = OrderedDict()
        self._rounded: dict[tuple, tuple] = {}

    @staticmethod
    def key(net_key: str, eps: float, config: tuple, x: torch.Tensor, label: int) -> tuple:
        digest = hashlib.sha256(x.detach().to(torch.float64).cpu().numpy().tobytes()).hexdigest()
        return (net_key, float(eps), config, digest, label)

    @staticmethod
    def _rounded_key(key: tuple, x: torch.Tensor) -> tuple:
        digest = hashlib.sha256(x.detach().to(torch.float32).cpu().numpy().tobytes()).hexdigest()
        return key[:3] + (digest, key[4])

    def get(self, key: tuple) -> SampleVerdict | None:
        return self._verdicts.get(key)

    def put(self, key: tuple, x: torch.Tensor, verdict: SampleVerdict) -> None:
        self._verdicts[key] = verdict
        self._rounded[self._rounded_key(key, x)] = key
        while len(self._verdicts) > self.size:
            old, _ = self._verdicts.popitem(last=False)
            self._rounded = {k: v for k, v in self._rounded.items() if v != old}

    def for_attack(self, key: tuple, x32: torch.Tensor) -> tuple:
        """The key of a verdict on a float64 input that rounds to ``x32``, else ``key``."""
        found = self._rounded.get(self._rounded_key(key, x32))
        return found if found is not None and found in self._verdicts else key

    def clear(self) -> None:
        self._verdicts.clear()
        self._rounded.clear()


def seed_points(net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float, clip: bool,
                steps: int = 30, apgd_seed: bool = True) -> torch.Tensor:
    """Primal heuristic: ``(N, d)`` float64 points in the box, the better per sample of
    signed-gradient ascent on ``max_j f_j - f_y`` from ``x`` and, with ``clip`` and
    ``apgd_seed``, APGD on
    the targeted DLR loss towards the 3 classes of largest clean logit (``attacks.apgd``;
    it searches ``B_eps(x) ∩ [0, 1]^d``). A positive margin decides a sample at once (on
    AT-NN at eps 0.1 the ascent alone missed most breakable samples); otherwise the point
    seeds each MILP's incumbent.
    """
    from attacks.apgd_dlr import APGDDifferenceOfLogitsRatio   # attacks import milp too

    net64 = net.float64_copy().requires_grad_(False)
    x64 = x.to(torch.float64)
    lo, hi = input_box(x64, eps, clip)
    ascent = signed_ascent(lambda points: margins(net64(points), y).amax(dim=1), x64, lo, hi,
                           step=eps / 4, steps=steps, keep_best=True)
    if not (clip and apgd_seed):
        return ascent
    with torch.random.fork_rng():
        torch.manual_seed(0)
        found = APGDDifferenceOfLogitsRatio(targets=3).perturb(net, x64.float(), y, eps)
    found = project_box(found.to(torch.float64), lo, hi)
    with torch.no_grad():
        better = margins(net64(found), y).amax(dim=1) > margins(net64(ascent), y).amax(dim=1)
    return torch.where(better.view(-1, 1), found, ascent)


def solve_samples(net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                  time_limit: float, clip: bool, cache: VerdictCache | None = None,
                  apgd_seed: bool = True) -> list[SampleVerdict]:
    """MILP verdicts for ``x (N, d)``, ``y (N,)``, cached per weights, eps, input and label.

    ``time_limit`` is per sample and covers its share of the batch's set-up (bounds,
    seed attack) as well as its MILPs. A float32 ``x`` (an attack's copy) reuses the
    verdict of the float64 input it rounds from, if one is cached; it is solved as
    float64 otherwise. ``cache=None`` solves everything afresh. ``apgd_seed=False`` keeps
    only the cheap ascent as the primal heuristic (tests use it to make MILP find points).
    """
    began = time.perf_counter()
    store = cache if cache is not None else VerdictCache()
    net_key = weights_summary(net)
    config = (time_limit, clip, apgd_seed)
    keys = [VerdictCache.key(net_key, eps, config, x[n], int(y[n])) for n in range(len(y))]
    if x.dtype != torch.float64:
        keys = [store.for_attack(key, x[n]) for n, key in enumerate(keys)]
    missing = [n for n, key in enumerate(keys) if store.get(key) is None]
    if missing:
        x64 = x.to(torch.float64)
        batch = sample_batch(net, x64[missing], eps, clip)
        with torch.no_grad():
            spec = margin_spec(y[missing], net.num_classes, torch.float64)
            quick = finish_margins(backward_upper(batch.params, batch.bounds, spec, batch.lo,
                                                  batch.hi, crown_slope), y[missing])
        seeds = seed_points(net, x64[missing], y[missing], eps, clip, apgd_seed=apgd_seed)
        setup = (time.perf_counter() - began) / len(missing)
        np_params = batch.np_params
        for row, n in enumerate(missing):
            verdict = _solve_one(np_params, partial(batch.program, row, binaries=True),
                                 int(y[n]), quick[row].numpy(), seeds[row].numpy(),
                                 (batch.lo[row].numpy(), batch.hi[row].numpy()),
                                 time_limit - setup)
            verdict.seconds += setup
            store.put(keys[n], x64[n], verdict)
    return [store.get(key) for key in keys]


def _forward(params, x: np.ndarray) -> np.ndarray:
    """Logits ``(K,)`` of one input ``x (d,)`` in float64."""
    z = x
    for w, b in params[:-1]:
        z = np.maximum(w @ z + b, 0.0)
    return params[-1][0] @ z + params[-1][1]


def _worst_margin(params, x: np.ndarray, label: int) -> float:
    """``max_{j != label} f_j(x) - f_label(x)`` by a float64 forward pass."""
    logits = _forward(params, x)
    out = logits - logits[label]
    out[label] = -np.inf
    return float(out.max())


def _solve_one(params, make_program: Callable[[], ReluProgram], label: int,
               quick: np.ndarray, seed: np.ndarray, box: tuple[np.ndarray, np.ndarray],
               time_limit: float) -> SampleVerdict:
    """One sample: the seed point first, then MILPs per class from the loosest bound down
    (``make_program`` builds the sample's MILP only if one is needed).

    A point found by the solver is clipped into ``box`` and judged by a float64 forward
    pass, never by the solver's objective value (they differ by its tolerances).
    """
    began = time.perf_counter()
    upper = quick.copy()                      # sound per-class bounds to start from
    lower, witness = _worst_margin(params, seed, label), seed
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
        if outcome.witness is not None:
            point = np.clip(outcome.witness, box[0], box[1])
            found = _worst_margin(params, point, label)
            if found > lower:
                lower, witness = found, point
    worst = float(np.max(upper))
    verdict = "broken" if lower >= 0 else "certified" if worst < 0 else "unknown"
    return SampleVerdict(upper, float(lower), witness, verdict, nodes,
                         time.perf_counter() - began, milps)


def _verdicts_of(x: torch.Tensor, y: torch.Tensor, eps: float, time_limit: float, clip: bool,
                 apgd_seed: bool, net: MLP) -> list[tuple[tuple, torch.Tensor, SampleVerdict]]:
    """A batch's solves as a piece of shared work: ``(cache key, x_n, verdict)`` rows."""
    verdicts = solve_samples(net, x, y, eps, time_limit=time_limit, clip=clip,
                             apgd_seed=apgd_seed)
    net_key = weights_summary(net)
    return [(VerdictCache.key(net_key, eps, (time_limit, clip, apgd_seed), x[n], int(y[n])),
             x[n], verdict) for n, verdict in enumerate(verdicts)]


class SharedVerdicts(Configurable):
    """Options and verdict cache of ``milp`` and ``milp-cex``: one MILP search per sample.

    ``shared_work`` names a batch's solves by everything they depend on (options, eps,
    the float64 inputs and labels), so the two plugins declare the same piece and the
    harness computes it once; ``use_shared`` puts its verdicts in this plugin's cache.
    """

    def __init__(self, *, time_limit: float = 60.0, clip: bool = True,
                 apgd_seed: bool = True) -> None:
        check_options(time_limit=(time_limit, "number>0"), clip=(clip, "bool"),
                      apgd_seed=(apgd_seed, "bool"))
        self.time_limit = time_limit
        self.clip = clip
        self.apgd_seed = apgd_seed
        self._verdicts = VerdictCache()

    def shared_work(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float,
                    workers: int) -> dict[str, Callable[[MLP], list]]:
        """One piece: the batch's solves (``workers`` does not matter: one batch)."""
        x64 = x.detach().to(torch.float64).clone()
        digest = hashlib.sha256(x64.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:24]
        key = (f"milp-verdicts/{self.time_limit!r}/{self.clip}/{self.apgd_seed}/{eps!r}/"
               f"{digest}")
        return {key: partial(_verdicts_of, x64, y.clone(), eps, self.time_limit, self.clip,
                             self.apgd_seed)}

    def use_shared(self, net: MLP, results: dict[str, Any]) -> None:
        for rows in results.values():
            for key, x_n, verdict in rows:
                self._verdicts.put(key, x_n, verdict)

    def verdicts(self, net: MLP, x: torch.Tensor, y: torch.Tensor,
                 eps: float) -> list[SampleVerdict]:
        """The cached verdicts of ``x (N, d)`` (float64, or an attack's float32 copy),
        solving those not cached."""
        return solve_samples(net, x, y, eps, time_limit=self.time_limit, clip=self.clip,
                             cache=self._verdicts, apgd_seed=self.apgd_seed)


class MILP(SharedVerdicts):
    """Exact upper bound ``U (N, K)`` (float64) by MILP; opt-in, per-sample time limit."""

    name = "milp"
    opt_in = True
    exact = True

    def __init__(self, *, time_limit: float = 60.0, clip: bool = True,
                 apgd_seed: bool = True) -> None:
        super().__init__(time_limit=time_limit, clip=clip, apgd_seed=apgd_seed)
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
