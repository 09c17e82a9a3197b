"""Which search decides what: ReLU splitting, input splitting and the VNN-COMP portfolio,
on two kinds of networks, in one run (docs/benchmarks.md quotes the figures).

**Collision-avoidance-shaped.** The network is trained here: 5 inputs, 6 hidden layers of
50 ReLUs, 5 outputs (the shape of ACAS Xu's networks), regressing five smooth scores of
the input (a distance to a centre plus a ripple each, the shape of advisory scores). The
properties are ACAS-style thresholds over large boxes: ``Y_k >= t`` is unsafe over a box
of half-width 0.25 to 0.6, with ``t`` the largest of 100,000 samples plus 20% or 5% of
the output range, or minus 2% (sampling misses the true maximum of a 5-dimensional box by
more than that at times: some of the first two kinds are violated too). 24 properties,
20 s each.

**mnistfc-shaped.** The networks of the complete-verification benchmark
(``benchmarks/test_complete_decided.py``: 784-256x{2,4,6}-10 trained by ``bench train``
into ``$CERTBENCH_DEEPNETS`` or ``~/.cache/certbench/deepnets`` on first use), robustness
properties of test images drawn with seed 2021 at eps 0.02 and 0.05 (VNN-COMP 2021's
mnistfc radii), ``BENCH_MNISTFC_IMAGES`` images (default 5) per network, timeouts
``BENCH_MNISTFC_TIMEOUT`` (default 30 s) for two hidden layers and 2.5 times that for
deeper ones (the competition: 120 s and 300 s).

Per property: ``decide`` with ``branching="relu"`` and ``"input"`` (each with its own
first attack and its attacks during the search), and the portfolio
(``bench.vnncomp.portfolio.solve``: the strongest property attack, ibp/crown/lp, then
``decide`` with ``branching="auto"``), each under the same limit. Asserted: no two
verdicts contradict each other, on the ACAS-shaped properties input splitting decides at
least as many as ReLU splitting, and the portfolio decides at least as many as the better
of the two searches less one on each kind.

    python -m pytest benchmarks/test_branching_strategies.py --benchmark-enable
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench.contract import Property
from bench.data import mnist_test, to_tensor
from bench.training.trainer import train
from bench.vnncomp.competition import draw_images
from bench.vnncomp.portfolio import solve
from models import MLP, load
from verifiers.bab.options import SearchOptions
from verifiers.bab.search import decide

PROPERTIES = 24
TIME_LIMIT = 20.0
MNISTFC = ("fc-2x256", "fc-4x256", "fc-6x256")
MNISTFC_RADII = (0.02, 0.05)
DRAW_SEED = 2021
STRATEGIES = ("relu", "input", "portfolio")
WIDTHS = [5, 50, 50, 50, 50, 50, 50, 5]


def scores(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Five smooth scores of ``x (N, 5)``: squared distance to a centre plus a ripple."""
    distance = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
    return distance + 0.3 * torch.sin(3 * x[:, :1] + torch.arange(5.0)[None])


def trained_network(seed: int = 0) -> MLP:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    centres = torch.rand(5, 5, generator=generator) * 2 - 1
    x = torch.rand(20_000, 5, generator=generator) * 2 - 1
    target = scores(x, centres)
    net = MLP(WIDTHS)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(600):
        optimiser.zero_grad()
        loss = ((net(x) - target) ** 2).mean()
        loss.backward()
        optimiser.step()
    return net.eval()


def properties(net: MLP, seed: int = 1) -> list[Property]:
    generator = torch.Generator().manual_seed(seed)
    net64 = net.float64_copy()
    out = []
    for n in range(PROPERTIES):
        centre = torch.rand(5, generator=generator, dtype=torch.float64) * 1.2 - 0.6
        half = 0.25 + 0.35 * torch.rand(1, generator=generator, dtype=torch.float64)
        lo, hi = (centre - half).clamp(-1, 1), (centre + half).clamp(-1, 1)
        points = lo + (hi - lo) * torch.rand(100_000, 5, generator=generator,
                                             dtype=torch.float64)
        with torch.no_grad():
            values = net64(points)[:, n % 5]
        spread = float(values.max() - values.min())
        threshold = float(values.max()) + (0.2, 0.05, -0.02)[n % 3] * spread
        row = torch.zeros(1, 5, dtype=torch.float64)
        row[0, n % 5] = 1.0
        out.append(Property(lo, hi, ((row, torch.tensor([threshold], dtype=torch.float64)),)))
    return out


