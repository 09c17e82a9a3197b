"""A :class:`models.graph.GraphNet` written as ONNX (opset 13, float32 weights, a
symbolic batch dimension), one ONNX operator per node, so any tool reads the same
network that certbench bounds: ``linear`` as Gemm, ``conv`` as Conv, ``deconv`` as
ConvTranspose, ``affine`` as Mul then Add, ``add``, ``relu``, ``sigmoid``, ``tanh``,
``reshape`` (Reshape to ``(-1, *shape)``), ``transpose``, ``pad`` (Pad), ``slice``
(Slice), ``upsample`` (nearest Resize, asymmetric/floor), ``avgpool`` (AveragePool
counting the padding), ``maxpool``. :func:`models.onnx_graph.import_onnx_graph` reads it back
(``tests/test_graph_bounds.py`` checks the round trip)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.files import atomic_write
from models.graph import GraphNet


def export_graph_onnx(net: GraphNet, path: Path) -> Path:
    """Write ``net`` to ``path`` as ONNX; returns the path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    names = ["input"]

    def const(name: str, value: np.ndarray, dtype=np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def tensor(index: int, key: str) -> np.ndarray:
        value = net.tensor(index, key)
        assert value is not None
        return value.detach().double().numpy()

    last = len(net.nodes) - 1
    for index in range(1, len(net.nodes)):
        node = net.nodes[index]
        a = node.attrs
        out = "output" if index == last else f"n{index}"
        ins = [names[i] for i in node.inputs]
        if node.op == "linear":
            nodes.append(helper.make_node("Gemm", [ins[0], const(f"n{index}.weight",
                                                                 tensor(index, "weight")),
                                                   const(f"n{index}.bias", tensor(index, "bias"))],
                                          [out], transB=1))
        elif node.op in ("conv", "deconv"):
            extra = {"output_padding": list(a["output_padding"])} if node.op == "deconv" \
                else {}
            nodes.append(helper.make_node(
                "Conv" if node.op == "conv" else "ConvTranspose",
                [ins[0], const(f"n{index}.weight", tensor(index, "weight")),
                 const(f"n{index}.bias", tensor(index, "bias"))], [out],
                strides=list(a["stride"]), pads=[a["padding"][0], a["padding"][1]] * 2,
                dilations=list(a["dilation"]), group=a["groups"], **extra))
        elif node.op == "slice":
            nodes.append(helper.make_node(
                "Slice", [ins[0], const(f"n{index}.starts", np.array([a["start"]]), np.int64),
                          const(f"n{index}.ends", np.array([a["end"]]), np.int64),
                          const(f"n{index}.axes", np.array([a["axis"] + 1]), np.int64)],
                [out]))
        elif node.op == "upsample":
            scales = const(f"n{index}.scales", np.array([1, 1, *a["scale"]]), np.float32)
            nodes.append(helper.make_node("Resize", [ins[0], "", scales], [out], mode="nearest",
                                          coordinate_transformation_mode="asymmetric",
                                          nearest_mode="floor"))
        elif node.op == "affine":
            scaled = f"n{index}.scaled"
            nodes.append(helper.make_node("Mul", [ins[0], const(f"n{index}.scale",
                                                                tensor(index, "scale"))],
                                          [scaled]))
            nodes.append(helper.make_node("Add", [scaled, const(f"n{index}.offset",
                                                               tensor(index, "offset"))],
                                          [out]))
        elif node.op == "add":
            nodes.append(helper.make_node("Add", ins, [out]))
        elif node.op == "concat":
            nodes.append(helper.make_node("Concat", ins, [out], axis=1))
        elif node.op in ("relu", "sigmoid", "tanh"):
            nodes.append(helper.make_node(node.op.capitalize(), ins, [out]))
        elif node.op == "reshape":
            target = const(f"n{index}.shape", np.array([-1, *node.shape]), np.int64)
            nodes.append(helper.make_node("Reshape", [ins[0], target], [out]))
        elif node.op == "transpose":
            nodes.append(helper.make_node("Transpose", ins, [out],
                                          perm=[0, *[p + 1 for p in a["perm"]]]))
        elif node.op == "pad":
            top, left, bottom, right = a["pads"]
            pads = const(f"n{index}.pads", np.array([0, 0, top, left, 0, 0, bottom, right]),
                         np.int64)
            nodes.append(helper.make_node("Pad", [ins[0], pads], [out], mode="constant"))
        elif node.op in ("avgpool", "maxpool"):
            pads = [a["padding"][0], a["padding"][1]] * 2
            extra = {"count_include_pad": 1} if node.op == "avgpool" else {}
            nodes.append(helper.make_node(
                "AveragePool" if node.op == "avgpool" else "MaxPool", ins, [out],
                kernel_shape=list(a["kernel"]), strides=list(a["stride"]), pads=pads, **extra))
        else:
            raise ValueError(f"node {index}: cannot export {node.op!r}")
        names.append(out)
    graph = helper.make_graph(
        nodes, "certbench-graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *net.input_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", net.num_classes])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="certbench")
    onnx.checker.check_model(model)
    payload = model.SerializeToString()
    return atomic_write(Path(path), lambda handle: handle.write(payload))
