"""``ibp``: interval bound propagation, the cheapest sound baseline.

Intervals pass through every hidden layer; the last affine layer is bounded exactly
for each margin ``c = e_j - e_y`` over the box of the last hidden activations
(``c^T W_L`` applied before taking the interval), as in Gowal et al. 2018.
"""

from __future__ import annotations

import torch

from bench.contract import Configurable, Property, split_rows
from models import MLP
from models.graph import GraphNet
from verifiers.linear.graph_propagation import graph_margin_bounds, graph_property_bounds
from verifiers.linear.propagation import (
    backward_upper,
    finish_margins,
    input_box,
    interval_bounds,
    layer_params,
    margin_spec,
    wong_kolter_slope,
)


class IBP(Configurable):
    """Interval upper bound ``U (N, K)`` for ReLU MLPs of any depth."""

    name = "ibp"
    graphs = True      # operator graphs: intervals node by node, the output's per margin

    def __init__(self, *, clip: bool = True) -> None:
        self.clip = clip

    def bound(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)``, ``y (N,)`` -> ``U (N, K)`` float64, ``U[n, y_n] = -inf``."""
        if isinstance(net, GraphNet):
            with torch.no_grad():
                return graph_margin_bounds(net.float64_copy(), x, y, eps, self.clip,
                                           crown=False)
        x = x.to(torch.float64)
        params = layer_params(net, x.dtype)
        lo, hi = input_box(x, eps, self.clip)
        if len(params) > 1:
            last_lo, last_hi = interval_bounds(params[:-1], lo, hi)[-1]
            lo, hi = last_lo.clamp(min=0), last_hi.clamp(min=0)
        spec = margin_spec(y, net.num_classes, x.dtype)
        # one affine layer and no ReLU: the backward pass is exact over the box
        return finish_margins(backward_upper(params[-1:], [], spec, lo, hi, wong_kolter_slope), y)

    def bound_property(self, net: MLP, prop: Property) -> list[torch.Tensor]:
        """Per group of ``prop``, ``(r_g,)`` upper bounds on ``c_i . f(x) - d_i`` over its box."""
        if isinstance(net, GraphNet):
            return graph_property_bounds(net.float64_copy(), prop, crown=False)
        params = layer_params(net, torch.float64)
        lo, hi = prop.lo.to(torch.float64)[None], prop.hi.to(torch.float64)[None]
        if len(params) > 1:
            last_lo, last_hi = interval_bounds(params[:-1], lo, hi)[-1]
            lo, hi = last_lo.clamp(min=0), last_hi.clamp(min=0)
        rows, offsets, sizes = split_rows(prop)
        upper = backward_upper(params[-1:], [], rows[None], lo, hi, wong_kolter_slope)[0]
        return list((upper - offsets).split(sizes))
