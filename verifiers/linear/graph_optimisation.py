"""alpha-CROWN and alpha-beta-CROWN on operator graphs (:class:`models.graph.GraphNet`):
the relaxations' free parameters optimised by projected Adam on the bound.

Every choice of these parameters gives a sound upper bound
(:func:`verifiers.linear.graph_propagation.linear_form`): the lower slope of a crossing
ReLU unit anywhere in ``[0, 1]``, the tangent points of sigmoid and tanh anywhere in
their ranges (:func:`verifiers.linear.graph_propagation.s_curve_tangent_points`, a
position ``[0, 1]`` along each), and a multiplier ``beta >= 0`` per split unit (the
split constraint's Lagrangian). Parameters are per unit, specification row and box
(alpha-CROWN, Xu et al. 2021; beta-CROWN, Wang et al. 2021); every iterate's bound is
evaluated in float64 and the smallest per row is kept, so a bound is never looser than
CROWN's, and its soundness never depends on the search.

Two uses: the output's bound (:func:`optimised_upper`), and the bounds at the input of
every nonlinear node (:func:`optimised_layer_bounds`, the ``±e_i`` rows of the units
crossing zero, each row its own parameters), with the parameters kept
(:class:`GraphSlopes`) to re-derive bounds of branch-and-bound subdomains
(:func:`verifiers.bab.graph_layer_bounds.refined_bounds`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from models.graph import GraphNet
from verifiers.linear.graph_propagation import (
    Interval,
    backward_upper,
    box_maximum,
    crown_unit_bounds,
    layer_bounds,
    linear_form,
    s_curve_lines_at,
    s_curve_tangent_points,
    unit_chunks,
)

LEARNING_RATE = 0.1
# rows x node size per optimised chunk: autograd keeps every node's coefficients, so a
# quarter of the plain backward pass's chunk
OPTIMISED_CHUNK_ENTRIES = 500_000
Parameters = dict[int, torch.Tensor]


def crossing_units(relaxed: dict[int, tuple], index: int) -> torch.Tensor:
    """ReLU node ``index``'s units crossing zero under its relaxation (one box), flat
    indices ``(n,)``: the only ones whose lower slope is free (the upper line's offset is
    positive there)."""
    return torch.nonzero(relaxed[index][3].flatten() > 0).flatten()


def packed(alpha: torch.Tensor, shape: tuple[int, ...], units: torch.Tensor) -> torch.Tensor:
    """A ReLU node's parameters ``(..., *shape)`` kept at ``units (n,)`` only: ``(..., n)``."""
    return alpha.flatten(alpha.dim() - len(shape))[..., units].contiguous()


def unpacked(lean: torch.Tensor, shape: tuple[int, ...], units: torch.Tensor) -> torch.Tensor:
    """:func:`packed`'s inverse, 0 at the other units: ``(..., n)`` -> ``(..., *shape)``."""
    whole = lean.new_zeros(*lean.shape[:-1], math.prod(shape))
    whole[..., units] = lean
    return whole.reshape(*lean.shape[:-1], *shape)


