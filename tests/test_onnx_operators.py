"""The importer's operator table is what it imports: every operator it lists is imported
(equal to onnxruntime), every opset in its declared range is read, and anything else is
refused by name."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper, version_converter

from models.onnx_import import LIVE_OPERATORS, OPSET_VERSIONS, OnnxImportError, import_onnx

RNG = np.random.default_rng(0)


def _const(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.normal(size=shape).astype(np.float32), name)


def _model(nodes: list, inits: list, in_shape: list, opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _net_with(op: str) -> tuple[list, list, list]:
    """A small graph ``x (N, 2, 4, 4) -> op -> flatten -> Gemm -> y`` exercising ``op``."""
    head = [helper.make_node("Identity", ["x"], ["a"])]
    inits = [_const("w_out", 5, 32), _const("b_out", 5)]
    body = {
        "Add": ([helper.make_node("Add", ["a", "c"], ["b"])], [_const("c", 2, 4, 4)]),
        "Sub": ([helper.make_node("Sub", ["c", "a"], ["b"])], [_const("c", 1, 4, 1)]),
        "Mul": ([helper.make_node("Mul", ["a", "c"], ["b"])], [_const("c", 2, 1, 1)]),
        "Div": ([helper.make_node("Div", ["a", "c"], ["b"])],
                [numpy_helper.from_array(np.full((1,), 4.0, np.float32), "c")]),
        "Relu": ([helper.make_node("Relu", ["a"], ["b"])], []),
        "Identity": ([helper.make_node("Identity", ["a"], ["b"])], []),
        "Dropout": ([helper.make_node("Dropout", ["a"], ["b"])], []),
        "Conv": ([helper.make_node("Conv", ["a", "k", "kb"], ["b"], pads=[1, 1, 1, 1])],
                 [_const("k", 2, 2, 3, 3), _const("kb", 2)]),
        "BatchNormalization": ([helper.make_node("BatchNormalization",
                                                 ["a", "s", "t", "m", "v"], ["b"])],
                               [_const("s", 2), _const("t", 2), _const("m", 2),
                                numpy_helper.from_array(np.array([0.5, 2.0], np.float32),
                                                        "v")]),
        "Transpose": ([helper.make_node("Transpose", ["a"], ["b"], perm=[0, 1, 3, 2])], []),
        "Reshape": ([helper.make_node("Reshape", ["a", "shape"], ["b"])],
                    [numpy_helper.from_array(np.array([0, 2, 16], np.int64), "shape")]),
        "Flatten": ([], []),
        "Gemm": ([], []),
        "MatMul": ([], []),
    }[op]
    tail_in = "b" if body[0] else "a"
    tail = [helper.make_node("Flatten", [tail_in], ["f"], axis=1)]
    if op == "MatMul":
        tail += [helper.make_node("MatMul", ["f", "w_t"], ["y"])]
        inits = [_const("w_t", 32, 5)]
    else:
        tail += [helper.make_node("Gemm", ["f", "w_out", "b_out"], ["y"], transB=1)]
    return head + body[0] + tail, inits + body[1], [2, 4, 4]


def _agrees(model: onnx.ModelProto, path) -> None:
    onnx.save(model, path)
    net, _ = import_onnx(path)
    x = RNG.uniform(size=(3, 2, 4, 4)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"x": x})[0]
    with torch.no_grad():
        ours = net.float64_copy()(torch.from_numpy(x.reshape(3, -1).astype(np.float64)))
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", LIVE_OPERATORS)
def test_every_listed_operator_is_imported(op, tmp_path):
    nodes, inits, shape = _net_with(op)
    _agrees(_model(nodes, inits, shape), tmp_path / f"{op}.onnx")


@pytest.mark.parametrize("opset", range(OPSET_VERSIONS[0], OPSET_VERSIONS[1] + 1))
def test_every_opset_in_the_declared_range_is_read(opset, tmp_path):
    nodes = [helper.make_node("Conv", ["x", "k", "kb"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0]),
             helper.make_node("Concat", ["n1", "minus"], ["target"], axis=0),
             helper.make_node("Reshape", ["r", "target"], ["f"]),
             helper.make_node("Dropout", ["f"], ["d"]),
             helper.make_node("Gemm", ["d", "w_out", "b_out"], ["y"], transB=1)]
    inits = [_const("k", 2, 2, 3, 3), _const("kb", 2), _const("w_out", 5, 32),
             _const("b_out", 5), numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus")]
    base = _model(nodes, inits, [2, 4, 4], opset=OPSET_VERSIONS[0])
    model = base if opset == OPSET_VERSIONS[0] else version_converter.convert_version(base,
                                                                                     opset)
    assert model.opset_import[0].version == opset
    _agrees(model, tmp_path / f"opset{opset}.onnx")


def test_an_unlisted_operator_is_refused_by_name(tmp_path):
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="squash"),
             helper.make_node("Flatten", ["s"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w_out", "b_out"], ["y"], transB=1)]
    path = tmp_path / "sigmoid.onnx"
    onnx.save(_model(nodes, [_const("w_out", 5, 32), _const("b_out", 5)], [2, 4, 4]), path)
    with pytest.raises(OnnxImportError, match=r"'squash' \(Sigmoid\): unsupported operator "
                       r"\(certbench imports Add, BatchNormalization"):
        import_onnx(path)


def _graph_net_with(op: str) -> tuple[list, list]:
    """``x (N, 2, 4, 4) -> op -> ... -> flatten -> Gemm -> y`` for an operator only the
    graph importer keeps (the dense folding refuses it)."""
    body = {
        "AveragePool": [helper.make_node("AveragePool", ["x"], ["b"], kernel_shape=[2, 2],
                                         strides=[1, 1], pads=[1, 1, 1, 1],
                                         count_include_pad=1)],
        "GlobalAveragePool": [helper.make_node("GlobalAveragePool", ["x"], ["b"])],
        "MaxPool": [helper.make_node("MaxPool", ["x"], ["b"], kernel_shape=[2, 2],
                                     strides=[2, 2])],
        "Pad": [helper.make_node("Pad", ["x", "pads"], ["b"])],
        "Sigmoid": [helper.make_node("Sigmoid", ["x"], ["b"])],
        "Tanh": [helper.make_node("Tanh", ["x"], ["b"])],
        "Concat": [helper.make_node("Relu", ["x"], ["r"]),
                   helper.make_node("Concat", ["x", "r"], ["b"], axis=1)],
        "Squeeze": [helper.make_node("Unsqueeze", ["x", "ax"], ["u"]),
                    helper.make_node("Squeeze", ["u", "ax"], ["b"])],
        "Unsqueeze": [helper.make_node("Unsqueeze", ["x", "ax"], ["b"])],
        "LeakyRelu": [helper.make_node("Sub", ["x", "half"], ["c"]),
                      helper.make_node("LeakyRelu", ["c"], ["b"], alpha=0.2)],
        "ConvTranspose": [helper.make_node("ConvTranspose", ["x", "wt", "bt"], ["b"],
                                           strides=[2, 2], pads=[1, 1, 1, 1],
                                           output_padding=[1, 1])],
        "Slice": [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["b"])],
        "Resize": [helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="nearest",
                                    coordinate_transformation_mode="asymmetric",
                                    nearest_mode="floor"),
                   helper.make_node("Resize", ["r", "", "scales13"], ["b"], mode="nearest")],
        "Clip": [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
                 helper.make_node("Clip", ["c", "", "hi2"], ["d"]),
                 helper.make_node("Clip", ["d", "lo2"], ["b"])],
    }[op]
    inits = [numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
             numpy_helper.from_array(np.array([2], np.int64), "ax")]
    inits += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (
        ("half", 0.5), ("lo", 0.2), ("hi", 0.8), ("hi2", 0.6), ("lo2", 0.3),
        ("scales", [1, 1, 2, 2]), ("scales13", [1, 1, 1, 3]))]
    inits += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (
        ("starts", [1, 0]), ("ends", [-1, 1]), ("axes", [2, 1]))]
    inits += [_const("wt", 2, 3, 3, 3), _const("bt", 3)]
    return body + [helper.make_node("Flatten", ["b"], ["f"], axis=1),
                   helper.make_node("Gemm", ["f", "w_out", "b_out"], ["y"], transB=1)], inits


GRAPH_ONLY = ("AveragePool", "Clip", "Concat", "ConvTranspose", "GlobalAveragePool",
              "LeakyRelu", "MaxPool", "Pad", "Resize", "Sigmoid", "Slice", "Squeeze", "Tanh",
              "Unsqueeze")


def test_the_graph_only_operators_are_the_graph_importers_extra_ones():
    from models.onnx_graph import GRAPH_OPERATORS

    assert set(GRAPH_OPERATORS) - set(LIVE_OPERATORS) == set(GRAPH_ONLY)


@pytest.mark.parametrize("op", GRAPH_ONLY)
def test_every_graph_operator_is_imported_as_a_graph(op, tmp_path):
    """Each operator the graph importer adds to the dense one, in a small network loaded
    by ``load_onnx`` (a graph: the folding refuses it), equals onnxruntime."""
    from models.graph import GraphNet
    from models.onnx_network import load_onnx

    nodes, inits = _graph_net_with(op)
    features = {"AveragePool": 2 * 5 * 5, "GlobalAveragePool": 2, "MaxPool": 2 * 2 * 2,
                "Pad": 2 * 6 * 6, "Concat": 4 * 4 * 4, "ConvTranspose": 3 * 8 * 8,
                "Slice": 1 * 2 * 4, "Resize": 2 * 8 * 24}.get(op, 2 * 4 * 4)
    inits += [_const("w_out", 5, features), _const("b_out", 5)]
    onnx.save(_model(nodes, inits, [2, 4, 4]), tmp_path / "net.onnx")
    net, card = load_onnx(tmp_path / "net.onnx")
    assert isinstance(net, GraphNet), card.extra.get("folded")
    x = RNG.uniform(size=(3, 2, 4, 4)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(tmp_path / "net.onnx"),
                                           providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"x": x})[0]
    with torch.no_grad():
        ours = net.float64_copy()(torch.from_numpy(x.reshape(3, -1).astype(np.float64)))
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-4, atol=1e-4)
