"""MILP per sample of a batch, the verdicts cached and shared: the options and the
verdict cache of ``milp`` and ``milp-cex``, and exact class margins for tests."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np
import torch

from attacks.seeds import seed_points
from bench.contract import BOOLEAN, POSITIVE, Options, OptionsPlugin, option
from models import MLP, weights_summary
from verifiers.linear.propagation import backward_upper, crown_slope, finish_margins, margin_spec
from verifiers.mip.relu_program import ReluProgram, sample_batch, solve_mip
from verifiers.verdicts import SampleVerdict, SharedVerdictsBase, VerdictCache


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


@dataclass(frozen=True)
class MilpOptions(Options):
    """The options of ``milp`` and ``milp-cex``."""

    time_limit: float = option(60.0, POSITIVE, "seconds per sample, its share of the "
                               "set-up included; then the interval")
    clip: bool = option(True, BOOLEAN, "intersect the ball with the box [0, 1]^d")
    apgd_seed: bool = option(True, BOOLEAN, "seed the incumbents with APGD-DLR towards "
                             "the top 3 classes")


class SharedVerdicts(OptionsPlugin, SharedVerdictsBase):
    """Options and verdict cache of ``milp`` and ``milp-cex``: one MILP search per sample.

    ``shared_work`` names a batch's solves by everything they depend on (options, eps,
    the float64 inputs and labels), so the two plugins declare the same piece and the
    harness computes it once; ``use_shared`` puts its verdicts in this plugin's cache.
    """

    OPTIONS = MilpOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
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


    def verdicts(self, net: MLP, x: torch.Tensor, y: torch.Tensor,
                 eps: float) -> list[SampleVerdict]:
        """The cached verdicts of ``x (N, d)`` (float64, or an attack's float32 copy),
        solving those not cached."""
        return solve_samples(net, x, y, eps, time_limit=self.time_limit, clip=self.clip,
                             cache=self._verdicts, apgd_seed=self.apgd_seed)


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
