"""ONNX networks as :class:`models.MLP`: every affine operator compiled into dense layers.

How a foreign network reaches the verifiers (the design decision): the importer follows
the graph from its input to its output and keeps the *live* tensor as an affine function
``A z + c`` of the last ReLU's output (or of the input). Every affine operator (Gemm,
MatMul, Add/Sub/Mul/Div by constants, Conv, BatchNormalization, Flatten, Reshape,
Transpose, Identity, Dropout) is folded into ``(A, c)`` in float64; each Relu closes a
layer. The result is an ordinary ``MLP`` (alternating dense layers and ReLUs), so every
verifier, attack and the harness work on it unchanged, and its outputs equal
onnxruntime's up to float32 rounding.

Memory cost: a convolution becomes a dense matrix of ``out_size x in_size`` entries
(``C_out H_out W_out x C_in H_in W_in``): 784 -> 16x14x14 is 2.5 M entries (10 MB in
float32). Compiling a layer larger than :data:`MAX_DENSE_ENTRIES` is refused with a
one-line error naming the node, rather than allocated.

Only sequential networks are supported: an operator combining two variable tensors
(a residual Add, a Concat of branches) is refused, as is any operator outside the set
above (one line naming the node and the operator). Operators whose inputs are all
constants (Shape of the live tensor, Gather, Unsqueeze, Squeeze, Concat, Cast, Constant)
are evaluated, as exporters use them to compute Reshape targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.card import CERTIFICATE_PREFIX, ModelError
from models.mlp import MLP

MAX_DENSE_ENTRIES = 200_000_000       # 1.6 GB in float64 while compiling

# The operators the importer understands, the one list: the error for any other names
# them, and ``certbench-solver supports --onnx-operators`` prints them.
LIVE_OPERATORS = ("Add", "BatchNormalization", "Conv", "Div", "Dropout", "Flatten", "Gemm",
                  "Identity", "MatMul", "Mul", "Relu", "Reshape", "Sub", "Transpose")
"""Operators applied to the variable tensor (each folded into the affine map or, for
``Relu``, closing a layer)."""
CONSTANT_OPERATORS = ("Add", "Cast", "Concat", "Constant", "Div", "Gather", "Identity",
                      "Mul", "Reshape", "Shape", "Squeeze", "Sub", "Unsqueeze")
"""Operators evaluated when their inputs are constants (``Shape`` of the variable tensor
too): exporters compute Reshape targets with them."""
OPSET_VERSIONS = (9, 21)
"""The default-domain opsets whose spellings of these operators the importer reads (the
attribute and input forms of Squeeze/Unsqueeze axes, Dropout's ratio input); each is
imported in ``tests/test_onnx_operators.py``."""


@dataclass
class Live:
    """The variable tensor: ``value = A z + c`` per sample, of per-sample ``shape``."""

    a: np.ndarray              # (size, source)
    c: np.ndarray              # (size,)
    shape: tuple[int, ...]     # per sample, C order; prod(shape) == size

    def affine(self, matrix: np.ndarray, offset: np.ndarray, shape: tuple[int, ...]) -> "Live":
        return Live(matrix @ self.a, matrix @ self.c + offset, shape)

    def elementwise(self, scale: np.ndarray, offset: np.ndarray) -> "Live":
        """``scale * value + offset`` with both broadcast to the per-sample shape."""
        s = np.broadcast_to(scale, self.shape).reshape(-1)
        o = np.broadcast_to(offset, self.shape).reshape(-1)
        return Live(s[:, None] * self.a, s * self.c + o, self.shape)


class OnnxImportError(ModelError):
    """The ONNX file cannot be imported (one line naming the node and the operator)."""


def _per_sample(const: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A constant operand broadcast against ``(1, *shape)`` or ``shape``, batch dim dropped."""
    value = np.asarray(const, dtype=np.float64)
    if value.ndim == len(shape) + 1:
        if value.shape[0] != 1:
            raise OnnxImportError(f"{where}: a constant with batch dimension {value.shape[0]}")
        value = value[0]
    try:
        np.broadcast_to(value, shape)
    except ValueError:
        raise OnnxImportError(f"{where}: constant of shape {value.shape} does not broadcast "
                              f"to the tensor's shape {shape}") from None
    return value


def _attributes(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def conv_settings(weight: np.ndarray, shape: tuple[int, ...], attrs: dict, where: str
                  ) -> dict:
    """A 2-D convolution's ``stride``, ``padding`` (symmetric ``(ph, pw)``),
    ``dilation`` and ``groups`` on a ``(C, H, W)`` tensor (anything else refused)."""
    if len(shape) != 3 or weight.ndim != 4:
        raise OnnxImportError(f"{where}: only 2-D convolutions of (C, H, W) tensors are "
                              f"supported, got input {shape} and kernel {weight.shape}")
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise OnnxImportError(f"{where}: auto_pad is not supported; export explicit pads")
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        raise OnnxImportError(f"{where}: asymmetric pads {pads} are not supported")
    return {"stride": tuple(int(s) for s in attrs.get("strides", [1, 1])),
            "padding": (int(pads[0]), int(pads[1])),
            "dilation": tuple(int(d) for d in attrs.get("dilations", [1, 1])),
            "groups": int(attrs.get("group", 1))}


def _conv_matrix(weight: np.ndarray, bias: np.ndarray | None, shape: tuple[int, ...],
                 attrs: dict, where: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """The dense ``(out, in)`` matrix and offset of a 2-D convolution on ``shape (C, H, W)``."""
    settings = conv_settings(weight, shape, attrs, where)
    strides, dilations, groups = settings["stride"], settings["dilation"], settings["groups"]
    pads = [settings["padding"][0], settings["padding"][1]] * 2
    size = int(np.prod(shape))
    w = torch.from_numpy(np.asarray(weight, dtype=np.float64))
    with torch.no_grad():
        probe = torch.nn.functional.conv2d(torch.zeros((1, *shape), dtype=torch.float64), w,
                                           None, strides, (pads[0], pads[1]), dilations, groups)
        out_shape = tuple(probe.shape[1:])
        if size * int(np.prod(out_shape)) > MAX_DENSE_ENTRIES:
            raise OnnxImportError(f"{where}: compiling this convolution to a dense layer "
                                  f"needs {size} x {int(np.prod(out_shape))} entries, above "
                                  f"the limit of {MAX_DENSE_ENTRIES}")
        basis = torch.eye(size, dtype=torch.float64).reshape(size, *shape)
        columns = torch.nn.functional.conv2d(basis, w, None, strides, (pads[0], pads[1]),
                                             dilations, groups)
    matrix = columns.reshape(size, -1).T.numpy()
    offset = np.zeros(out_shape) if bias is None else \
        np.broadcast_to(np.asarray(bias, np.float64)[:, None, None], out_shape)
    return matrix, np.asarray(offset).reshape(-1), out_shape


def _fold_constant(op: str, inputs: list[np.ndarray], attrs: dict, where: str) -> np.ndarray:
    """Evaluate an operator whose inputs are all constants."""
    if op == "Gather":
        return np.take(inputs[0], inputs[1].astype(np.int64), axis=int(attrs.get("axis", 0)))
    if op == "Unsqueeze":
        axes = attrs.get("axes", inputs[1].tolist() if len(inputs) > 1 else [])
        out = inputs[0]
        for axis in sorted(int(a) for a in axes):
            out = np.expand_dims(out, axis)
        return out
    if op == "Squeeze":
        axes = attrs.get("axes", inputs[1].tolist() if len(inputs) > 1 else None)
        return np.squeeze(inputs[0], axis=None if axes is None else tuple(int(a) for a in axes))
    if op == "Concat":
        return np.concatenate([np.atleast_1d(v) for v in inputs], axis=int(attrs["axis"]))
    if op in ("Cast", "Identity"):
        return inputs[0]
    if op in ("Add", "Sub", "Mul", "Div"):
        fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op]
        return fn(inputs[0], inputs[1])
    if op == "Reshape":
        return inputs[0].reshape(_target_shape(inputs[1], inputs[0].shape, where, batch=False))
    raise OnnxImportError(f"{where}: unsupported operator on constants (certbench evaluates "
                          f"{', '.join(CONSTANT_OPERATORS)})")


def _target_shape(spec: np.ndarray, current: tuple[int, ...], where: str,
                  batch: bool = True) -> tuple[int, ...]:
    """A Reshape target (with ``0`` = copy, ``-1`` = infer) as a shape."""
    full = ((1, *current) if batch else tuple(current))
    dims = [int(d) for d in np.asarray(spec).reshape(-1)]
    dims = [full[i] if d == 0 and i < len(full) else d for i, d in enumerate(dims)]
    total = int(np.prod(full))
    if dims.count(-1) > 1:
        raise OnnxImportError(f"{where}: Reshape target {dims} has more than one -1")
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1]))
        dims[dims.index(-1)] = total // max(known, 1)
    if int(np.prod(dims)) != total:
        raise OnnxImportError(f"{where}: cannot reshape {full} to {dims}")
    return tuple(dims)