@dataclass
class GraphSlopes:
    """The parameters behind optimised intermediate bounds of one box: per bounded node
    ``source`` (the input of a nonlinear node), ``units[source]`` (its flat indices
    bounded, ``(U,)``) and ``alphas[source]``, per nonlinear node before it, the
    parameters of the rows ``+e_i`` (first ``U``) and ``-e_i`` (last ``U``), float32:
    ReLU lower slopes ``(1, 2U, n)`` at the node's units crossing zero, ``positions[node]
    (n,)`` (flat indices; the others are stable, their slope is not free), sigmoid/tanh
    tangent positions ``(2, 1, 2U, *shape)`` (lower, upper). Kept while they take at most
    ``budget`` bytes; past it, ``complete`` is false and no more are kept."""

    budget: int = 2 ** 30
    units: dict[int, torch.Tensor] = field(default_factory=dict)
    alphas: dict[int, Parameters] = field(default_factory=dict)
    positions: dict[int, torch.Tensor] = field(default_factory=dict)
    complete: bool = True
    size: int = 0

    def keep(self, net: GraphNet, relaxed: dict[int, tuple], source: int,
             units: torch.Tensor, alphas: Parameters) -> None:
        """Keep node ``source``'s parameters ``alphas`` (per nonlinear node, the rows
        ``±e_i`` of ``units`` whole: ``(1, 2U, *shape)``, ``(2, 1, 2U, *shape)``)."""
        lean = {}
        for index, alpha in alphas.items():
            if net.nodes[index].op == "relu":
                if index not in self.positions:
                    self.positions[index] = crossing_units(relaxed, index)
                alpha = packed(alpha, net.nodes[index].shape, self.positions[index])
            lean[index] = alpha.contiguous()
        size = sum(t.numel() * t.element_size() for t in lean.values())
        if not self.complete or self.size + size > self.budget:
            self.complete = False
            return
        self.size += size
        self.units[source] = units
        self.alphas[source] = lean

    def whole(self, net: GraphNet, source: int, rows: torch.Tensor) -> Parameters:
        """Node ``source``'s parameters of rows ``rows (R,)``, whole again (0 at stable
        ReLU units): ``(1, R, *shape)``, ``(2, 1, R, *shape)``."""
        out = {}
        for index, alpha in self.alphas[source].items():
            if index in self.positions:
                out[index] = unpacked(alpha[:, rows], net.nodes[index].shape,
                                      self.positions[index])
            else:
                out[index] = alpha[:, :, rows]
        return out


def curve_ranges(net: GraphNet, relaxed: dict[int, tuple], bounds: list[Interval]
                 ) -> dict[int, tuple]:
    """Per sigmoid/tanh node of ``relaxed``: its input interval ``(B, 1, *shape)`` each
    and its tangent ranges (:func:`verifiers.linear.graph_propagation.s_curve_tangent_points`),
    what :func:`lines_with` needs to place its tangents."""
    curves: dict[int, tuple] = {}
    for index in relaxed:
        op = net.nodes[index].op
        if op in ("sigmoid", "tanh"):
            low, up = (t.unsqueeze(1) for t in bounds[net.nodes[index].inputs[0]])
            curves[index] = (low, up, s_curve_tangent_points(op, low, up))
    return curves


def _start(net: GraphNet, relaxed: dict[int, tuple], bounds: list[Interval] | None,
           batch: int, rows: int) -> tuple[Parameters, dict[int, tuple]]:
    """CROWN's parameters, per nonlinear node: ReLU lower slopes ``(B, S, *shape)``,
    sigmoid/tanh tangent positions ``(2, B, S, *shape)`` (the midpoint, or the sound
    bracket end across zero: CROWN's lines); and the sigmoid/tanh nodes'
    :func:`curve_ranges` (needs ``bounds``; without them, CROWN's fixed lines)."""
    free: Parameters = {}
    curves = {} if bounds is None else curve_ranges(net, relaxed, bounds)
    for index, lines in relaxed.items():
        if net.nodes[index].op == "relu":
            a_low = lines[0]
            free[index] = a_low.unsqueeze(1).expand(batch, rows, *a_low.shape[1:]).float()
        elif index in curves:
            low, up, _ = curves[index]
            crossing = (low < 0) & (up > 0)
            shape = (batch, rows, *low.shape[2:])
            start_low = torch.where(crossing, 1.0, 0.5).expand(shape)
            start_up = torch.where(crossing, 0.0, 0.5).expand(shape)
            free[index] = torch.stack([start_low, start_up]).float()
    return free, curves


