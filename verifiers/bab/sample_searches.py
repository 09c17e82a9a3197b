"""Branch and bound per sample of a batch, the verdicts cached and shared: the options
and the verdict cache of ``bab`` and ``bab-cex``."""

from __future__ import annotations

import hashlib
from functools import partial
from typing import Any, Callable

import numpy as np
import torch

from bench.contract import OptionsPlugin, Property, margins
from models import MLP, weights_summary
from models.graph import GraphNet
from verifiers.bab.graph_search import decide_graph
from verifiers.bab.options import BabOptions, SearchOptions
from verifiers.bab.search import decide
from verifiers.linear.graph_propagation import graph_margin_bounds
from verifiers.linear.propagation import crown_slope, margin_upper_bounds
from verifiers.verdicts import SampleVerdict, SharedVerdictsBase, VerdictCache


def bab_verdicts(net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 options: SearchOptions, clip: bool, cache: VerdictCache | None = None
                 ) -> list[SampleVerdict]:
    """Per sample of ``x (N, d)``, ``y (N,)``: :func:`decide` on its robustness property
    (``B_eps(x)``, ``∩ [0, 1]^d`` with ``clip``) with ``options``, as a
    :class:`verifiers.verdicts.SampleVerdict`: ``upper (K,)`` float64 per class, the smaller
    of CROWN's bound and branch and bound's (``-inf`` at the label); the counterexample
    as ``witness`` with its float64 worst margin ``lower >= 0`` (``-inf`` without one);
    ``milps`` is 0. Cached like ``milp``'s verdicts (per weights, eps, options, input
    and label; a float32 copy of a cached float64 input reuses its verdict)."""
    store = cache if cache is not None else VerdictCache()
    keys = _sample_keys(net, x, y, eps, options, clip)
    if x.dtype != torch.float64:
        keys = [store.for_attack(key, x[n]) for n, key in enumerate(keys)]
    missing = [n for n, key in enumerate(keys) if store.get(key) is None]
    if missing:
        x64 = x[missing].to(torch.float64)
        net64 = net.float64_copy()
        graph = isinstance(net, GraphNet)
        with torch.no_grad():   # sound everywhere; what a sample keeps when bab ends early
            crown = graph_margin_bounds(net64, x64, y[missing], eps, clip) if graph else \
                margin_upper_bounds(net64, x64, y[missing], eps, crown_slope, clip)
        for row, n in enumerate(missing):
            label = int(y[n])
            prop = Property.robustness(x64[row], label, eps, net.num_classes, clip)
            outcome = decide_graph(net, prop, options) if graph else decide(net, prop, options)
            upper = crown[row].clone()
            others = [j for j in range(net.num_classes) if j != label]
            upper[others] = torch.minimum(upper[others], torch.cat(outcome.uppers))
            lower, witness = -np.inf, None
            if outcome.counterexample is not None:
                witness = outcome.counterexample.to(torch.float64)
                with torch.no_grad():
                    lower = float(margins(net64(witness[None]), y[n:n + 1]).amax())
                witness = witness.numpy()
            verdict = {"holds": "certified", "violated": "broken"}.get(outcome.verdict,
                                                                       "unknown")
            store.put(keys[n], x64[row], SampleVerdict(
                upper.numpy(), lower, witness, verdict, outcome.nodes, outcome.seconds, 0,
                outcome.stats.get("branching", "")))
    return [store.get(key) for key in keys]


def _sample_keys(net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float,
                 options: SearchOptions, clip: bool) -> list[tuple]:
    """Each sample's verdict-cache key: weights, eps, ``clip`` and ``options``, input,
    label (the one definition :func:`bab_verdicts` and the shared work both use)."""
    net_key = weights_summary(net)
    config = (clip, *sorted(options.as_dict().items()))
    return [VerdictCache.key(net_key, eps, config, x[n], int(y[n])) for n in range(len(y))]


def _verdicts_of(x: torch.Tensor, y: torch.Tensor, eps: float, options: SearchOptions,
                 clip: bool, net: MLP) -> list[tuple[tuple, torch.Tensor, SampleVerdict]]:
    """A batch's searches as a piece of shared work: ``(cache key, x_n, verdict)`` rows."""
    cache = VerdictCache(size=max(len(y), 1))
    verdicts = bab_verdicts(net, x, y, eps, options=options, clip=clip, cache=cache)
    keys = _sample_keys(net, x, y, eps, options, clip)
    return [(key, x[n], verdict) for n, (key, verdict) in enumerate(zip(keys, verdicts))]


class SharedSearches(OptionsPlugin, SharedVerdictsBase):
    """Options (:class:`verifiers.bab.options.BabOptions`) and verdict cache of ``bab``
    and ``bab-cex``: one branch and bound per sample. As for ``milp`` and ``milp-cex``
    (the same verdict cache and ``use_shared``, :mod:`verifiers.verdicts`),
    ``shared_work`` names a batch's searches by everything they depend on, so in a run
    with both plugins the harness searches each batch once."""

    OPTIONS = BabOptions
    graphs = True       # operator graphs: verifiers.bab.graph_search

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._search: SearchOptions = self._settings.search()
        self._verdicts = VerdictCache()
        self._stats: list[dict[str, Any]] = []      # bab's per-sample rows

    def shared_work(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float,
                    workers: int) -> dict[str, Callable[[MLP], list]]:
        """One piece: the batch's searches (``workers`` does not matter: one batch)."""
        x64 = x.detach().to(torch.float64).clone()
        digest = hashlib.sha256(x64.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:24]
        options = ",".join(f"{k}={v!r}" for k, v in sorted(self._search.as_dict().items()))
        key = f"bab-verdicts/{options}/{self.clip}/{eps!r}/{digest}"
        return {key: partial(_verdicts_of, x64, y.clone(), eps, self._search, self.clip)}

    def verdicts(self, net: MLP, x: torch.Tensor, y: torch.Tensor,
                 eps: float) -> list[SampleVerdict]:
        """The cached verdicts of ``x (N, d)`` (float64, or an attack's float32 copy),
        searching those not cached."""
        return bab_verdicts(net, x, y, eps, options=self._search, clip=self.clip,
                            cache=self._verdicts)


