"""Optimised intermediate bounds on operator graphs (alpha-CROWN's, node by node) and the
bounds of branch-and-bound subdomains re-derived after their splits: both enclose every
sampled point they cover (of the box; of the points that meet the splits), lie inside
the bounds they refine, and are strictly tighter somewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.graph import GraphNet, Node
from models.onnx_graph import import_onnx_graph
from tests import test_graph_bounds
from verifiers.bab.graph_layer_bounds import refined_bounds
from verifiers.linear.graph_optimisation import GraphSlopes, optimised_layer_bounds
from verifiers.linear.graph_propagation import layer_bounds, split_relaxation


def _deep_residual(seed: int) -> GraphNet:
    """4 inputs, three ReLU nodes with a residual connection: bounds after a split have
    two nonlinear nodes to tighten through."""
    g = torch.Generator().manual_seed(seed)
    nodes = [Node("input", (), (4,)), Node("linear", (0,), (6,)), Node("relu", (1,), (6,)),
             Node("linear", (2,), (6,)), Node("relu", (3,), (6,)),
             Node("linear", (4,), (6,)), Node("add", (5, 2), (6,)),
             Node("relu", (6,), (6,)), Node("linear", (7,), (3,))]
    tensors = {}
    for index, (rows, cols) in {1: (6, 4), 3: (6, 6), 5: (6, 6), 8: (3, 6)}.items():
        tensors[f"n{index}_weight"] = torch.randn(rows, cols, generator=g)
        tensors[f"n{index}_bias"] = torch.randn(rows, generator=g) * 0.3
    return GraphNet(nodes, tensors).eval()


def _box(net: GraphNet, seed: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, net.input_dim, generator=g, dtype=torch.float64)
    return (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)


def _samples(lo: torch.Tensor, hi: torch.Tensor, count: int) -> torch.Tensor:
    t = torch.rand(count, lo.shape[1], dtype=torch.float64)
    t[: count // 4] = t[: count // 4].round()                           # vertices
    return lo + t * (hi - lo)


@pytest.mark.parametrize("kind", ["conv", "residual", "sigmoid", "tanh", "branches"])
def test_optimised_intermediate_bounds_are_sound_and_tighter_than_crowns(kind, tmp_path,
                                                                        monkeypatch):
    # the networks' weights drawn afresh (the other module's draws do not shift them)
    monkeypatch.setattr(test_graph_bounds, "RNG", np.random.default_rng(5))
    net, _ = import_onnx_graph(test_graph_bounds._network(kind, tmp_path / f"{kind}.onnx"))
    net64 = net.float64_copy()
    torch.manual_seed(0)
    lo, hi = _box(net64, 1, 0.3)
    crown, _ = layer_bounds(net64, lo, hi)
    slopes = GraphSlopes()
    tight, _ = optimised_layer_bounds(net64, lo, hi, 20, slopes, tighten_with=crown)
    with torch.no_grad():
        values = net64.node_values(_samples(lo, hi, 4000))
    narrower = 0.0
    for (c_lo, c_hi), (t_lo, t_hi), value in zip(crown, tight, values):
        assert (value >= t_lo - 1e-9).all() and (value <= t_hi + 1e-9).all(), kind
        assert (t_lo >= c_lo - 1e-12).all() and (t_hi <= c_hi + 1e-12).all(), kind
        narrower += float(((c_hi - c_lo) - (t_hi - t_lo)).sum())
    assert narrower > 1e-3, kind
    # the parameters kept: two rows (+e_i, -e_i) per bounded unit, per nonlinear node
    # before, of a ReLU only at its units crossing zero; none past the budget
    assert slopes.complete and slopes.units
    for source, units in slopes.units.items():
        for index, alphas in slopes.alphas[source].items():
            if net64.nodes[index].op == "relu":
                assert alphas.shape == (1, 2 * len(units), len(slopes.positions[index]))
            else:
                assert alphas.shape == (2, 1, 2 * len(units), *net64.nodes[index].shape)
            assert float(alphas.min()) >= 0 and float(alphas.max()) <= 1
    small = GraphSlopes(budget=8)
    again, _ = optimised_layer_bounds(net64, lo, hi, 0, small)
    assert not small.complete and len(small.units) < len(slopes.units)


@pytest.mark.parametrize("iterations", [0, 10])
def test_refined_subdomain_bounds_enclose_the_points_meeting_the_splits(iterations):
    """Random splits of units unstable at the root: every sampled point of the box that
    meets a subdomain's splits has node values inside its re-derived bounds, a subdomain
    called empty has no such point, the bounds lie inside the root's clamped to the
    splits, and they are strictly tighter on some subdomain."""
    narrower = 0.0
    for seed in range(4):
        net64 = _deep_residual(seed).float64_copy()
        lo, hi = _box(net64, 10 + seed, 0.4)
        slopes = GraphSlopes()
        root, _ = optimised_layer_bounds(net64, lo, hi, iterations, slopes)
        with torch.no_grad():
            points = _samples(lo, hi, 20000)
            values = net64.node_values(points)
        g = torch.Generator().manual_seed(seed)
        splits = {}
        for index in (2, 4):                 # the first two ReLU nodes, 8 subdomains
            low, up = root[index - 1]
            unstable = ((low < 0) & (up > 0)).to(torch.int8)
            signs = torch.randint(0, 2, (8, *low.shape[1:]), generator=g).to(torch.int8) * 2 - 1
            keep = torch.rand(8, *low.shape[1:], generator=g) < 0.5
            splits[index] = signs * unstable * keep
        splits[7] = torch.zeros(8, 6, dtype=torch.int8)
        bounds, _, empty = refined_bounds(net64, root, splits, slopes, lo, hi)
        clamped, _ = split_relaxation(net64, root, splits)
        for b in range(8):
            meets = torch.ones(len(points), dtype=torch.bool)
            for index, sign in splits.items():
                pre = values[index - 1]
                meets &= ((sign[b] <= 0) | (pre >= 0)).all(1) & ((sign[b] >= 0) | (pre <= 0)).all(1)
            assert not (bool(empty[b]) and bool(meets.any())), (seed, b)
            for (r_lo, r_hi), (c_lo, c_hi), value in zip(bounds, clamped, values):
                assert (r_lo[b] >= c_lo[b] - 1e-12).all() and (r_hi[b] <= c_hi[b] + 1e-12).all()
                inside = value[meets]
                assert (inside >= r_lo[b] - 1e-9).all() and (inside <= r_hi[b] + 1e-9).all(), \
                    (seed, b)
                if not bool(empty[b]):
                    narrower += float(((c_hi[b] - c_lo[b]) - (r_hi[b] - r_lo[b])).sum())
    assert narrower > 1e-3