def lines_with(net: GraphNet, relaxed: dict[int, tuple], curves: dict[int, tuple],
               free: Parameters, dtype: torch.dtype) -> dict[int, tuple]:
    """The relaxations with the parameters ``free`` (clamped to ``[0, 1]``; per row
    ``(B, S, *shape)``, or ``(1, S, *shape)`` shared by every box): a crossing ReLU unit's
    lower slope, a sigmoid/tanh unit's tangent points (``curves``: :func:`curve_ranges`);
    every other line as in ``relaxed``."""
    lines: dict[int, tuple] = {}
    for index, value in relaxed.items():
        if index in curves:
            low, up, points = curves[index]
            alphas = free[index].to(dtype).clamp(0, 1)
            lines[index] = s_curve_lines_at(net.nodes[index].op, low, up, points,
                                            alphas[0], alphas[1])
        elif index in free:
            a_low, b_low, a_up, b_up = (t.to(dtype).unsqueeze(1) for t in value)
            slope = torch.where(b_up > 0, free[index].to(dtype).clamp(0, 1), a_low)  # (B, S, ..)
            lines[index] = (slope, b_low.expand_as(slope), a_up.expand_as(slope),
                            b_up.expand_as(slope))
        else:
            lines[index] = value
    return lines


def optimise(net: GraphNet, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor,
             target: int, iterations: int, relaxed: dict[int, tuple],
             bounds: list[Interval] | None = None,
             splits: dict[int, torch.Tensor] | None = None,
             crown: torch.Tensor | None = None, start: Parameters | None = None,
             start_betas: Parameters | None = None
             ) -> tuple[torch.Tensor, Parameters, Parameters]:
    """``(upper (B, S), parameters, multipliers)``: the smallest float64 bound per row
    on ``spec (B, S, *shape of target) . v_target`` over the boxes ``lo, hi`` (``(B, d)``,
    or ``(1, d)`` for one shared box) met in ``iterations`` Adam steps from CROWN's
    parameters (or ``start``'s, per node, e.g. a parent's), never above ``crown``
    (CROWN's bound on ``relaxed``, computed here if not given), and the parameters and
    split multipliers at the end (per nonlinear node, as :func:`_start`; per split ReLU
    node ``(B, S, *shape)``). ``splits``: per ReLU node ``(B, *shape)`` signs of split
    units, each with a multiplier ``beta >= 0`` per row (from ``start_betas``' where
    given, else 0)."""
    with torch.no_grad():
        if crown is None:
            crown = backward_upper(net, relaxed, target, spec, lo, hi)
    batch, rows = crown.shape
    free, curves = _start(net, relaxed, bounds, batch, rows)
    if start is not None:
        free.update({index: value.expand_as(free[index]) for index, value in start.items()
                     if index in free})
    free = {index: value.clone().requires_grad_(True) for index, value in free.items()}
    signs = {index: sign.unsqueeze(1).to(torch.float64)
             for index, sign in (splits or {}).items() if bool((sign != 0).any())}
    betas = {index: ((start_betas or {}).get(index, torch.zeros(()))
                     .expand(batch, rows, *sign.shape[2:]).float().clamp(min=0).clone()
                     .requires_grad_(True))
             for index, sign in signs.items()}
    if iterations <= 0 or (not free and not betas):
        return (crown, {index: value.detach() for index, value in free.items()},
                {index: value.detach() for index, value in betas.items()})
    optimiser = torch.optim.Adam(list(free.values()) + list(betas.values()),
                                 lr=LEARNING_RATE)

    def evaluated() -> torch.Tensor:
        """The float64 bound ``(B, S)`` with the parameters as they stand."""
        lines = lines_with(net, relaxed, curves, free, torch.float64)
        terms = {index: betas[index].to(torch.float64).clamp(min=0) * signs[index]
                 for index in betas}
        return box_maximum(*linear_form(net, lines, target, spec, split_terms=terms), lo, hi)

    best = crown.clone()
    for _ in range(iterations):
        optimiser.zero_grad()
        value = evaluated()
        value.sum().backward()
        with torch.no_grad():
            best = torch.minimum(best, value)
        optimiser.step()
        with torch.no_grad():
            for tensor in free.values():
                tensor.clamp_(0, 1)
            for tensor in betas.values():
                tensor.clamp_(min=0)
    with torch.no_grad():           # the last step's parameters, evaluated once more
        best = torch.minimum(best, evaluated())
    return (best, {index: value.detach() for index, value in free.items()},
            {index: value.detach() for index, value in betas.items()})


