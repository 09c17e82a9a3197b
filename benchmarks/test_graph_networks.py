"""Operator graphs end to end, in one run (docs/networks-and-data.md quotes the figures):
a small conv net and a small ResNet trained here on MNIST, exported to ONNX
(:func:`models.graph_export.export_graph_onnx`), their robustness properties written by
``bench export NET.onnx --properties``, then per network ``bab`` on the graph
(decided, median seconds, subdomains, bytes per subdomain; and the same search with
CROWN bounds only, ``branch_iterations=0``; where both are left open, the largest
bound of an open subdomain of each) and ``crown``'s seconds per sample on the
graph (pruned intermediate bounds, the default, and unpruned) against the dense folding
(the conv net folds; the ResNet does not). ``BENCH_GRAPH_EPS`` sets the radius (0.02).

Training uses the first 8,000 images of the shipped test set (the only MNIST images
shipped) for 2 epochs; the properties are drawn from the last 2,000. Asserted: the graph
(unpruned) and the folding give the same CROWN bounds (1e-7), and no verdict of ``bab``
on the graph contradicts ``bab`` on the folding, the CROWN-only search, an attack or
another verdict.

    python -m pytest benchmarks/test_graph_networks.py --benchmark-enable -s
"""

from __future__ import annotations

import csv
import os
import statistics
import time

import numpy as np
import torch
from torch import nn

from bench import data
from bench.properties import read_vnnlib
from bench.registry import select
from models.graph import GraphNet, Node
from models.graph_export import export_graph_onnx
from models.onnx_network import load_onnx
from tests.conftest import invoke
from verifiers.bab.graph_search import decide_graph
from verifiers.bab.options import SearchOptions
from verifiers.bab.search import decide
from verifiers.linear.graph_propagation import graph_margin_bounds

TIME_LIMIT = 10.0
PROPERTIES = 10
EPS = float(os.environ.get("BENCH_GRAPH_EPS", "0.02"))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 4, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 16, 4, stride=2, padding=1)
        self.l1, self.l2 = nn.Linear(16 * 49, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.c2(torch.relu(self.c1(x.reshape(-1, 1, 28, 28)))))
        return self.l2(torch.relu(self.l1(z.flatten(1))))

    def graph(self) -> GraphNet:
        conv = {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "groups": 1}
        nodes = [Node("input", (), (1, 28, 28)), Node("conv", (0,), (8, 14, 14), conv),
                 Node("relu", (1,), (8, 14, 14)), Node("conv", (2,), (16, 7, 7), conv),
                 Node("relu", (3,), (16, 7, 7)), Node("reshape", (4,), (784,)),
                 Node("linear", (5,), (64,)), Node("relu", (6,), (64,)),
                 Node("linear", (7,), (10,))]
        return _graph(nodes, {1: self.c1, 3: self.c2, 6: self.l1, 8: self.l2})


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 4, stride=2, padding=1)
        self.b1, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 4, stride=2, padding=1)
        self.out = nn.Linear(8 * 49, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.c1(x.reshape(-1, 1, 28, 28)))
        r = torch.relu(self.b2(torch.relu(self.b1(a))) + a)
        return self.out(torch.relu(self.c2(r)).flatten(1))

    def graph(self) -> GraphNet:
        down = {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "groups": 1}
        same = {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1}
        nodes = [Node("input", (), (1, 28, 28)), Node("conv", (0,), (8, 14, 14), down),
                 Node("relu", (1,), (8, 14, 14)), Node("conv", (2,), (8, 14, 14), same),
                 Node("relu", (3,), (8, 14, 14)), Node("conv", (4,), (8, 14, 14), same),
                 Node("add", (5, 2), (8, 14, 14)), Node("relu", (6,), (8, 14, 14)),
                 Node("conv", (7,), (8, 7, 7), down), Node("relu", (8,), (8, 7, 7)),
                 Node("reshape", (9,), (392,)), Node("linear", (10,), (10,))]
        return _graph(nodes, {1: self.c1, 3: self.b1, 5: self.b2, 8: self.c2, 11: self.out})


def _graph(nodes: list[Node], layers: dict[int, nn.Module]) -> GraphNet:
    tensors = {}
    for index, layer in layers.items():
        tensors[f"n{index}_weight"] = layer.weight.detach().clone()
        tensors[f"n{index}_bias"] = layer.bias.detach().clone()
    return GraphNet(nodes, tensors).eval()


