"""Operator-graph networks: the importer keeps convolutions, residual additions, pooling,
padding and smooth activations as operators (forward equal to onnxruntime), and the
bounds computed operator by operator enclose what dense sampling and an attack reach,
and equal CROWN on the dense folding where the network folds."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bench.contract import Property, supports
from bench.registry import select
from models.graph import GraphNet
from models.onnx_graph import import_onnx_graph
from models.onnx_import import OnnxImportError, import_onnx
from models.onnx_network import load_onnx
from verifiers.linear.graph_optimisation import optimised_layer_bounds
from verifiers.linear.graph_propagation import (
    graph_margin_bounds,
    graph_property_bounds,
    interval_bounds,
    layer_bounds,
)

RNG = np.random.default_rng(0)
SHAPE = [1, 6, 6]


def _const(name: str, *shape: int, scale: float = 0.5) -> onnx.TensorProto:
    return numpy_helper.from_array((scale * RNG.normal(size=shape)).astype(np.float32), name)


def _save(nodes: list, inits: list, path, shape=SHAPE) -> str:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return str(path)


def _head(features: str, size: int) -> tuple[list, list]:
    """Flatten ``features`` and a linear layer to 3 classes."""
    return ([helper.make_node("Flatten", [features], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w_out", "b_out"], ["y"], transB=1)],
            [_const("w_out", 3, size), _const("b_out", 3)])


def _conv(name: str, source: str, out: str, c_in: int, c_out: int, pads=1, stride=1):
    return (helper.make_node("Conv", [source, f"{name}_w", f"{name}_b"], [out],
                             pads=[pads] * 4, strides=[stride] * 2),
            [_const(f"{name}_w", c_out, c_in, 3, 3), _const(f"{name}_b", c_out)])


def _network(kind: str, path) -> str:
    """Small networks on 1x6x6 inputs, one per operator family."""
    c1, i1 = _conv("c1", "x", "a", 1, 2)
    if kind == "conv":
        c2, i2 = _conv("c2", "r1", "b", 2, 2, stride=2)
        nodes = [c1, helper.make_node("Relu", ["a"], ["r1"]), c2,
                 helper.make_node("Relu", ["b"], ["r2"])]
        head, ih = _head("r2", 2 * 3 * 3)
        return _save(nodes + head, i1 + i2 + ih, path)
    if kind == "residual":
        c2, i2 = _conv("c2", "r1", "b", 2, 2)
        c3, i3 = _conv("c3", "r2", "c", 2, 2)
        nodes = [c1, helper.make_node("Relu", ["a"], ["r1"]), c2,
                 helper.make_node("Relu", ["b"], ["r2"]), c3,
                 helper.make_node("Add", ["c", "r1"], ["s"]),
                 helper.make_node("Relu", ["s"], ["r3"])]
        head, ih = _head("r3", 2 * 36)
        return _save(nodes + head, i1 + i2 + i3 + ih, path)
    if kind in ("maxpool", "avgpool"):
        op = "MaxPool" if kind == "maxpool" else "AveragePool"
        nodes = [c1, helper.make_node("Relu", ["a"], ["r1"]),
                 helper.make_node(op, ["r1"], ["p"], kernel_shape=[3, 3], strides=[2, 2],
                                  pads=[1, 1, 1, 1], **({} if kind == "maxpool"
                                                        else {"count_include_pad": 1})),
                 helper.make_node("Relu", ["p"], ["r2"])]
        head, ih = _head("r2", 2 * 3 * 3)
        return _save(nodes + head, i1 + ih, path)
    if kind == "pad":
        c2, i2 = _conv("c2", "q", "b", 2, 2, pads=0)
        pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
        nodes = [c1, helper.make_node("Relu", ["a"], ["r1"]),
                 helper.make_node("Pad", ["r1", "pads"], ["q"], mode="constant"), c2,
                 helper.make_node("Relu", ["b"], ["r2"])]
        head, ih = _head("r2", 2 * 36)
        return _save(nodes + head, i1 + i2 + [pads] + ih, path)
    if kind in ("sigmoid", "tanh"):
        op = "Sigmoid" if kind == "sigmoid" else "Tanh"
        nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
                 helper.make_node("Gemm", ["f", "w1", "b1"], ["h1"], transB=1),
                 helper.make_node(op, ["h1"], ["s1"]),
                 helper.make_node("Gemm", ["s1", "w2", "b2"], ["h2"], transB=1),
                 helper.make_node(op, ["h2"], ["s2"]),
                 helper.make_node("Gemm", ["s2", "w_out", "b_out"], ["y"], transB=1)]
        inits = [_const("w1", 12, 36, scale=1.5), _const("b1", 12),
                 _const("w2", 8, 12, scale=2.0), _const("b2", 8),
                 _const("w_out", 3, 8), _const("b_out", 3)]
        return _save(nodes, inits, path)
    if kind == "branches":            # two conv branches: concatenated, and subtracted
        c2, i2 = _conv("c2", "x", "b", 1, 2)
        c3, i3 = _conv("c3", "cat", "c", 4, 2)
        nodes = [c1, c2, helper.make_node("Relu", ["a"], ["r1"]),
                 helper.make_node("Relu", ["b"], ["r2"]),
                 helper.make_node("Concat", ["r1", "r2"], ["cat"], axis=1), c3,
                 helper.make_node("Sub", ["c", "r2"], ["d"]),
                 helper.make_node("Relu", ["d"], ["r3"])]
        head, ih = _head("r3", 2 * 36)
        return _save(nodes + head, i1 + i2 + i3 + ih, path)
    if kind == "batchnorm":
        bn = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in (
            ("s", RNG.uniform(0.5, 2, 2)), ("t", RNG.normal(size=2)), ("m", RNG.normal(size=2)),
            ("v", RNG.uniform(0.5, 2, 2)))]
        nodes = [c1, helper.make_node("BatchNormalization", ["a", "s", "t", "m", "v"], ["n"]),
                 helper.make_node("Relu", ["n"], ["r1"]),
                 helper.make_node("MaxPool", ["r1"], ["p"], kernel_shape=[2, 2], strides=[2, 2])]
        head, ih = _head("p", 2 * 9)
        return _save(nodes + head, i1 + bn + ih, path)
    if kind == "leaky-clip":          # LeakyRelu and Clip, imported as ReLU compositions
        c2, i2 = _conv("c2", "l1", "b", 2, 2)
        ends = [numpy_helper.from_array(np.array(v, np.float32), n)
                for n, v in (("lo", -0.3), ("hi", 0.4))]
        nodes = [c1, helper.make_node("LeakyRelu", ["a"], ["l1"], alpha=0.1), c2,
                 helper.make_node("Clip", ["b", "lo", "hi"], ["r2"])]
        head, ih = _head("r2", 2 * 36)
        return _save(nodes + head, i1 + i2 + ends + ih, path)
    if kind == "upsampling":          # Slice, ConvTranspose and nearest Resize, added
        ends = [numpy_helper.from_array(np.array(v, np.int64), n)
                for n, v in (("starts", [1, 1]), ("ends", [5, 5]), ("axes", [2, 3]))]
        scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
        nodes = [c1, helper.make_node("Relu", ["a"], ["r1"]),
                 helper.make_node("Slice", ["r1", "starts", "ends", "axes"], ["s"]),
                 helper.make_node("ConvTranspose", ["s", "t_w", "t_b"], ["t"], strides=[2, 2],
                                  pads=[1, 1, 1, 1], output_padding=[1, 1]),
                 helper.make_node("Resize", ["s", "", "scales"], ["u"], mode="nearest"),
                 helper.make_node("Add", ["t", "u"], ["m"]),
                 helper.make_node("Relu", ["m"], ["r2"])]
        head, ih = _head("r2", 2 * 64)
        return _save(nodes + head, i1 + ends + [scales, _const("t_w", 2, 2, 3, 3),
                                                _const("t_b", 2)] + ih, path)
    raise ValueError(kind)


KINDS = ["conv", "residual", "maxpool", "avgpool", "pad", "sigmoid", "tanh", "batchnorm",
         "branches", "leaky-clip", "upsampling"]


@pytest.fixture(scope="module", params=KINDS)
def network(request, tmp_path_factory):
    path = _network(request.param, tmp_path_factory.mktemp("g") / f"{request.param}.onnx")
    net, _ = import_onnx_graph(path)
    return request.param, path, net


def test_the_graph_forward_equals_onnxruntime(network):
    kind, path, net = network
    x = RNG.uniform(size=(5, *SHAPE)).astype(np.float32)
    theirs = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    with torch.no_grad():
        ours = net(torch.from_numpy(x.reshape(5, -1)))
        ours64 = net.float64_copy()(torch.from_numpy(x.reshape(5, -1).astype(np.float64)))
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours64.numpy(), theirs, rtol=1e-4, atol=1e-4)
    expected = {"conv": "conv", "batchnorm": "conv", "residual": "add",
                "branches": "concat", "leaky-clip": "add", "upsampling": "deconv"}.get(kind, kind)
    assert {node.op for node in net.nodes} >= {"input", expected}
    if kind == "upsampling":
        assert {node.op for node in net.nodes} >= {"slice", "upsample", "deconv"}


def _sampled_margins(net: GraphNet, x: torch.Tensor, y: torch.Tensor, eps: float,
                     count: int = 600) -> torch.Tensor:
    """The largest margin per (sample, class) over random points and vertices of the box,
    and signed-gradient ascent from the best of them."""
    net64 = net.float64_copy()
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    best = torch.full((len(x), net.num_classes), -float("inf"), dtype=torch.float64)
    for n in range(len(x)):
        t = torch.rand(count, x.shape[1], dtype=torch.float64)
        t[: count // 3] = t[: count // 3].round()                  # vertices
        points = lo[n] + t * (hi[n] - lo[n])
        for j in range(net.num_classes):
            z = points.clone()
            for _ in range(15):                                     # ascent on margin j
                z.requires_grad_(True)
                out = net64(z)
                margin = out[:, j] - out[:, y[n]]
                grad, = torch.autograd.grad(margin.sum(), z)
                z = torch.minimum(torch.maximum(z.detach() + 0.05 * eps * grad.sign(), lo[n]),
                                  hi[n])
            with torch.no_grad():
                out = net64(torch.cat([points, z]))
                best[n, j] = (out[:, j] - out[:, y[n]]).max()
    return best


def test_bounds_enclose_sampling_and_an_attack(network):
    kind, _, net = network
    torch.manual_seed(1)
    x = torch.rand(2, 36, dtype=torch.float64)
    with torch.no_grad():
        y = net.float64_copy()(x).argmax(1)
    eps = 0.15
    reached = _sampled_margins(net, x, y, eps)
    crown = graph_margin_bounds(net, x, y, eps)
    ibp = graph_margin_bounds(net, x, y, eps, crown=False)
    off = torch.ones_like(crown, dtype=torch.bool).scatter(1, y.view(-1, 1), False)
    assert (reached[off] <= crown[off] + 1e-9).all(), kind
    assert (reached[off] <= ibp[off] + 1e-9).all(), kind
    # (CROWN is not always below the intervals: neither bound dominates the other)
    alpha = select("verifier", ["alpha-crown"])[0].create().bound(net, x, y, eps)
    assert (reached[off] <= alpha[off] + 1e-9).all(), kind    # sound, and never looser
    assert (alpha[off] <= crown[off] + 1e-12).all(), kind
    if kind in ("sigmoid", "tanh"):      # the optimised tangent points pay
        assert (alpha[off] < crown[off] - 1e-3).any(), kind
    # the intervals of every node enclose its sampled values
    box_lo, box_hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    intervals = interval_bounds(net.float64_copy(), box_lo[:1], box_hi[:1])
    points = box_lo[0] + torch.rand(500, 36, dtype=torch.float64) * (box_hi[0] - box_lo[0])
    with torch.no_grad():
        values = net.float64_copy().node_values(points)
    for (lo, hi), value in zip(intervals, values):
        assert (value >= lo - 1e-9).all() and (value <= hi + 1e-9).all(), kind
    # so do the pruned and intersected bounds, which lie inside the intervals, and the
    # optimised ones (alpha-CROWN's intermediates), which lie inside those
    pruned, _ = layer_bounds(net.float64_copy(), box_lo[:1], box_hi[:1])
    optimised, _ = optimised_layer_bounds(net.float64_copy(), box_lo[:1], box_hi[:1], 5,
                                          tighten_with=pruned)
    for (lo, hi), (i_lo, i_hi), (o_lo, o_hi), value in zip(pruned, intervals, optimised,
                                                           values):
        assert (value >= lo - 1e-9).all() and (value <= hi + 1e-9).all(), kind
        assert (lo >= i_lo - 1e-12).all() and (hi <= i_hi + 1e-12).all(), kind
        assert (value >= o_lo - 1e-9).all() and (value <= o_hi + 1e-9).all(), kind
        assert (o_lo >= lo - 1e-12).all() and (o_hi <= hi + 1e-12).all(), kind


def test_crown_and_lp_on_the_graph_equal_them_on_the_dense_folding(tmp_path, monkeypatch):
    """The graph engine computing CROWN's bounds as the MLP engine does (``prune=False``)
    gives the dense folding's bounds to 1e-9; the plugins (pruned and intersected
    intermediate bounds) give bounds at least as tight in sum (their soundness: the
    sampling tests above)."""
    from verifiers.linear.propagation import wong_kolter_slope

    # weights of their own, whichever tests drew from the module's generator before
    monkeypatch.setitem(globals(), "RNG", np.random.default_rng(0))

    path = _network("conv", tmp_path / "conv.onnx")
    graph, _ = import_onnx_graph(path)
    dense, _ = import_onnx(path)
    crown = select("verifier", ["crown"])[0].create()
    lp = select("verifier", ["lp"])[0].create()
    torch.manual_seed(2)
    x = torch.rand(4, 36, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    for eps in (0.02, 0.1, 0.3):
        for method, rule in ((crown, None), (lp, wong_kolter_slope)):
            folded = method.bound(dense, x, y, eps)
            exact = graph_margin_bounds(graph.float64_copy(), x, y, eps, rule=rule,
                                        prune=False)
            assert torch.allclose(exact, folded, rtol=0, atol=1e-9), (method.name, eps)
            ours = method.bound(graph, x, y, eps)
            finite = torch.isfinite(folded)
            change = (ours[finite] - folded[finite]).detach()
            # tighter intermediate bounds can move an adaptive lower slope and loosen a
            # bound a little; on the whole they tighten (here they come out equal)
            assert float(change.sum()) <= 1e-9, (method.name, eps)
    prop = Property.robustness(x[0], 0, 0.1, 3)
    for a, b in zip(graph_property_bounds(graph, prop, prune=False),
                    crown.bound_property(dense, prop)):
        assert torch.allclose(a, b, rtol=0, atol=1e-9)


def test_unfoldable_networks_load_as_graphs_and_only_graph_plugins_take_them(tmp_path):
    net, card = load_onnx(_network("residual", tmp_path / "res.onnx"))
    assert isinstance(net, GraphNet) and card.extra["folded"].startswith("no:")
    folded, card = load_onnx(_network("conv", tmp_path / "conv.onnx"))
    assert not isinstance(folded, GraphNet) and card.extra["folded"] == "yes"
    takes = {info.name for info in select("verifier", ["ibp", "crown", "lp", "milp", "bab",
                                                       "sdp"]) if supports(info.create(), net)}
    assert takes == {"ibp", "crown", "lp", "bab"}
    assert supports(select("verifier", ["alpha-crown"])[0].create(), net)
    attacks = {info.name for info in select("attack", ["pgd", "apgd-ce", "bab-cex", "milp-cex"])
               if supports(info.create(), net)}
    assert attacks == {"pgd", "apgd-ce", "bab-cex"}


def test_an_operator_without_a_rule_is_one_line_naming_it(tmp_path):
    nodes = [helper.make_node("Softmax", ["x"], ["s"], name="soft"),
             helper.make_node("Flatten", ["s"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w_out", "b_out"], ["y"], transB=1)]
    path = _save(nodes, [_const("w_out", 3, 36), _const("b_out", 3)], tmp_path / "s.onnx")
    with pytest.raises(OnnxImportError, match=r"'soft' \(Softmax\): unsupported operator"):
        load_onnx(path)


@pytest.mark.parametrize("op", ["relu", "sigmoid", "tanh"])
def test_each_activation_lies_between_its_lines_on_its_interval(op):
    """Every relaxation line, checked on a grid of each interval (one-signed, crossing,
    narrow and wide), and tight: the lines touch the curve somewhere."""
    from models.graph import ELEMENTWISE
    from verifiers.linear.graph_propagation import _relu_lines, _s_curve_lines

    generator = torch.Generator().manual_seed(3)
    centre = torch.randn(4000, dtype=torch.float64, generator=generator) * 4
    width = torch.rand(4000, dtype=torch.float64, generator=generator) ** 3 * 12
    lo, hi = centre - width / 2, centre + width / 2
    lines = _relu_lines(lo, hi) if op == "relu" else _s_curve_lines(op, lo, hi)
    a_low, b_low, a_up, b_up = (t[:, None] for t in lines)
    z = lo[:, None] + torch.linspace(0, 1, 401, dtype=torch.float64) * (hi - lo)[:, None]
    value = ELEMENTWISE[op](z)
    below, above = value - (a_low * z + b_low), (a_up * z + b_up) - value
    assert below.min() >= -1e-12 and above.min() >= -1e-12
    assert float(below.min(1).values.median()) < 1e-3       # not sound by being slack
    assert float(above.min(1).values.median()) < 1e-3


@pytest.mark.parametrize("op", ["sigmoid", "tanh"])
def test_every_tangent_point_in_its_range_gives_sound_lines(op):
    """The optimisable lines of sigmoid and tanh (:func:`s_curve_lines_at`): for random
    tangent points in their ranges, at both ends of the ranges, on one-signed, crossing,
    narrow and wide intervals, the function lies between them on a grid."""
    from models.graph import ELEMENTWISE
    from verifiers.linear.graph_propagation import s_curve_lines_at, s_curve_tangent_points

    generator = torch.Generator().manual_seed(4)
    centre = torch.randn(4000, dtype=torch.float64, generator=generator) * 4
    width = torch.rand(4000, dtype=torch.float64, generator=generator) ** 3 * 12
    lo, hi = centre - width / 2, centre + width / 2
    points = s_curve_tangent_points(op, lo, hi)
    assert bool(points[4].any()) and bool(points[5].any())
    z = lo[:, None] + torch.linspace(0, 1, 401, dtype=torch.float64) * (hi - lo)[:, None]
    value = ELEMENTWISE[op](z)
    for trial in range(6):
        alphas = [torch.full_like(lo, float(trial % 2)) if trial < 2 else
                  torch.rand(4000, dtype=torch.float64, generator=generator) for _ in range(2)]
        a_low, b_low, a_up, b_up = (t[:, None] for t in s_curve_lines_at(
            op, lo, hi, points, *alphas))
        assert (value - (a_low * z + b_low)).min() >= -1e-12, trial
        assert ((a_up * z + b_up) - value).min() >= -1e-12, trial


def test_a_graph_written_as_onnx_reads_back_the_same(network, tmp_path):
    from models.graph_export import export_graph_onnx

    kind, path, net = network
    copy = export_graph_onnx(net, tmp_path / f"{kind}-again.onnx")
    again, _ = import_onnx_graph(copy)
    assert [(n.op, n.inputs, n.shape) for n in again.nodes] == \
        [(n.op, n.inputs, n.shape) for n in net.nodes]
    x = torch.rand(4, 36)
    with torch.no_grad():
        assert torch.equal(again(x), net(x))
    theirs = onnxruntime.InferenceSession(str(copy), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy().reshape(4, *SHAPE)})[0]
    np.testing.assert_allclose(theirs, net(x).detach().numpy(), rtol=1e-5, atol=1e-5)