def read_graph(path: Path) -> tuple[object, dict[str, np.ndarray], str, tuple[int, ...]]:
    """The ONNX graph at ``path``, its initializers as arrays, the name of its one input
    and that input's per-sample shape (a batch dimension, then fixed sizes)."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, OSError, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OnnxImportError(f"{path}: not a readable ONNX model ({reason})") from None
    graph = model.graph
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1:
        raise OnnxImportError(f"{path}: expected one input tensor, found {len(inputs)}")
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inputs[0].type.tensor_type.shape.dim]
    if not dims or any(d is None or d < 1 for d in dims[1:]) or (dims[0] not in (None, 1)
                                                                and len(dims) > 1):
        raise OnnxImportError(f"{path}: input {inputs[0].name!r} has shape {dims}; expected "
                              "a batch dimension then fixed sizes")
    shape = tuple(int(d) for d in dims[1:]) if len(dims) > 1 else (int(dims[0]),)
    return graph, consts, inputs[0].name, shape


def constant_node(node, attrs: dict, consts: dict[str, np.ndarray],
                  variable_shape: tuple[int, ...] | None, where: str) -> bool:
    """Evaluate ``node`` into ``consts`` if it computes a constant (``Constant``, a
    ``Shape`` of the variable tensor of per-sample shape ``variable_shape``, or any
    operator of :data:`CONSTANT_OPERATORS` on constants); ``False`` if it takes the
    variable tensor."""
    from onnx import numpy_helper

    op = node.op_type
    if op == "Constant":
        consts[node.output[0]] = numpy_helper.to_array(attrs["value"]) \
            if "value" in attrs else np.asarray(attrs.get("value_float",
                                                          attrs.get("value_floats")))
        return True
    if op == "Shape" and variable_shape is not None:
        consts[node.output[0]] = np.asarray((1, *variable_shape), dtype=np.int64)
        return True
    if variable_shape is not None:
        return False
    try:
        consts[node.output[0]] = _fold_constant(op, [consts[n] for n in node.input if n],
                                                attrs, where)
    except KeyError as exc:
        raise OnnxImportError(f"{where}: input {exc} is neither computed nor an "
                              "initializer") from None
    return True


def gemm_weight(op: str, attrs: dict, other: list, width: int, where: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(W (in, out), b (out,))`` float64 of a Gemm or MatMul on a flat input of
    ``width``."""
    weight = np.asarray(other[0], dtype=np.float64)
    if op == "Gemm":
        if int(attrs.get("transA", 0)):
            raise OnnxImportError(f"{where}: transA is not supported")
        weight = weight.T if int(attrs.get("transB", 0)) else weight
        weight = float(attrs.get("alpha", 1.0)) * weight
        bias = (float(attrs.get("beta", 1.0)) * np.asarray(other[1], np.float64)
                if len(other) > 1 else np.zeros(weight.shape[1]))
    else:
        bias = np.zeros(weight.shape[-1])
    if weight.ndim != 2 or weight.shape[0] != width:
        raise OnnxImportError(f"{where}: weight of shape {weight.shape} does not fit "
                              f"an input of {width}")
    return weight, np.broadcast_to(bias.reshape(-1) if bias.size > 1 else bias,
                                   (weight.shape[1],))


