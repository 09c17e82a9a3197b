"""Branch and bound on operator graphs against brute force: on small conv and residual
networks the exact worst margin is the maximum, over every activation pattern of the
ReLUs, of an LP over the box and the pattern's region (each pattern makes the network
affine); every verdict of the search agrees with it, and both verdicts occur."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from bench.contract import Property
from bench.registry import select
from models.graph import GraphNet, Node
from verifiers.bab.graph_search import decide_graph
from verifiers.bab.options import SearchOptions
from verifiers.linear.graph_propagation import layer_bounds


def _conv_net(seed: int) -> GraphNet:
    g = torch.Generator().manual_seed(seed)
    nodes = [Node("input", (), (1, 3, 3)),
             Node("conv", (0,), (2, 2, 2), {"stride": (1, 1), "padding": (0, 0),
                                            "dilation": (1, 1), "groups": 1}),
             Node("relu", (1,), (2, 2, 2)),
             Node("reshape", (2,), (8,)),
             Node("linear", (3,), (3,))]
    tensors = {"n1_weight": torch.randn(2, 1, 2, 2, generator=g),
               "n1_bias": torch.randn(2, generator=g) * 0.3,
               "n4_weight": torch.randn(3, 8, generator=g), "n4_bias": torch.zeros(3)}
    return GraphNet(nodes, tensors).eval()


def _residual_net(seed: int) -> GraphNet:
    g = torch.Generator().manual_seed(seed)
    nodes = [Node("input", (), (4,)),
             Node("linear", (0,), (4,)), Node("relu", (1,), (4,)),
             Node("linear", (2,), (4,)), Node("add", (3, 2), (4,)),
             Node("relu", (4,), (4,)), Node("linear", (5,), (3,))]
    tensors = {"n1_weight": torch.randn(4, 4, generator=g),
               "n1_bias": torch.randn(4, generator=g) * 0.3,
               "n3_weight": torch.randn(4, 4, generator=g),
               "n3_bias": torch.randn(4, generator=g) * 0.3,
               "n6_weight": torch.randn(3, 4, generator=g), "n6_bias": torch.zeros(3)}
    return GraphNet(nodes, tensors).eval()


def _affine_maps(net: GraphNet, masks: dict[int, torch.Tensor], d: int):
    """Under fixed ReLU masks the network is affine: per ReLU node its input's ``(J, c)``
    and the output's, from forward passes at 0 and the unit vectors."""
    points = torch.cat([torch.zeros(1, d), torch.eye(d)]).double()
    values = [points.reshape(d + 1, *net.input_shape)]
    pre = {}
    for index in range(1, len(net.nodes)):
        node = net.nodes[index]
        ins = [values[i] for i in node.inputs]
        if node.op == "relu":
            pre[index] = ins[0].reshape(d + 1, -1)
            values.append(ins[0] * masks[index])
        else:
            values.append(net.apply(index, ins))
    flat = {k: (v[1:] - v[:1]).T for k, v in pre.items()}, {k: v[0] for k, v in pre.items()}
    out = values[-1]
    return flat, ((out[1:] - out[:1]).T, out[0])


