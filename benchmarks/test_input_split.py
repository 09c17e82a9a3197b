"""Input splitting against ReLU splitting on a collision-avoidance-shaped benchmark, in
one run (docs/complete-verification.md quotes the figures).

The network is trained here: 5 inputs, 6 hidden layers of 50 ReLUs, 5 outputs (the
shape of ACAS Xu's networks), regressing five smooth scores of the input (a distance to
a centre plus a ripple each, the shape of advisory scores). The properties are ACAS-style
thresholds over large boxes: ``Y_k >= t`` is unsafe over a box of half-width 0.25 to 0.6,
with ``t`` the largest of 100,000 samples plus 20% or 5% of the output range, or minus
2% (sampling misses the true maximum of a 5-dimensional box by more than that at times:
some of the first two kinds are violated too). Every
property is searched with ``branching="relu"`` and ``branching="input"`` at the same time
limit, no attack first. Asserted: no two verdicts contradict each other, and input
splitting decides at least as many as ReLU splitting.

    python -m pytest benchmarks/test_input_split.py --benchmark-enable
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.contract import Property
from models import MLP
from verifiers.bab.options import SearchOptions
from verifiers.bab.search import decide

PROPERTIES = 24
TIME_LIMIT = 20.0
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


def test_input_splitting_against_relu_splitting(benchmark, report):
    net = trained_network()
    props = properties(net)

    def run_all():
        found = {}
        for branching in ("relu", "input"):
            rows = []
            for prop in props:
                began = time.perf_counter()
                outcome = decide(net, prop, SearchOptions(time_limit=TIME_LIMIT,
                                                          branching=branching), restarts=0)
                rows.append((outcome.verdict, time.perf_counter() - began))
            found[branching] = rows
        return found

    benchmark.group = "input-split-acas-shaped"
    found = benchmark.pedantic(run_all, rounds=1, iterations=1)
    decided = {}
    for branching, rows in found.items():
        done = [seconds for verdict, seconds in rows if verdict != "unknown"]
        decided[branching] = len(done)
        holds = sum(verdict == "holds" for verdict, _ in rows)
        report(f"{branching} splitting, {PROPERTIES} ACAS-shaped properties, "
               f"{TIME_LIMIT:g} s each: {len(done)} decided ({holds} hold), median "
               f"{float(np.median(done)) if done else float('nan'):.2f} s per decided one")
    for (a, _), (b, _) in zip(found["relu"], found["input"]):
        assert "unknown" in (a, b) or a == b, (a, b)
    assert decided["input"] >= decided["relu"]