def import_onnx(path: Path) -> tuple[MLP, dict]:
    """Compile the ONNX network at ``path`` into an ``MLP``; also return its facts
    (``input_shape`` per sample, ``nodes``, ``operators``)."""

    path = Path(path)
    graph, consts, input_name, shape = read_graph(path)
    size = int(np.prod(shape))
    live: dict[str, Live] = {input_name: Live(np.eye(size), np.zeros(size), shape)}
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    operators: set[str] = set()
    for index, node in enumerate(graph.node):
        op, where = node.op_type, f"{path}: node {node.name or index!r} ({node.op_type})"
        operators.add(op)
        attrs = _attributes(node)
        names = [n for n in node.input]
        variable = [n for n in names if n in live]
        if constant_node(node, attrs, consts,
                         live[variable[0]].shape if variable else None, where):
            continue
        if op not in LIVE_OPERATORS:
            raise OnnxImportError(f"{where}: unsupported operator (certbench imports "
                                  f"{', '.join(LIVE_OPERATORS)})")
        if len(variable) > 1:
            raise OnnxImportError(f"{where}: combines two variable tensors; only sequential "
                                  "networks are supported")
        x = live[variable[0]]
        other = [consts.get(n) for n in names if n and n not in live]
        if any(o is None for o in other):
            raise OnnxImportError(f"{where}: an input is neither computed nor an initializer")
        if op == "Relu":
            layers.append((x.a, x.c))
            out = Live(np.eye(len(x.c)), np.zeros(len(x.c)), x.shape)
        elif op in ("Identity", "Dropout"):
            out = x
        elif op == "Flatten":
            if int(attrs.get("axis", 1)) != 1:
                raise OnnxImportError(f"{where}: only Flatten with axis 1 is supported")
            out = Live(x.a, x.c, (len(x.c),))
        elif op == "Reshape":
            target = _target_shape(other[0], x.shape, where)
            if target[0] != 1:
                raise OnnxImportError(f"{where}: a Reshape that moves the batch dimension")
            out = Live(x.a, x.c, target[1:])
        elif op == "Transpose":
            perm = list(attrs.get("perm", range(len(x.shape) + 1)[::-1]))
            if perm[0] != 0:
                raise OnnxImportError(f"{where}: a Transpose that moves the batch dimension")
            order = np.arange(len(x.c)).reshape(x.shape).transpose([p - 1 for p in perm[1:]])
            out = Live(x.a[order.reshape(-1)], x.c[order.reshape(-1)],
                       tuple(x.shape[p - 1] for p in perm[1:]))
        elif op in ("Add", "Sub", "Mul", "Div"):
            const = _per_sample(other[0], x.shape, where)
            first = names[0] in live
            if op == "Add":
                out = x.elementwise(np.ones(1), const)
            elif op == "Sub":
                out = x.elementwise(np.ones(1), -const) if first else \
                    x.elementwise(-np.ones(1), const)
            elif op == "Mul":
                out = x.elementwise(const, np.zeros(1))
            else:
                if not first:
                    raise OnnxImportError(f"{where}: division by a variable tensor")
                out = x.elementwise(1.0 / const, np.zeros(1))
        elif op in ("Gemm", "MatMul"):
            if len(x.shape) != 1:
                if op == "Gemm" or int(np.prod(x.shape[:-1])) != 1:
                    raise OnnxImportError(f"{where}: expects a flat (N, n) input, got per-"
                                          f"sample shape {x.shape}")
            if names[0] not in live:
                raise OnnxImportError(f"{where}: the variable tensor must be the first operand")
            weight, bias = gemm_weight(op, attrs, other, x.shape[-1], where)
            out = x.affine(weight.T, bias, (*x.shape[:-1], weight.shape[1]))
        elif op == "Conv":
            matrix, offset, out_shape = _conv_matrix(other[0], other[1] if len(other) > 1
                                                     else None, x.shape, attrs, where)
            out = x.affine(matrix, offset, out_shape)
        elif op == "BatchNormalization":
            scale, beta, mean, var = (np.asarray(o, np.float64) for o in other[:4])
            eps = float(attrs.get("epsilon", 1e-5))
            factor = scale / np.sqrt(var + eps)
            extra = (1,) * (len(x.shape) - 1)
            out = x.elementwise(factor.reshape(-1, *extra),
                                (beta - mean * factor).reshape(-1, *extra))
        else:                                     # a name in LIVE_OPERATORS without a rule
            raise AssertionError(f"{where}: LIVE_OPERATORS lists {op} but no rule folds it")
        live[node.output[0]] = out
    if len(graph.output) != 1 or graph.output[0].name not in live:
        raise OnnxImportError(f"{path}: the graph's output is not computed from its input "
                              "by the supported operators")
    final = live[graph.output[0].name]
    layers.append((final.a, final.c))
    widths = [size] + [w.shape[0] for w, _ in layers]
    net = MLP(widths)
    with torch.no_grad():
        for linear, (w, b) in zip(net.linears, layers):
            linear.weight.copy_(torch.from_numpy(w))
            linear.bias.copy_(torch.from_numpy(np.ascontiguousarray(b)))
    if not all(torch.isfinite(p).all() for p in net.parameters()):
        raise OnnxImportError(f"{path}: the network has NaN or infinite weights")
    net.certificates = {name[len(CERTIFICATE_PREFIX):]: torch.from_numpy(
        np.asarray(value, dtype=np.float64).copy()) for name, value in consts.items()
        if name.startswith(CERTIFICATE_PREFIX)}
    return net.eval(), {"input_shape": list(shape), "nodes": len(graph.node),
                        "operators": sorted(operators)}


