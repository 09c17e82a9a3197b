"""ONNX networks as a :class:`models.graph.GraphNet`: the operators kept as operators.

For the networks that do not fold into a ReLU MLP (:mod:`models.onnx_import` refuses
them): residual additions, pooling, padding, sigmoid and tanh, and convolutions whose
dense matrix would be too large. Constants are folded as there (``Constant``,
``Shape`` of a variable tensor, ``Gather``, ``Unsqueeze``, ``Concat``, ...); a
BatchNormalization right after a convolution or a linear layer that feeds nothing else
is folded into its weights; other arithmetic with constants is an elementwise affine
node; ``Identity`` and ``Dropout`` vanish. Any other operator is a one-line
:class:`OnnxImportError` naming the node and the operator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.graph import GraphNet, Node
from models.onnx_import import (
    OnnxImportError,
    _attributes,
    _per_sample,
    _target_shape,
    constant_node,
    conv_settings,
    gemm_weight,
    read_graph,
)

GRAPH_OPERATORS = ("Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Conv",
                   "ConvTranspose", "Div", "Dropout", "Flatten", "Gemm", "GlobalAveragePool",
                   "Identity", "LeakyRelu", "MatMul", "MaxPool", "Mul", "Pad", "Relu",
                   "Reshape", "Resize", "Sigmoid", "Slice", "Squeeze", "Sub", "Tanh",
                   "Transpose", "Unsqueeze")
"""Operators on variable tensors that the graph importer keeps (one rule each)."""


class _Builder:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.nodes = [Node("input", (), shape, name="input")]
        self.tensors: dict[str, torch.Tensor] = {}

    def add(self, op: str, inputs: tuple[int, ...], shape: tuple[int, ...], name: str,
            attrs: dict | None = None, **tensors: np.ndarray | None) -> int:
        index = len(self.nodes)
        self.nodes.append(Node(op, inputs, tuple(int(s) for s in shape), attrs or {}, name))
        for key, value in tensors.items():
            if value is not None:
                self.tensors[f"n{index}_{key}"] = torch.from_numpy(
                    np.array(value, dtype=np.float64))
        return index

    def shape(self, index: int) -> tuple[int, ...]:
        return self.nodes[index].shape


def _pool_settings(attrs: dict, where: str, shape: tuple[int, ...]) -> dict:
    if len(shape) != 3:
        raise OnnxImportError(f"{where}: pooling expects a (C, H, W) tensor, got {shape}")
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or \
            int(attrs.get("ceil_mode", 0)):
        raise OnnxImportError(f"{where}: auto_pad and ceil_mode are not supported")
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise OnnxImportError(f"{where}: dilated pooling is not supported")
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        raise OnnxImportError(f"{where}: asymmetric pads {pads} are not supported")
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    stride = tuple(int(s) for s in attrs.get("strides", [1, 1]))
    return {"kernel": kernel, "stride": stride, "padding": (int(pads[0]), int(pads[1]))}


def _pooled(shape: tuple[int, ...], a: dict) -> tuple[int, ...]:
    return (shape[0],) + tuple((shape[i + 1] + 2 * a["padding"][i] - a["kernel"][i])
                               // a["stride"][i] + 1 for i in range(2))


def import_onnx_graph(path: Path) -> tuple[GraphNet, dict]:
    """The ONNX network at ``path`` as a :class:`GraphNet` (float32 parameters), and its
    facts (``input_shape``, ``nodes``, ``operators``)."""
    path = Path(path)
    graph, consts, input_name, shape = read_graph(path)
    build = _Builder(shape)
    live: dict[str, int] = {input_name: 0}
    uses: dict[str, int] = {}                      # how many nodes read each tensor
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for value in graph.output:
        uses[value.name] = uses.get(value.name, 0) + 1
    operators: set[str] = set()
    for number, node in enumerate(graph.node):
        op, where = node.op_type, f"{path}: node {node.name or number!r} ({node.op_type})"
        operators.add(op)
        attrs = _attributes(node)
        names = list(node.input)
        variable = [n for n in names if n in live]
        if constant_node(node, attrs, consts,
                         build.shape(live[variable[0]]) if variable else None, where):
            continue
        if op not in GRAPH_OPERATORS:
            raise OnnxImportError(f"{where}: unsupported operator (certbench's graph "
                                  f"importer takes {', '.join(GRAPH_OPERATORS)})")
        other = [consts.get(n) for n in names if n and n not in live]
        if any(o is None for o in other):
            raise OnnxImportError(f"{where}: an input is neither computed nor an initializer")
        x = live[variable[0]]
        shape_x = build.shape(x)
        label = node.name or f"{op}_{number}"
        if len(variable) > 1:
            out = _join(build, op, [live[n] for n in variable], names, live, attrs, other,
                        where, label)
        elif op in ("Identity", "Dropout"):
            out = x
        elif op in ("Relu", "Sigmoid", "Tanh"):
            out = build.add(op.lower(), (x,), shape_x, label)
        elif op == "Flatten":
            if int(attrs.get("axis", 1)) != 1:
                raise OnnxImportError(f"{where}: only Flatten with axis 1 is supported")
            out = build.add("reshape", (x,), (int(np.prod(shape_x)),), label)
        elif op == "Reshape":
            target = _target_shape(other[0], shape_x, where)
            if target[0] != 1:
                raise OnnxImportError(f"{where}: a Reshape that moves the batch dimension")
            out = build.add("reshape", (x,), target[1:], label)
        elif op == "LeakyRelu":
            out = _leaky_relu(build, x, float(attrs.get("alpha", 0.01)), label)
        elif op == "Clip":
            ends = [attrs.get("min"), attrs.get("max")] if "min" in attrs or \
                "max" in attrs else [consts.get(n) if n else None for n in names[1:3]]
            ends += [None] * (2 - len(ends))
            out = _clip(build, x, *(None if e is None else float(np.asarray(e).reshape(-1)[0])
                                    for e in ends[:2]), label)
        elif op in ("Squeeze", "Unsqueeze"):
            axes = attrs.get("axes") if "axes" in attrs else (
                np.asarray(other[0]).reshape(-1).tolist() if other else None)
            out = build.add("reshape", (x,), _squeezed(op, shape_x, axes, where), label)
        elif op == "Transpose":
            perm = list(attrs.get("perm", range(len(shape_x) + 1)[::-1]))
            if perm[0] != 0:
                raise OnnxImportError(f"{where}: a Transpose that moves the batch dimension")
            axes = [p - 1 for p in perm[1:]]
            out = build.add("transpose", (x,), tuple(shape_x[p] for p in axes), label,
                            {"perm": axes})
        elif op in ("Add", "Sub", "Mul", "Div"):
            const = _per_sample(other[0], shape_x, where)
            first = names[0] in live
            scale, offset = np.ones(1), np.zeros(1)
            if op == "Add":
                offset = const
            elif op == "Sub":
                scale, offset = (np.ones(1), -const) if first else (-np.ones(1), const)
            elif op == "Mul":
                scale = const
            else:
                if not first:
                    raise OnnxImportError(f"{where}: division by a variable tensor")
                scale = 1.0 / const
            out = _affine(build, x, np.asarray(scale, np.float64),
                          np.asarray(offset, np.float64), label,
                          alone=_readers(live, uses, x) == 1)
        elif op in ("Gemm", "MatMul"):
            if len(shape_x) != 1:
                raise OnnxImportError(f"{where}: expects a flat (N, n) input, got per-sample "
                                      f"shape {shape_x}")
            if names[0] not in live:
                raise OnnxImportError(f"{where}: the variable tensor must be the first operand")
            weight, bias = gemm_weight(op, attrs, other, shape_x[0], where)
            out = build.add("linear", (x,), (weight.shape[1],), label, weight=weight.T,
                            bias=bias)
        elif op == "Conv":
            out = _conv(build, x, other, attrs, where, label)
        elif op == "ConvTranspose":
            out = _deconv(build, x, other, attrs, where, label)
        elif op == "Slice":
            out = _slice(build, x, other, attrs, where, label)
        elif op == "Resize":
            out = _upsample(build, x, other, attrs, where, label)
        elif op == "BatchNormalization":
            out = _batch_norm(build, x, other, attrs, label,
                              alone=_readers(live, uses, x) == 1)
        elif op == "Pad":
            out = _pad(build, x, other, attrs, where, label)
        elif op in ("AveragePool", "MaxPool"):
            settings = _pool_settings(attrs, where, shape_x)
            if op == "AveragePool" and settings["padding"] != (0, 0) and \
                    not int(attrs.get("count_include_pad", 0)):
                raise OnnxImportError(f"{where}: padded average pooling that does not count "
                                      "the padding is not supported")
            out = build.add("avgpool" if op == "AveragePool" else "maxpool", (x,),
                            _pooled(shape_x, settings), label, settings)
        else:                                   # GlobalAveragePool
            if len(shape_x) != 3:
                raise OnnxImportError(f"{where}: expects a (C, H, W) tensor, got {shape_x}")
            settings = {"kernel": shape_x[1:], "stride": (1, 1), "padding": (0, 0)}
            out = build.add("avgpool", (x,), (shape_x[0], 1, 1), label, settings)
        live[node.output[0]] = out
    if len(graph.output) != 1 or graph.output[0].name not in live:
        raise OnnxImportError(f"{path}: the graph's output is not computed from its input "
                              "by the supported operators")
    last = live[graph.output[0].name]
    if len(build.shape(last)) != 1:
        last = build.add("reshape", (last,), (int(np.prod(build.shape(last))),), "output")
    nodes, tensors = _keep_used(build, last)
    net = GraphNet(nodes, tensors)
    for parameter in net.parameters():
        if not torch.isfinite(parameter).all():
            raise OnnxImportError(f"{path}: the network has NaN or infinite weights")
    return net.eval(), {"input_shape": list(shape), "nodes": len(graph.node),
                        "operators": sorted(operators)}


def _scaled(build: _Builder, x: int, scale: float, offset: float, label: str) -> int:
    """A new affine node ``scale * v_x + offset`` (scalars; never merged into ``x``)."""
    return build.add("affine", (x,), build.shape(x), label, scale=np.array([scale]),
                     offset=np.array([offset]))


def _leaky_relu(build: _Builder, x: int, alpha: float, label: str) -> int:
    """``LeakyRelu(v) = alpha v + (1 - alpha) relu(v)``, in operators that have bound rules
    (the ReLU is split like any other)."""
    shape = build.shape(x)
    kept = _scaled(build, build.add("relu", (x,), shape, f"{label}.relu"), 1.0 - alpha, 0.0,
                   f"{label}.positive")
    return build.add("add", (_scaled(build, x, alpha, 0.0, f"{label}.linear"), kept), shape,
                     label)


def _clip(build: _Builder, x: int, low: float | None, high: float | None,
          label: str) -> int:
    """``Clip(v) = low + relu(v - low) - relu(v - high)`` (``v - relu(v - high)`` without
    a lower end, ``low + relu(v - low)`` without an upper one), in operators that have bound
    rules."""
    shape = build.shape(x)
    if low is not None and high is not None and low > high:
        raise OnnxImportError(f"{label}: Clip with min {low} above max {high}")
    cut = None
    if high is not None:
        cut = _scaled(build, build.add("relu", (_scaled(build, x, 1.0, -high,
                                                        f"{label}.above"),), shape,
                                       f"{label}.relu_above"), -1.0, 0.0, f"{label}.cut")
    if low is None:
        return x if cut is None else build.add("add", (x, cut), shape, label)
    floor = _scaled(build, build.add("relu", (_scaled(build, x, 1.0, -low, f"{label}.below"),),
                                     shape, f"{label}.relu_below"), 1.0, low, f"{label}.floor")
    return floor if cut is None else build.add("add", (floor, cut), shape, label)


def _squeezed(op: str, shape: tuple, axes: list | None, where: str) -> tuple[int, ...]:
    """The per-sample shape after Squeeze/Unsqueeze of ``(N, *shape)`` along ``axes``
    (ONNX's, counting the batch dimension; negative from the end); the batch axis stays."""
    full = [1, *shape]
    if op == "Squeeze":
        rank = len(full)
        chosen = [i for i, d in enumerate(full) if d == 1 and i > 0] if axes is None else \
            sorted({int(a) % rank for a in axes})
        if 0 in chosen or any(full[a] != 1 for a in chosen):
            raise OnnxImportError(f"{where}: squeezes the batch dimension or a dimension "
                                  "larger than 1")
        return tuple(d for i, d in enumerate(full) if i not in chosen)[1:]
    if axes is None:
        raise OnnxImportError(f"{where}: Unsqueeze without axes")
    rank = len(full) + len(axes)
    chosen = sorted(int(a) % rank for a in axes)
    if 0 in chosen:
        raise OnnxImportError(f"{where}: an Unsqueeze before the batch dimension")
    for a in chosen:
        full.insert(a, 1)
    return tuple(full[1:])


def _conv(build: _Builder, x: int, other: list, attrs: dict, where: str, label: str) -> int:
    shape = build.shape(x)
    weight = np.asarray(other[0], dtype=np.float64)
    settings = conv_settings(weight, shape, attrs, where)
    bias = np.asarray(other[1], np.float64) if len(other) > 1 else np.zeros(weight.shape[0])
    out_shape = [weight.shape[0]]
    for i in range(2):
        span = settings["dilation"][i] * (weight.shape[2 + i] - 1) + 1
        out_shape.append((shape[1 + i] + 2 * settings["padding"][i] - span)
                         // settings["stride"][i] + 1)
    return build.add("conv", (x,), tuple(out_shape), label, settings, weight=weight, bias=bias)


def _deconv(build: _Builder, x: int, other: list, attrs: dict, where: str, label: str
            ) -> int:
    """A 2-D transposed convolution (``ConvTranspose``; symmetric pads, no
    ``output_shape``)."""
    shape = build.shape(x)
    weight = np.asarray(other[0], dtype=np.float64)
    if "output_shape" in attrs:
        raise OnnxImportError(f"{where}: ConvTranspose with output_shape is not supported; "
                              "export pads and output_padding")
    settings = conv_settings(weight, shape, attrs, where)
    settings["output_padding"] = tuple(int(p) for p in attrs.get("output_padding", [0, 0]))
    if weight.shape[0] != shape[0]:
        raise OnnxImportError(f"{where}: kernel {weight.shape} on {shape[0]} channels")
    channels = weight.shape[1] * settings["groups"]
    bias = np.asarray(other[1], np.float64) if len(other) > 1 else np.zeros(channels)
    out_shape = [channels]
    for i in range(2):
        if settings["output_padding"][i] >= max(settings["stride"][i],
                                                settings["dilation"][i]):
            raise OnnxImportError(f"{where}: output_padding {settings['output_padding']} "
                                  "not below the stride or dilation")
        out_shape.append((shape[1 + i] - 1) * settings["stride"][i]
                         - 2 * settings["padding"][i]
                         + settings["dilation"][i] * (weight.shape[2 + i] - 1)
                         + settings["output_padding"][i] + 1)
    return build.add("deconv", (x,), tuple(out_shape), label, settings, weight=weight,
                     bias=bias)


def _slice(build: _Builder, x: int, other: list, attrs: dict, where: str, label: str) -> int:
    """``Slice`` with step 1 along per-sample axes: one ``slice`` node per axis."""
    if "starts" in attrs:                                  # opset < 10: attributes
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts, ends = other[0], other[1]
        axes = other[2] if len(other) > 2 else None
        steps = other[3] if len(other) > 3 else None
    starts = [int(v) for v in np.asarray(starts).reshape(-1)]
    ends = [int(v) for v in np.asarray(ends).reshape(-1)]
    rank = len(build.shape(x)) + 1
    axes = list(range(len(starts))) if axes is None else \
        [int(v) % rank for v in np.asarray(axes).reshape(-1)]
    if steps is not None and any(int(v) != 1 for v in np.asarray(steps).reshape(-1)):
        raise OnnxImportError(f"{where}: only Slice with step 1 is supported")
    out = x
    for axis, start, end in zip(axes, starts, ends):
        size = build.shape(out)[axis - 1] if axis else 0
        if axis == 0:
            raise OnnxImportError(f"{where}: a Slice of the batch dimension")
        start = min(max(start + size if start < 0 else start, 0), size)
        end = min(max(end + size if end < 0 else end, 0), size)
        if end <= start:
            raise OnnxImportError(f"{where}: an empty Slice")
        if (start, end) == (0, size):
            continue
        shape = list(build.shape(out))
        shape[axis - 1] = end - start
        out = build.add("slice", (out,), tuple(shape), f"{label}.axis{axis}",
                        {"axis": axis - 1, "start": start, "end": end})
    return out


def _upsample(build: _Builder, x: int, other: list, attrs: dict, where: str, label: str
              ) -> int:
    """``Resize`` in ``nearest`` mode by constant integer ``scales`` of the spatial axes
    (not ``sizes``, which would fix the batch size) of a ``(C, H, W)`` tensor, where it
    repeats each value in a block (coordinates
    ``asymmetric`` with ``floor``, or ``half_pixel``/``pytorch_half_pixel`` with a
    rounding nearest mode)."""
    shape = build.shape(x)
    text = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    mode = text.get("mode", "nearest")
    coordinates = text.get("coordinate_transformation_mode", "half_pixel")
    nearest = text.get("nearest_mode", "round_prefer_floor")
    repeats = (coordinates == "asymmetric" and nearest == "floor") or (
        coordinates in ("half_pixel", "pytorch_half_pixel")
        and nearest in ("round_prefer_floor", "round_prefer_ceil"))
    if mode != "nearest" or not repeats or len(shape) != 3:
        raise OnnxImportError(f"{where}: only nearest Resize of a (N, C, H, W) tensor by "
                              "integer factors (asymmetric/floor or half_pixel/round) is "
                              f"supported, got mode {mode}, {coordinates}, {nearest}")
    given = [np.asarray(o).reshape(-1) for o in other if o is not None and np.asarray(o).size]
    scales = next((g for g in given if g.dtype.kind == "f" and len(g) == 4), None)
    if scales is None or float(scales[0]) != 1 or float(scales[1]) != 1 or \
            any(float(f) != round(float(f)) or float(f) < 1 for f in scales[2:]):
        raise OnnxImportError(f"{where}: only constant integer spatial Resize scales are "
                              f"supported, got {None if scales is None else scales.tolist()}")
    factor = (int(round(float(scales[2]))), int(round(float(scales[3]))))
    return build.add("upsample", (x,), (shape[0], shape[1] * factor[0],
                                        shape[2] * factor[1]), label, {"scale": factor})


def _join(build: _Builder, op: str, sources: list[int], names: list[str],
          live: dict[str, int], attrs: dict, other: list, where: str, label: str) -> int:
    """An operator on several variable tensors: ``Add`` or ``Sub`` of two (a residual
    connection; ``a - b`` as ``a + (-1) b``), or ``Concat`` along the channels."""
    if op == "Concat" and not other:
        shapes = [build.shape(i) for i in sources]
        axis = int(attrs.get("axis", 1))
        if axis != 1 or any(len(s) != len(shapes[0]) or s[1:] != shapes[0][1:]
                            for s in shapes):
            raise OnnxImportError(f"{where}: only a Concat along the channels (axis 1) of "
                                  f"equal spatial shapes is supported, got axis {axis} and "
                                  f"{shapes}")
        return build.add("concat", tuple(sources), (sum(s[0] for s in shapes),
                                                    *shapes[0][1:]), label)
    if op not in ("Add", "Sub") or len(sources) != 2 or other:
        raise OnnxImportError(f"{where}: combines variable tensors; only Add or Sub of two "
                              "and Concat along the channels are supported")
    a, b = sources
    if build.shape(a) != build.shape(b):
        raise OnnxImportError(f"{where}: combines shapes {build.shape(a)} and "
                              f"{build.shape(b)}")
    if op == "Sub":
        b = _scaled(build, b, -1.0, 0.0, f"{label}.negated")
    return build.add("add", (a, b), build.shape(a), label)


def _readers(live: dict[str, int], uses: dict[str, int], x: int) -> int:
    """How many ONNX nodes (and graph outputs) read node ``x``, through every tensor name
    that stands for it (an ``Identity`` adds a name and a reader)."""
    return sum(uses.get(name, 0) for name, index in live.items() if index == x)


def _affine(build: _Builder, x: int, scale: np.ndarray, offset: np.ndarray, label: str,
            alone: bool) -> int:
    """``scale * v_x + offset``, merged into ``x`` when it is an affine node that nothing
    else reads (an exported ``Mul`` then ``Add`` reads back as one node)."""
    before = build.nodes[x]
    if before.op == "affine" and alone:
        old_scale = build.tensors[f"n{x}_scale"].numpy()
        old_offset = build.tensors[f"n{x}_offset"].numpy()
        build.tensors[f"n{x}_scale"] = torch.from_numpy(np.array(old_scale * scale))
        build.tensors[f"n{x}_offset"] = torch.from_numpy(np.array(old_offset * scale + offset))
        build.nodes[x].name += f"+{label}"
        return x
    return build.add("affine", (x,), build.shape(x), label, scale=scale, offset=offset)


def _batch_norm(build: _Builder, x: int, other: list, attrs: dict, label: str,
                alone: bool) -> int:
    """Folded into the conv or linear node before it when nothing else reads that node's
    output; else an affine node."""
    scale, beta, mean, var = (np.asarray(o, np.float64) for o in other[:4])
    factor = scale / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    shift = beta - mean * factor
    before = build.nodes[x]
    if before.op in ("conv", "linear") and alone:
        weight = build.tensors[f"n{x}_weight"].numpy()
        bias = build.tensors[f"n{x}_bias"].numpy()
        if before.op == "conv" or len(before.shape) == 1:
            build.tensors[f"n{x}_weight"] = torch.from_numpy(
                weight * factor.reshape(-1, *([1] * (weight.ndim - 1))))
            build.tensors[f"n{x}_bias"] = torch.from_numpy(bias * factor + shift)
            build.nodes[x].name += f"+{label}"
            return x
    extra = (1,) * (len(build.shape(x)) - 1)
    return _affine(build, x, factor.reshape(-1, *extra), shift.reshape(-1, *extra), label,
                   alone)


def _pad(build: _Builder, x: int, other: list, attrs: dict, where: str, label: str) -> int:
    shape = build.shape(x)
    mode = attrs.get("mode", b"constant")
    if mode not in (b"constant", "constant"):
        raise OnnxImportError(f"{where}: only constant padding is supported, got {mode!r}")
    pads = [int(p) for p in (attrs["pads"] if "pads" in attrs else other[0])]
    value = float(np.asarray(other[1]).reshape(-1)[0]) if len(other) > 1 and \
        other[1] is not None and np.asarray(other[1]).size else float(attrs.get("value", 0.0))
    if len(shape) != 3 or len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or \
            any(p < 0 for p in pads) or value != 0.0:
        raise OnnxImportError(f"{where}: only zero padding of the spatial axes of a "
                              f"(N, C, H, W) tensor is supported, got pads {pads}, "
                              f"value {value}")
    top, left, bottom, right = pads[2], pads[3], pads[6], pads[7]
    return build.add("pad", (x,), (shape[0], shape[1] + top + bottom,
                                   shape[2] + left + right), label,
                     {"pads": (top, left, bottom, right)})


def _keep_used(build: _Builder, last: int) -> tuple[list[Node], dict[str, torch.Tensor]]:
    """The nodes the output depends on, renumbered in order, with their tensors."""
    used, stack = set(), [last]
    while stack:
        index = stack.pop()
        if index not in used:
            used.add(index)
            stack.extend(build.nodes[index].inputs)
    order = sorted(used)
    new = {old: position for position, old in enumerate(order)}
    nodes, tensors = [], {}
    for old in order:
        node = build.nodes[old]
        nodes.append(Node(node.op, tuple(new[i] for i in node.inputs), node.shape,
                          node.attrs, node.name))
        for key, value in build.tensors.items():
            if key.startswith(f"n{old}_"):
                tensors[f"n{new[old]}_{key.split('_', 1)[1]}"] = value.float()
    return nodes, tensors