def optimised_upper(net: GraphNet, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor,
                    iterations: int, relaxed: dict[int, tuple] | None = None,
                    splits: dict[int, torch.Tensor] | None = None,
                    bounds: list[Interval] | None = None,
                    crown: torch.Tensor | None = None) -> torch.Tensor:
    """``min(CROWN, alpha(-beta)-CROWN)`` upper bounds ``(B, S)`` on
    ``spec (B, S, K) . f(x)`` over the boxes ``lo, hi (B, d)`` (``(1, d)`` for one box
    shared by all), by :func:`optimise` on the output.

    The relaxations are CROWN's (:func:`verifiers.linear.graph_propagation.layer_bounds`
    on the box, or ``relaxed`` if the caller has them, e.g.
    :func:`verifiers.linear.graph_propagation.split_relaxation`'s for subdomains with
    split units ``splits``); optimising the sigmoid and tanh tangent points needs the
    nodes' input ``bounds``, which ``layer_bounds`` gives, when the caller passes
    ``relaxed``. ``crown``: CROWN's bound ``(B, S)`` on these relaxations, if the caller
    computed it already."""
    with torch.no_grad():
        if relaxed is None:
            bounds, relaxed = layer_bounds(net, lo, hi)
    upper, _, _ = optimise(net, lo, hi, spec, len(net.nodes) - 1, iterations, relaxed,
                           bounds, splits, crown)
    return upper.detach()


def _rows_joined(net: GraphNet, index: int, kept: list[tuple[int, Parameters]]
                 ) -> torch.Tensor:
    """Node ``index``'s parameters of chunks ``[(u, parameters of rows +e (u), -e (u))]``
    joined as the rows ``+e`` of every chunk, then ``-e`` of every chunk."""
    axis = kept[0][1][index].dim() - len(net.nodes[index].shape) - 1     # the rows' axis
    plus = [free[index].narrow(axis, 0, count) for count, free in kept]
    minus = [free[index].narrow(axis, count, count) for count, free in kept]
    return torch.cat(plus + minus, axis)


def optimised_layer_bounds(net: GraphNet, lo: torch.Tensor, hi: torch.Tensor,
                           iterations: int, slopes: GraphSlopes | None = None,
                           tighten_with: list[Interval] | None = None
                           ) -> tuple[list[Interval], dict[int, tuple]]:
    """:func:`verifiers.linear.graph_propagation.layer_bounds` (pruned) with the bounds at
    the input of every nonlinear node optimised: the ``±e_i`` rows of the units bounded
    there, each with its own parameters, ``iterations`` steps from CROWN's (alpha-CROWN's
    intermediate bounds), in chunks of rows; never looser than the intervals' or
    ``tighten_with``'s (as ``layer_bounds``). ``slopes``, if given (one box, ``lo, hi
    (1, d)``), receives the parameters (:class:`GraphSlopes`; CROWN's with
    ``iterations=0``), within its budget."""
    if lo.shape[0] > 1 and slopes is not None:
        raise ValueError("the parameters of one box only: lo, hi (1, d)")

    def bound_units(net: GraphNet, relaxed: dict[int, tuple], bounds: list[Interval],
                    source: int, lo: torch.Tensor, hi: torch.Tensor,
                    units: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        lowers, uppers, kept = [], [], []
        for part, spec in unit_chunks(net, source, units, lo.shape[0],
                                      OPTIMISED_CHUNK_ENTRIES):
            both, free, _ = optimise(net, lo, hi, spec.to(lo.dtype), source, iterations,
                                     relaxed, bounds)
            uppers.append(both[:, :len(part)].detach())
            lowers.append(-both[:, len(part):].detach())
            kept.append((len(part), free))
        if slopes is not None and kept:
            slopes.keep(net, relaxed, source,
                        torch.arange(math.prod(net.nodes[source].shape))
                        if units is None else units,
                        {index: _rows_joined(net, index, kept) for index in kept[0][1]})
        empty = lo.new_zeros(lo.shape[0], 0)
        return torch.cat([empty, *lowers], 1), torch.cat([empty, *uppers], 1)

    return layer_bounds(net, lo, hi, bound_units=bound_units
                        if iterations > 0 or slopes is not None else crown_unit_bounds,
                        tighten_with=tighten_with)