def onnx_io_shapes(path: Path, num_inputs: int, num_outputs: int
                   ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ONNX graph's input and output shapes, a symbolic batch dimension read as 1
    (what a VNN-LIB 2.0 query declares for it); ``(1, n)`` where the file gives no shape
    of the right size."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]

    def shape(value, size: int) -> tuple[int, ...]:
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                     for d in value.type.tensor_type.shape.dim)
        return dims if dims and int(np.prod(dims)) == size else (1, size)

    return (shape(inputs[0], num_inputs) if inputs else (1, num_inputs),
            shape(model.graph.output[0], num_outputs) if model.graph.output
            else (1, num_outputs))


def export_onnx(net: MLP, path: Path, *, input_shape: tuple[int, ...] | None = None) -> Path:
    """Write ``net`` as ONNX (Gemm and Relu; a Flatten first if ``input_shape`` has more
    than one dimension), with a symbolic batch dimension and float32 weights. Tensors
    that travel with the weights (``net.certificates``, e.g. SDP-NN's trained dual
    vectors) go along as unused float64 initializers ``certificates.NAME``, which
    :func:`import_onnx` reads back and other tools ignore."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = list(input_shape or [net.input_dim])
    nodes, inits = [], []
    current = "input"
    if len(shape) > 1:
        nodes.append(helper.make_node("Flatten", [current], ["flat"], axis=1))
        current = "flat"
    for k, linear in enumerate(net.linears):
        w = numpy_helper.from_array(linear.weight.detach().float().numpy(), f"layer{k}.weight")
        b = numpy_helper.from_array(linear.bias.detach().float().numpy(), f"layer{k}.bias")
        inits += [w, b]
        out = "output" if k == len(net.linears) - 1 else f"gemm{k}"
        nodes.append(helper.make_node("Gemm", [current, w.name, b.name], [out], transB=1))
        current = out
        if k < len(net.linears) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"relu{k}"]))
            current = f"relu{k}"
    inits += [numpy_helper.from_array(value.detach().double().numpy(), CERTIFICATE_PREFIX + key)
              for key, value in sorted(net.certificates.items())]
    graph = helper.make_graph(
        nodes, "certbench",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", net.num_classes])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="certbench")
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from models.files import atomic_write

    payload = model.SerializeToString()
    atomic_write(path, lambda handle: handle.write(payload))
    return path
