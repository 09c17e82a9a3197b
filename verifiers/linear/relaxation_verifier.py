"""The base of the ``lp`` and ``crown`` plugins: one linear-relaxation bound with a ReLU
lower-slope rule, on an MLP (:mod:`verifiers.linear.propagation`) or an operator graph
(:mod:`verifiers.linear.graph_propagation`)."""

from __future__ import annotations

import torch

from bench.contract import BOOLEAN, Configurable, Property, check_options
from models import MLP
from models.graph import GraphNet
from verifiers.linear.graph_propagation import graph_margin_bounds, graph_property_bounds
from verifiers.linear.propagation import SlopeRule, margin_upper_bounds, property_upper_bounds


class LinearRelaxationVerifier(Configurable):
    """Base of ``lp`` and ``crown``: :func:`margin_upper_bounds` with ``slope_rule``."""

    slope_rule: SlopeRule

    def __init__(self, *, clip: bool = True) -> None:
        check_options(clip=(clip, BOOLEAN))
        self.clip = clip

    def bound(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)``, ``y (N,)`` -> ``U (N, K)`` float64 (whatever ``x``'s dtype),
        ``U[n, y_n] = -inf``. An operator graph (only for a subclass with ``graphs``) by
        :mod:`verifiers.linear.graph_propagation`."""
        if isinstance(net, GraphNet):
            with torch.no_grad():
                return graph_margin_bounds(net.float64_copy(), x, y, eps, self.clip,
                                           rule=type(self).slope_rule)
        return margin_upper_bounds(net, x.to(torch.float64), y, eps, type(self).slope_rule,
                                   self.clip)

    def bound_property(self, net: MLP, prop: Property) -> list[torch.Tensor]:
        """Per group of ``prop``, ``(r_g,)`` upper bounds on ``c_i . f(x) - d_i`` over its box."""
        if isinstance(net, GraphNet):
            return graph_property_bounds(net.float64_copy(), prop,
                                         rule=type(self).slope_rule)
        return property_upper_bounds(net, prop, type(self).slope_rule)
