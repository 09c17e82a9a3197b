"""Networks as a graph of operators: convolutions, residual additions, pooling, padding
and smooth activations, for the networks that do not fold into a ReLU MLP.

``GraphNet`` holds its nodes in topological order; node 0 is the input (per-sample shape
``input_shape``), the last node the output ``(K,)``. Every node has a per-sample
``shape`` (C order) and one operator:

- ``linear`` (``weight (out, in)``, ``bias (out,)``; a flat input), ``conv``
  (``weight (C_out, C_in / groups, kh, kw)``, ``bias (C_out,)``, ``stride``,
  ``padding`` (symmetric, ``(ph, pw)``), ``dilation``, ``groups``), ``deconv`` (a
  transposed convolution: ``weight (C_in, C_out / groups, kh, kw)``, ``bias (C_out,)``,
  the same settings and ``output_padding``), ``affine``
  (elementwise ``scale * z + offset``, both broadcast to the shape: a normalisation, a
  BatchNormalization not folded into a conv, arithmetic with constants);
- ``add`` (two variable inputs: a residual connection), ``concat`` (variable inputs
  joined along their first per-sample axis, the channels);
- ``relu``, ``sigmoid``, ``tanh`` (elementwise);
- ``reshape`` (a view, C order), ``transpose`` (``perm`` of the per-sample axes),
  ``pad`` (constant zeros, ``pads = (top, left, bottom, right)`` of a ``(C, H, W)``
  tensor), ``slice`` (``axis`` of the per-sample shape, ``start``, ``end``; step 1),
  ``upsample`` (nearest-neighbour by integer ``scale (sh, sw)`` of a ``(C, H, W)``
  tensor: every value repeated in an ``sh x sw`` block);
- ``avgpool`` and ``maxpool`` (``kernel``, ``stride``, ``padding``; average pooling
  counts the padded zeros, as ONNX's ``count_include_pad=1`` or unpadded pooling).

``net(x (N, d))`` gives logits ``(N, K)`` (``x`` flattened row-major, as for an MLP).
Bounds on this type are computed operator by operator
(:mod:`verifiers.linear.graph_propagation`): a convolution's backward is a transposed
convolution, never a dense matrix. :attr:`widths` is ``[d, K]`` (the card's).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ELEMENTWISE = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}
OPERATORS = ("input", "linear", "conv", "deconv", "affine", "add", "concat", "relu",
             "sigmoid", "tanh", "reshape", "transpose", "pad", "slice", "upsample", "avgpool",
             "maxpool")


@dataclass
class Node:
    """One operator: its inputs (node indices), per-sample output ``shape`` and settings
    (tensors live in the network's parameters under ``n{index}_{name}``)."""

    op: str
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""


class GraphNet(nn.Module):
    """A feed-forward network as a graph of operators (see the module doc)."""

    def __init__(self, nodes: list[Node], tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        if not nodes or nodes[0].op != "input":
            raise ValueError("node 0 of a GraphNet is its input")
        for index, node in enumerate(nodes):
            if node.op not in OPERATORS:
                raise ValueError(f"node {index}: unknown operator {node.op!r}")
            if any(not 0 <= i < index for i in node.inputs):
                raise ValueError(f"node {index} ({node.op}): inputs {node.inputs} are not "
                                 "earlier nodes")
        if len(nodes[-1].shape) != 1:
            raise ValueError(f"the output node has shape {nodes[-1].shape}, expected (K,)")
        self.nodes = nodes
        self.params = nn.ParameterDict({k: nn.Parameter(v, requires_grad=False)
                                        for k, v in tensors.items()})
        self.certificates: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ facts
    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.nodes[0].shape

    @property
    def input_dim(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def num_classes(self) -> int:
        return self.nodes[-1].shape[0]

    @property
    def widths(self) -> list[int]:
        return [self.input_dim, self.num_classes]

    @property
    def hidden_layers(self) -> int:
        """Nonlinear operators (activations and max pooling)."""
        return sum(node.op in (*ELEMENTWISE, "maxpool") for node in self.nodes)

    def tensor(self, index: int, name: str) -> torch.Tensor | None:
        key = f"n{index}_{name}"
        return self.params[key] if key in self.params else None

    def float64_copy(self) -> "GraphNet":
        """An independent copy in float64, in eval mode."""
        twin = copy.deepcopy(self)
        twin.certificates = dict(self.certificates)
        return twin.double().eval()

    # ---------------------------------------------------------------- forward
    def apply(self, index: int, values: list[torch.Tensor]) -> torch.Tensor:
        """Node ``index`` on its inputs' values ``(N, *shape)``."""
        node = self.nodes[index]
        a = node.attrs
        x = values[0] if values else None
        if node.op == "linear":
            return F.linear(x, self.tensor(index, "weight"), self.tensor(index, "bias"))
        if node.op == "conv":
            return F.conv2d(x, self.tensor(index, "weight"), self.tensor(index, "bias"),
                            a["stride"], a["padding"], a["dilation"], a["groups"])
        if node.op == "deconv":
            return F.conv_transpose2d(x, self.tensor(index, "weight"), self.tensor(index, "bias"),
                                      a["stride"], a["padding"], a["output_padding"],
                                      a["groups"], a["dilation"])
        if node.op == "affine":
            return x * self.tensor(index, "scale") + self.tensor(index, "offset")
        if node.op == "add":
            return values[0] + values[1]
        if node.op == "concat":
            return torch.cat(values, dim=1)
        if node.op in ELEMENTWISE:
            return ELEMENTWISE[node.op](x)
        if node.op == "reshape":
            return x.reshape(x.shape[0], *node.shape)
        if node.op == "transpose":
            return x.permute(0, *[p + 1 for p in a["perm"]])
        if node.op == "pad":
            top, left, bottom, right = a["pads"]
            return F.pad(x, (left, right, top, bottom))
        if node.op == "slice":
            return x.narrow(a["axis"] + 1, a["start"], a["end"] - a["start"])
        if node.op == "upsample":
            return x.repeat_interleave(a["scale"][0], 2).repeat_interleave(a["scale"][1], 3)
        if node.op == "avgpool":
            return F.avg_pool2d(x, a["kernel"], a["stride"], a["padding"],
                                count_include_pad=True)
        if node.op == "maxpool":
            return F.max_pool2d(x, a["kernel"], a["stride"], a["padding"])
        raise ValueError(f"node {index}: no forward for {node.op!r}")

    def node_values(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every node's value ``(N, *shape)`` for inputs ``x (N, d)``."""
        values = [x.reshape(x.shape[0], *self.input_shape)]
        for index in range(1, len(self.nodes)):
            values.append(self.apply(index, [values[i] for i in self.nodes[index].inputs]))
        return values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (N, d)`` -> logits ``(N, K)``."""
        return self.node_values(x)[-1]
