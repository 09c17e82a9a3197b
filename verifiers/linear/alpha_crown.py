"""``alpha-crown``: CROWN with lower ReLU slopes optimised by gradient (Xu et al. 2021).

Each crossing unit's lower line ``relu(z) >= alpha z`` is sound for any ``alpha`` in
``[0, 1]``; alpha-CROWN picks one per unit and per specification row (for the
intermediate layers, per unit of the layer being bounded) by projected Adam steps on
the bound, starting from CROWN's choice. Intermediate bounds are optimised layer by
layer and intersected with interval and CROWN bounds; the final bound is the smaller
of CROWN's and the optimised one, both evaluated in float64, so it is never looser
than ``crown``. Any depth, margins and general specifications. On an operator graph
(:class:`models.graph.GraphNet`) the same, node by node: the bounds at the input of every
nonlinear node, then the output's
(:mod:`verifiers.linear.graph_optimisation`; sigmoid and tanh tangent points optimised
with the ReLU slopes).
"""

from __future__ import annotations

import torch

from bench.contract import (
    BOOLEAN,
    Configurable,
    Integer,
    Property,
    check_options,
    input_box,
    split_rows,
)
from models import MLP
from models.graph import GraphNet
from verifiers.linear import graph_optimisation
from verifiers.linear.graph_propagation import layer_bounds
from verifiers.linear.propagation import (
    backward_upper,
    crown_slope,
    finish_margins,
    layer_params,
    linear_layer_bounds,
    margin_spec,
)
from verifiers.linear.slope_optimisation import optimise_upper, optimised_layer_bounds


def alpha_crown_upper(net: MLP, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor, *,
                      iterations: int, intermediate_iterations: int) -> torch.Tensor:
    """``min(CROWN, alpha-CROWN)`` upper bounds on ``spec (N, S, K) . f(x)`` over the box
    ``lo, hi (N, d)``: ``(N, S)`` float64."""
    with torch.no_grad():
        params = layer_params(net, torch.float64)
        lo, hi, spec = lo.to(torch.float64), hi.to(torch.float64), spec.to(torch.float64)
        crown_bounds = linear_layer_bounds(params, lo, hi, crown_slope)
        crown = backward_upper(params, crown_bounds, spec, lo, hi, crown_slope)
        bounds = optimised_layer_bounds(params, lo, hi, iterations=intermediate_iterations,
                                        tighten_with=crown_bounds)
        optimised = optimise_upper(params, bounds, spec, lo, hi, iterations=iterations)
        return torch.minimum(crown, optimised.upper)


class AlphaCrown(Configurable):
    """alpha-CROWN upper bound ``U (N, K)`` for ReLU MLPs of any depth."""

    name = "alpha-crown"
    opt_in = True   # not in the committed report's grid (yet); ask for it by name
    graphs = True   # operator graphs: verifiers.linear.graph_optimisation

    def __init__(self, *, iterations: int = 20, intermediate_iterations: int = 10,
                 chunk: int = 32, clip: bool = True) -> None:
        check_options(iterations=(iterations, Integer(0)),
                      intermediate_iterations=(intermediate_iterations, Integer(0)),
                      chunk=(chunk, Integer(1)), clip=(clip, BOOLEAN))
        self.iterations = iterations
        self.intermediate_iterations = intermediate_iterations
        self.chunk = chunk
        self.clip = clip

    def bound(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)``, ``y (N,)`` -> ``U (N, K)`` float64, ``U[n, y_n] = -inf``; samples
        in chunks of ``chunk`` (the intermediate slopes take ``O(N m^2)`` memory)."""
        out = []
        for start in range(0, len(x), self.chunk):
            xs, ys = x[start:start + self.chunk].to(torch.float64), y[start:start + self.chunk]
            lo, hi = input_box(xs.reshape(len(xs), -1), eps, self.clip)
            spec = margin_spec(ys, net.num_classes, torch.float64)
            if isinstance(net, GraphNet):
                upper = self._graph_upper(net, lo, hi, spec)
            else:
                upper = alpha_crown_upper(net, lo, hi, spec, iterations=self.iterations,
                                          intermediate_iterations=self.intermediate_iterations)
            out.append(finish_margins(upper, ys))
        return torch.cat(out) if out else torch.empty(0, net.num_classes, dtype=torch.float64)

    def _graph_upper(self, net: GraphNet, lo: torch.Tensor, hi: torch.Tensor,
                     spec: torch.Tensor) -> torch.Tensor:
        """``(N, S)`` float64 bounds on ``spec (N, S, K) . f(x)`` over the boxes ``lo, hi
        (N, d)`` of an operator graph: intermediate bounds and the output's, optimised."""
        net64 = net.float64_copy()
        with torch.no_grad():
            crown_bounds, _ = layer_bounds(net64, lo, hi)
        bounds, relaxed = graph_optimisation.optimised_layer_bounds(
            net64, lo, hi, self.intermediate_iterations, tighten_with=crown_bounds)
        return graph_optimisation.optimised_upper(net64, lo, hi, spec, self.iterations,
                                                  relaxed=relaxed, bounds=bounds)

    def bound_property(self, net: MLP, prop: Property) -> list[torch.Tensor]:
        """Per group of ``prop``, ``(r_g,)`` upper bounds on ``c_i . f(x) - d_i`` over its box."""
        rows, offsets, sizes = split_rows(prop)
        if isinstance(net, GraphNet):
            lo, hi = prop.lo.to(torch.float64)[None], prop.hi.to(torch.float64)[None]
            upper = self._graph_upper(net, lo, hi, rows[None].to(torch.float64))
        else:
            upper = alpha_crown_upper(net, prop.lo[None], prop.hi[None], rows[None],
                                      iterations=self.iterations,
                                      intermediate_iterations=self.intermediate_iterations)
        return list((upper[0] - offsets).split(sizes))