def exact_worst(net: GraphNet, prop: Property,
                fixed: dict[int, torch.Tensor] | None = None) -> float:
    """``max_x min_i c_i . f(x) - d_i`` maximised over groups, by enumeration: > 0 iff
    violated (a one-row group per class here). ``fixed``: per ReLU node split signs
    (``+1``: input ``>= 0``, ``-1``: ``<= 0``, 0 free), the patterns enumerated agree."""
    net64 = net.float64_copy()
    d = prop.num_inputs
    relus = [i for i, n in enumerate(net64.nodes) if n.op == "relu"]
    shapes = {i: net64.nodes[i].shape for i in relus}
    sizes = [math.prod(shapes[i]) for i in relus]
    best = -math.inf
    bounds = list(zip(prop.lo.tolist(), prop.hi.tolist()))
    for bits in itertools.product((0.0, 1.0), repeat=sum(sizes)):
        masks, start = {}, 0
        for i, size in zip(relus, sizes):
            masks[i] = torch.tensor(bits[start:start + size], dtype=torch.float64
                                    ).reshape(shapes[i])
            start += size
        if fixed is not None and any(bool(((fixed[i] > 0) & (masks[i] == 0)).any()
                                          or ((fixed[i] < 0) & (masks[i] == 1)).any())
                                     for i in fixed):
            continue
        (jac, const), (out_j, out_c) = _affine_maps(net64, masks, d)
        a_ub, b_ub = [], []
        for i in relus:           # mask 1: pre >= 0 (-J x <= c); mask 0: pre <= 0
            sign = 1 - 2 * masks[i].reshape(-1)
            a_ub.append((sign[:, None] * jac[i]).numpy())
            b_ub.append((-sign * const[i]).numpy())
        a_ub, b_ub = np.concatenate(a_ub), np.concatenate(b_ub)
        if linprog(np.zeros(d), A_ub=a_ub, b_ub=b_ub, bounds=bounds,
                   method="highs").status != 0:
            continue                                  # no input has this pattern
        for matrix, offset in prop.groups:
            row, bound = matrix[0], float(offset[0])
            objective = -(row @ out_j).numpy()
            result = linprog(objective, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
            if result.status == 0:
                best = max(best, -result.fun + float(row @ out_c) - bound)
    return best


@pytest.mark.parametrize("make", [_conv_net, _residual_net], ids=["conv", "residual"])
def test_graph_bab_agrees_with_brute_force(make):
    verdicts = []
    for seed in range(2):
        net = make(seed)
        g = torch.Generator().manual_seed(100 + seed)
        for eps in (0.05, 0.3):
            x = torch.rand(net.input_dim, generator=g, dtype=torch.float64)
            with torch.no_grad():
                label = int(net.float64_copy()(x[None]).argmax())
            prop = Property.robustness(x, label, eps, net.num_classes)
            truth = exact_worst(net, prop)
            if abs(truth) < 1e-6:
                continue                                   # a tie: either answer is fair
            outcome = decide_graph(net, prop, SearchOptions(time_limit=30.0), restarts=0)
            assert outcome.verdict != "unknown"
            assert outcome.verdict == ("violated" if truth > 0 else "holds"), (seed, eps, truth)
            if outcome.verdict == "violated":
                point = outcome.counterexample
                assert bool(((point >= prop.lo) & (point <= prop.hi)).all())
                with torch.no_grad():
                    assert bool(prop.violated_by(net.float64_copy()(point[None]))[0])
            else:
                assert all(float(u.max()) < 0 for u in outcome.uppers)
            verdicts.append(outcome.verdict)
    assert {"holds", "violated"} <= set(verdicts)


def test_the_bab_plugin_certifies_graphs_and_reports_bytes_per_subdomain():
    net = _conv_net(0)
    bab = select("verifier", ["bab"])[0].create({"time_limit": 20.0})
    x = torch.rand(2, 9, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        y = net.float64_copy()(x).argmax(1)
    upper = bab.bound(net, x, y, 0.05)
    crown = select("verifier", ["crown"])[0].create().bound(net, x, y, 0.05)
    assert (upper <= crown + 1e-12).all()           # never looser than its root bound
    rows = bab.statistics()
    assert len(rows) == 2 and all(r["verdict"] in ("certified", "broken") for r in rows)
    # one int8 sign per ReLU unit (8), and the warm start: a float32 slope and multiplier
    # per unit crossing zero at the root, per row (one here)
    prop = Property.robustness(x[0], int(y[0]), 0.3, 3)
    bounds, _ = layer_bounds(net.float64_copy(), prop.lo[None], prop.hi[None])
    crossing = int(((bounds[1][0] < 0) & (bounds[1][1] > 0)).sum())
    assert crossing > 0
    outcome = decide_graph(net, prop, SearchOptions(time_limit=10.0), restarts=0)
    assert outcome.stats["bytes_per_subdomain"] == 8 + 8 * crossing
    outcome = decide_graph(net, prop, SearchOptions(time_limit=10.0, branch_iterations=0),
                           restarts=0)
    assert outcome.stats["bytes_per_subdomain"] == 8


def test_bench_vnncomp_decides_a_residual_network_from_its_onnx_file(tmp_path):
    """The ONNX file of a residual network: kept as a graph, both verdicts, each sat
    re-checked (inside the box, float64 and onnxruntime) with its counterexample file."""
    import csv

    from bench.properties import query_text
    from models.graph_export import export_graph_onnx
    from tests.conftest import invoke

    net = _residual_net(0)               # worst margins -0.067 at eps 0.01, 4.2 at 0.5
    export_graph_onnx(net, tmp_path / "res.onnx")
    x = torch.full((4,), 0.5, dtype=torch.float64)
    with torch.no_grad():
        label = int(net.float64_copy()(x[None]).argmax())
    rows = []
    for eps in (0.01, 0.5):
        name = f"p{eps}.vnnlib"
        (tmp_path / name).write_text(query_text([Property.robustness(x, label, eps, 3)],
                                                (4,), (3,)))
        rows.append(f"res.onnx,{name},20")
    (tmp_path / "instances.csv").write_text("\n".join(rows) + "\n")
    code, stdout, err = invoke(["vnncomp", str(tmp_path / "instances.csv"), "--out",
                                str(tmp_path / "out")])
    assert code == 0, stdout + err
    results = list(csv.DictReader((tmp_path / "out" / "results.csv").read_text().splitlines()))
    truths = [exact_worst(net, Property.robustness(x, label, eps, 3)) for eps in (0.01, 0.5)]
    assert [r["result"] for r in results] == ["sat" if t > 0 else "unsat" for t in truths]
    assert {r["result"] for r in results} == {"sat", "unsat"}
    assert len(list((tmp_path / "out" / "counterexamples").glob("*"))) == 1


def _margin_maximum(make, seed: int) -> tuple[GraphNet, Property, torch.Tensor, float]:
    """Network ``make(seed)``, the box of radius 0.3 around a random point, the row
    ``f_j - f_label`` for the next class ``j``, and that row's exact maximum over the box
    (brute force)."""
    net = make(seed)
    g = torch.Generator().manual_seed(300 + seed)
    x = torch.rand(net.input_dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        label = int(net.float64_copy()(x[None]).argmax())
    row = torch.zeros(1, net.num_classes, dtype=torch.float64)
    row[0, (label + 1) % net.num_classes], row[0, label] = 1.0, -1.0
    box = Property.robustness(x, label, 0.3, net.num_classes)
    zero = torch.zeros(1, dtype=torch.float64)
    return net, box, row, exact_worst(net, Property(box.lo, box.hi, ((row, zero),)))


@pytest.mark.parametrize("make,refine_depth", [(_conv_net, 4), (_residual_net, 4),
                                               (_residual_net, 0)],
                         ids=["conv", "residual", "residual-refined"])
def test_graph_bab_on_thresholds_at_the_exact_maximum_has_to_branch(make, refine_depth):
    """A threshold just above the exact maximum of ``f_j - f_label`` (brute force) holds,
    just below it is violated: the search (alpha-CROWN at the root, then ReLU splits, no
    attack first) gets both right, and some holding ones need splits; also with every
    subdomain's bounds re-derived after its splits (``refine_depth=0``)."""
    branched = 0
    for seed in range(3):
        net, box, row, truth = _margin_maximum(make, seed)
        gap = 0.01 * (1 + abs(truth))
        for side, threshold in (("holds", truth + gap), ("violated", truth - gap)):
            prop = Property(box.lo, box.hi, ((row, torch.tensor([threshold],
                                                                dtype=torch.float64)),))
            outcome = decide_graph(net, prop, SearchOptions(time_limit=30.0,
                                                            refine_depth=refine_depth),
                                   restarts=0)
            assert outcome.verdict == side, (seed, side, truth)
            if side == "holds":
                assert float(outcome.uppers[0].max()) < 0
                branched += outcome.nodes > 1
            else:
                assert bool(prop.violated_by(net.float64_copy()(
                    outcome.counterexample[None]))[0])
    assert branched >= 1


@pytest.mark.parametrize("make", [_conv_net, _residual_net], ids=["conv", "residual"])
def test_alpha_beta_crown_on_split_subdomains_is_sound_and_tightens(make):
    """On random subdomains (a few unstable units split either way), the optimised bound
    with the split multipliers lies above the exact maximum over the subdomain (brute force
    over the activation patterns that agree with the splits), never above CROWN's on the
    clamped bounds, and below it somewhere."""
    from verifiers.linear.graph_optimisation import optimised_upper
    from verifiers.linear.graph_propagation import backward_upper, layer_bounds, split_relaxation

    gained = 0
    for seed in range(3):
        net = make(seed)
        net64 = net.float64_copy()
        g = torch.Generator().manual_seed(500 + seed)
        x = torch.rand(net.input_dim, generator=g, dtype=torch.float64)
        with torch.no_grad():
            label = int(net64(x[None]).argmax())
        box = Property.robustness(x, label, 0.4, net.num_classes)
        lo, hi = box.lo[None], box.hi[None]
        root, _ = layer_bounds(net64, lo, hi)
        relus = [i for i, n in enumerate(net64.nodes) if n.op == "relu"]
        for trial in range(3):
            splits = {}
            for index in relus:
                low, up = root[net64.nodes[index].inputs[0]]
                unstable = ((low < 0) & (up > 0))[0]
                sign = torch.randint(0, 2, unstable.shape, generator=g) * 2 - 1
                keep = torch.rand(unstable.shape, generator=g) < 0.5
                splits[index] = (sign * (unstable & keep)).to(torch.int8)[None]
            _, relaxed = split_relaxation(net64, root, splits)
            spec = (torch.eye(net.num_classes, dtype=torch.float64)
                    - torch.eye(net.num_classes, dtype=torch.float64)[label])[None]
            with torch.no_grad():
                crown = backward_upper(net64, relaxed, len(net64.nodes) - 1, spec, lo, hi)[0]
            tight = optimised_upper(net64, lo, hi, spec, 30, relaxed=relaxed,
                                    splits=splits)[0]
            for j in range(net.num_classes):
                if j == label:
                    continue
                row = spec[0, j:j + 1]
                truth = exact_worst(net, Property(box.lo, box.hi, (
                    (row, torch.zeros(1, dtype=torch.float64)),)),
                    fixed={i: t[0] for i, t in splits.items()})
                if truth == -math.inf:
                    continue                        # an empty subdomain: any bound holds
                assert truth <= float(tight[j]) + 1e-9, (seed, trial, j)
                assert float(tight[j]) <= float(crown[j]) + 1e-12
                gained += float(tight[j]) < float(crown[j]) - 1e-6
    assert gained > 0


def test_an_open_search_reports_a_sound_finite_bound():
    """Stopped at once (a time limit of a microsecond) on a group the root leaves open,
    the search answers ``unknown`` with its open subdomains' largest bound: finite, and
    above the exact maximum (brute force)."""
    net, box, row, truth = _margin_maximum(_residual_net, 0)
    threshold = truth + 1e-6 * (1 + abs(truth))        # out of reach of the root alone
    prop = Property(box.lo, box.hi, ((row, torch.tensor([threshold], dtype=torch.float64)),))
    outcome = decide_graph(net, prop, SearchOptions(time_limit=1e-6), restarts=0)
    assert outcome.verdict == "unknown"
    bound = float(outcome.uppers[0][0])
    assert math.isfinite(bound) and bound == outcome.stats["open_bound"]
    assert bound >= truth - threshold - 1e-9


def _smooth_net(seed: int, op: str) -> GraphNet:
    """2 inputs, two hidden layers of 5 sigmoid or tanh units, 2 outputs."""
    g = torch.Generator().manual_seed(seed)
    scale = 2.0 if op == "sigmoid" else 0.7
    nodes = [Node("input", (), (2,)), Node("linear", (0,), (5,)), Node(op, (1,), (5,)),
             Node("linear", (2,), (5,)), Node(op, (3,), (5,)), Node("linear", (4,), (2,))]
    tensors = {"n1_weight": torch.randn(5, 2, generator=g) * scale,
               "n1_bias": torch.randn(5, generator=g),
               "n3_weight": torch.randn(5, 5, generator=g) * scale,
               "n3_bias": torch.randn(5, generator=g),
               "n5_weight": torch.randn(2, 5, generator=g), "n5_bias": torch.zeros(2)}
    return GraphNet(nodes, tensors).eval()


@pytest.mark.parametrize("op", ["sigmoid", "tanh"])
def test_graph_bab_splits_sigmoid_and_tanh_units_to_decide(op):
    """The row ``f_1 - f_0`` over a box of 2 inputs: its maximum is the grid's (1501^2
    points) within a Lipschitz slack far below the gap; a threshold 5% above it holds,
    5% below it is violated: the search gets both right, and (sigmoid) some only by
    splitting units."""
    split, proved = 0, 0
    for seed in range(3):
        net = _smooth_net(seed, op)
        net64 = net.float64_copy()
        lo, hi = torch.tensor([-0.6, -0.4], dtype=torch.float64), \
            torch.tensor([0.5, 0.7], dtype=torch.float64)
        axis = [torch.linspace(float(lo[i]), float(hi[i]), 1501, dtype=torch.float64)
                for i in range(2)]
        grid = torch.cartesian_prod(*axis)
        row = torch.tensor([[-1.0, 1.0]], dtype=torch.float64)
        with torch.no_grad():
            values = net64(grid) @ row[0]
        top = float(values.max())
        # |d row.f / dx|_1 <= |row W3| diag(max f') |W2| diag(max f') |W1| (entrywise |.|)
        slope = 0.25 if op == "sigmoid" else 1.0
        weights = [net64.tensor(i, "weight").abs() for i in (1, 3, 5)]
        lipschitz = float((row.abs() @ weights[2] * slope @ weights[1] * slope
                           @ weights[0]).sum())
        step = float((hi - lo).max()) / 1500       # a point is within step / 2 of the grid
        for share in (0.05,):
            gap = share * (1 + abs(top))
            assert lipschitz * step / 2 < gap / 4
            for side, threshold in (("holds", top + gap), ("violated", top - gap)):
                prop = Property(lo, hi, ((row, torch.tensor([threshold],
                                                            dtype=torch.float64)),))
                outcome = decide_graph(net, prop, SearchOptions(time_limit=20.0), restarts=0)
                assert outcome.verdict == side, (seed, side, top)
                if side == "holds":
                    proved += outcome.verdict == "holds"
                    split += outcome.verdict == "holds" and outcome.stats["curve_splits"] > 0
                else:
                    assert outcome.verdict == "violated"
                    assert bool(prop.violated_by(net64(outcome.counterexample[None]))[0])
    assert proved == 3, proved
    if op == "sigmoid":              # (the tanh ones here are proved at the root)
        assert split >= 1