def mnistfc_network(name: str) -> MLP:
    """A ``fc-Dx256`` recipe's network, trained on first use (as the complete benchmark)."""
    folder = Path(os.environ.get("CERTBENCH_DEEPNETS",
                                 Path.home() / ".cache" / "certbench" / "deepnets"))
    if not (folder / f"{name}.safetensors").exists():
        train(name, out_dir=folder)
    return load(name, folder)[0]


def mnistfc_properties(count: int) -> list[Property]:
    """Robustness of ``count`` test images drawn with seed 2021, at each radius."""
    images, labels = mnist_test()
    indices = draw_images(count, DRAW_SEED)
    x = to_tensor(images[indices], torch.float64)
    return [Property.robustness(x[n], int(labels[i]), eps, 10)
            for eps in MNISTFC_RADII for n, i in enumerate(indices)]


def run_strategies(net: MLP, props: list[Property], limit: float
                   ) -> dict[str, list[tuple[str, float]]]:
    """Per strategy, per property: the verdict (``holds``, ``violated``, ``unknown``) and
    the seconds it took."""
    portfolio_verdict = {"unsat": "holds", "sat": "violated"}
    found: dict[str, list[tuple[str, float]]] = {}
    for strategy in STRATEGIES:
        rows = []
        for prop in props:
            began = time.perf_counter()
            if strategy == "portfolio":
                answer = solve(net, prop, limit, None)
                verdict = portfolio_verdict.get(answer.result, "unknown")
            else:
                verdict = decide(net, prop, SearchOptions(time_limit=limit,
                                                          branching=strategy)).verdict
            rows.append((verdict, time.perf_counter() - began))
        found[strategy] = rows
    return found


def summarise(kind: str, found: dict[str, list[tuple[str, float]]], limit: str,
              report: Callable[[str], None], extra: dict) -> dict[str, int]:
    """Reports decided counts and medians per strategy; fails on contradicting verdicts."""
    decided = {}
    for strategy, rows in found.items():
        done = [seconds for verdict, seconds in rows if verdict != "unknown"]
        holds = sum(verdict == "holds" for verdict, _ in rows)
        decided[strategy] = len(done)
        median = float(np.median(done)) if done else float("nan")
        extra[f"{kind}_{strategy}_decided"] = len(done)
        extra[f"{kind}_{strategy}_median_s"] = median
        report(f"{kind}, {strategy}: {len(done)} of {len(rows)} decided ({holds} hold, "
               f"{len(done) - holds} violated), median {median:.2f} s per decided one "
               f"({limit})")
    for verdicts in zip(*found.values()):
        settled = {verdict for verdict, _ in verdicts if verdict != "unknown"}
        assert len(settled) <= 1, verdicts
    return decided


def test_branching_strategies(benchmark, report):
    acas = trained_network()
    acas_props = properties(acas)
    images = int(os.environ.get("BENCH_MNISTFC_IMAGES", "5"))
    base = float(os.environ.get("BENCH_MNISTFC_TIMEOUT", "30"))
    networks = [(name, mnistfc_network(name)) for name in MNISTFC]
    mnist_props = mnistfc_properties(images)

    def run_all():
        found = {"acas": run_strategies(acas, acas_props, TIME_LIMIT)}
        for name, net in networks:
            limit = base if net.hidden_layers <= 2 else 2.5 * base
            found[name] = run_strategies(net, mnist_props, limit)
        return found

    benchmark.group = "branching-strategies"
    found = benchmark.pedantic(run_all, rounds=1, iterations=1)
    extra = benchmark.extra_info
    acas_decided = summarise(f"ACAS-shaped 5-50x6-5, {PROPERTIES} threshold properties",
                             found["acas"], f"{TIME_LIMIT:g} s each", report, extra)
    mnist = {strategy: [row for name, _ in networks for row in found[name][strategy]]
             for strategy in STRATEGIES}
    for name, net in networks:
        limit = base if net.hidden_layers <= 2 else 2.5 * base
        summarise(f"{name}, {len(mnist_props)} robustness properties", found[name],
                  f"{limit:g} s each", report, extra)
    mnist_decided = summarise("mnistfc-shaped, all three networks", mnist,
                              f"{base:g} s / {2.5 * base:g} s", report, extra)
    assert acas_decided["input"] >= acas_decided["relu"]
    for decided in (acas_decided, mnist_decided):
        assert decided["portfolio"] >= max(decided["relu"], decided["input"]) - 1