def _train(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    images, labels = data.mnist_test()
    x = data.to_tensor(images[:8000], torch.float32)
    y = torch.from_numpy(labels[:8000])
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(2):
        order = torch.randperm(len(y))
        for start in range(0, len(y), 100):
            batch = order[start:start + 100]
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
    return model.eval()


def _instances(folder, name: str) -> list[str]:
    code, _, err = invoke(["export", str(folder / f"{name}.onnx"), "--onnx",
                           str(folder / f"{name}.onnx"), "--properties", str(PROPERTIES),
                           "--draw-seed", "3", "--eps", str(EPS), "--timeout",
                           str(TIME_LIMIT)])
    assert code == 0, err
    return [row[1] for row in csv.reader((folder / "instances.csv").read_text().splitlines())]


def test_graph_networks(benchmark, tmp_path):
    crown = select("verifier", ["crown"])[0].create()
    report = {}

    def run() -> None:
        for name, model in (("convnet", ConvNet()), ("resnet", ResNet())):
            folder = tmp_path / name
            folder.mkdir()
            trained = _train(model)
            export_graph_onnx(trained.graph(), folder / f"{name}.onnx")
            files = _instances(folder, name)
            graph, _ = load_onnx(folder / f"{name}.onnx", graph=True)
            folded, card = load_onnx(folder / f"{name}.onnx")
            with torch.no_grad():
                x = torch.rand(3, 784)
                assert torch.allclose(graph(x), trained(x), atol=1e-5)
            images, labels = data.mnist_test()
            x = data.to_tensor(images[-20:], torch.float64)
            y = torch.from_numpy(labels[-20:])
            started = time.perf_counter()
            graph_bound = crown.bound(graph, x, y, EPS)
            graph_seconds = (time.perf_counter() - started) / len(y)
            row = {"folds": card.extra["folded"] == "yes",
                   "crown_graph_s_per_sample": graph_seconds}
            started = time.perf_counter()
            exact = graph_margin_bounds(graph.float64_copy(), x, y, EPS, prune=False)
            row["crown_unpruned_s_per_sample"] = (time.perf_counter() - started) / len(y)
            if row["folds"]:
                started = time.perf_counter()
                folded_bound = crown.bound(folded, x, y, EPS)
                row["crown_dense_s_per_sample"] = (time.perf_counter() - started) / len(y)
                assert torch.allclose(exact, folded_bound, rtol=0, atol=1e-7)
            finite = torch.isfinite(exact)
            row["crown_mean_bound"] = float(graph_bound[finite].mean())
            row["crown_unpruned_mean_bound"] = float(exact[finite].mean())
            verdicts, seconds, nodes, dense_verdicts, plain = [], [], [], [], []
            outcomes = []
            for file in files:
                prop = read_vnnlib(folder / file)
                outcome = decide_graph(graph, prop, SearchOptions(time_limit=TIME_LIMIT))
                outcomes.append(outcome)
                verdicts.append(outcome.verdict)
                seconds.append(outcome.seconds)
                nodes.append(outcome.nodes)
                row["bytes_per_subdomain"] = outcome.stats["bytes_per_subdomain"]
                without = decide_graph(graph, prop, SearchOptions(time_limit=TIME_LIMIT,
                                                                  branch_iterations=0))
                plain.append(without)
                assert {outcome.verdict, without.verdict} != {"holds", "violated"}, file
                if row["folds"]:
                    dense = decide(folded, prop, SearchOptions(time_limit=TIME_LIMIT))
                    dense_verdicts.append(dense.verdict)
                    assert {outcome.verdict, dense.verdict} != {"holds", "violated"}, file
            row.update({"properties": len(files),
                        "decided": sum(v != "unknown" for v in verdicts),
                        "holds": verdicts.count("holds"),
                        "violated": verdicts.count("violated"),
                        "median_s": statistics.median(seconds),
                        "median_subdomains": statistics.median(nodes)})
            decided_plain = [o.seconds for o in plain if o.verdict != "unknown"]
            row["crown_only_bab_decided"] = len(decided_plain)
            # where both searches are left open: the largest bound of an open subdomain
            # (lower is closer to a proof), alpha-beta-CROWN against CROWN only
            both_open = [(o.stats["open_bound"], p.stats["open_bound"])
                         for o, p in zip(outcomes, plain)
                         if "open_bound" in o.stats and "open_bound" in p.stats]
            row["open_bounds_bab_vs_crown_only"] = [(round(a, 3), round(b, 3))
                                                    for a, b in both_open]
            row["crown_only_bab_median_s"] = statistics.median(o.seconds for o in plain)
            if dense_verdicts:
                row["dense_bab_decided"] = sum(v != "unknown" for v in dense_verdicts)
            report[name] = row

    benchmark.pedantic(run, rounds=1, iterations=1)
    for name, row in report.items():
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    assert all(row["decided"] >= 1 for row in report.values())
    np.testing.assert_equal(report["convnet"]["folds"], True)
    np.testing.assert_equal(report["resnet"]["folds"], False)
