"""Bound propagation on a graph of operators (:class:`models.graph.GraphNet`), operator
by operator: intervals forward, linear relaxations backward (CROWN).

**Intervals** (:func:`interval_bounds`): per node ``(lo, hi)`` of shape ``(N, *shape)``;
an affine operator maps the centre and the radius (``|W|``), a monotone one (ReLU,
sigmoid, tanh, max pooling) maps the ends.

**Backward** (:func:`backward_upper`): an upper bound on ``spec . v_t`` for a node ``t``
over the input box, as ``const + sum A_x x`` maximised over the box, with the
coefficients ``A`` of every node carried as tensors of the node's own shape,
``(N, S, *shape)``, and pushed through each operator by its adjoint: a linear layer by
``A @ W``, a convolution by the transposed convolution, a residual addition by handing
``A`` to both inputs (summed where paths meet), a concatenation by slicing it, a
reshape by a view, padding by a crop, average pooling by the transposed uniform
convolution, a transposed convolution by the convolution, a slice by zeros around it,
nearest upsampling by a sum over each block. No dense matrix of a convolution is built.

Nonlinear operators are relaxed with bounds on their input (``pre``): for ReLU the
triangle with CROWN's adaptive lower slope; for sigmoid and tanh (convex below 0,
concave above) the tangent at the midpoint and the chord on a one-signed interval, and
across 0 the tangent through the far end point (found by bisection) or the chord, as
in CROWN (Zhang et al. 2018), each line sound on the whole interval; for max pooling
the element of largest lower bound below (``max >= z_i``) and the largest upper bound
above, or that element exactly when its lower bound dominates the window. An upper
bound takes each operator's upper line where the coefficient is positive and its lower
line where it is negative.

**Intermediate bounds** (:func:`layer_bounds`): the input of every nonlinear operator is
bounded, in topological order, by a backward pass from it with ``+I`` and ``-I``
specifications (in chunks of rows, so memory stays bounded), or by intervals where it
is one affine operator of the input (exact there), as ``crown`` does on an MLP: on a
network that also folds into one, both give the same bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch.nn import functional as F

from bench.contract import Property, input_box, split_rows
from models.graph import ELEMENTWISE, GraphNet
from verifiers.linear.propagation import SlopeRule, finish_margins, margin_spec

Interval = tuple[torch.Tensor, torch.Tensor]
# bounds ``(lower, upper) (B, U)`` at units ``(U,)`` (None: all) of node ``source`` from
# the relaxations and bounds so far: (net, relaxed, bounds, source, lo, hi, units)
UnitBounds = Callable[[GraphNet, dict[int, tuple], list[Interval], int, torch.Tensor,
                       torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]
CHUNK_ENTRIES = 2_000_000      # max rows x node size per backward pass (memory bound)


# --------------------------------------------------------------------- intervals
def _interval_step(net: GraphNet, index: int, ins: list[Interval]) -> Interval:
    node = net.nodes[index]
    op = node.op
    if op in ("linear", "conv", "deconv"):
        (lo, hi), = ins
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        weight, bias = net.tensor(index, "weight"), net.tensor(index, "bias")
        a = node.attrs
        if op == "linear":
            centre, spread = F.linear(mid, weight, bias), F.linear(rad, weight.abs())
        elif op == "conv":
            centre = F.conv2d(mid, weight, bias, a["stride"], a["padding"], a["dilation"],
                              a["groups"])
            spread = F.conv2d(rad, weight.abs(), None, a["stride"], a["padding"],
                              a["dilation"], a["groups"])
        else:
            centre = F.conv_transpose2d(mid, weight, bias, a["stride"], a["padding"],
                                        a["output_padding"], a["groups"], a["dilation"])
            spread = F.conv_transpose2d(rad, weight.abs(), None, a["stride"], a["padding"],
                                        a["output_padding"], a["groups"], a["dilation"])
        return centre - spread, centre + spread
    if op == "affine":
        (lo, hi), = ins
        scale, offset = net.tensor(index, "scale"), net.tensor(index, "offset")
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        centre, spread = mid * scale + offset, rad * scale.abs()
        return centre - spread, centre + spread
    if op == "add":
        return ins[0][0] + ins[1][0], ins[0][1] + ins[1][1]
    if op == "concat":
        return torch.cat([i[0] for i in ins], 1), torch.cat([i[1] for i in ins], 1)
    # monotone non-decreasing in each input, or a rearrangement: map both ends
    return net.apply(index, [ins[0][0]]), net.apply(index, [ins[0][1]])


def interval_bounds(net: GraphNet, lo: torch.Tensor, hi: torch.Tensor) -> list[Interval]:
    """Per node ``(lo, hi)`` ``(N, *shape)`` for inputs in the box ``lo, hi (N, d)``."""
    shape = (lo.shape[0], *net.input_shape)
    out: list[Interval] = [(lo.reshape(shape), hi.reshape(shape))]
    for index in range(1, len(net.nodes)):
        out.append(_interval_step(net, index, [out[i] for i in net.nodes[index].inputs]))
    return out


# ------------------------------------------------------------------ relaxations
def _crown_slope(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """CROWN's lower slope of a crossing ReLU: 1 if ``u > -l`` else 0."""
    return (hi > -lo).to(lo.dtype)


def _relu_lines(lo: torch.Tensor, hi: torch.Tensor, rule: SlopeRule | None = None
                ) -> tuple[torch.Tensor, ...]:
    """``(a_low, b_low, a_up, b_up)``: ``a_low z + b_low <= relu(z) <= a_up z + b_up``;
    the lower slope of a crossing unit from ``rule(l, u)`` (any value in ``[0, 1]`` is
    sound; default CROWN's)."""
    crossing = (lo < 0) & (hi > 0)
    active = lo >= 0
    slope = torch.where(crossing, hi / (hi - lo).clamp(min=1e-300), active.to(lo.dtype))
    a_up = slope
    b_up = torch.where(crossing, -slope * lo, torch.zeros_like(lo))
    safe_lo = torch.where(crossing, lo, -torch.ones_like(lo))
    safe_hi = torch.where(crossing, hi, torch.ones_like(hi))
    a_low = torch.where(crossing, (rule or _crown_slope)(safe_lo, safe_hi),
                        active.to(lo.dtype))
    return a_low, torch.zeros_like(lo), a_up, b_up


def _derivative(op: str, z: torch.Tensor) -> torch.Tensor:
    if op == "sigmoid":
        s = torch.sigmoid(z)
        return s * (1 - s)
    return 1 - torch.tanh(z) ** 2


def _tangent_through(op: str, fn, anchor: torch.Tensor, start: torch.Tensor,
                     end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A bracket ``(low, high)`` of the point ``d`` between ``start`` and ``end`` whose
    tangent passes through ``(anchor, f(anchor))`` (bisection on ``g(d) = f(d) +
    f'(d)(anchor - d) - f(anchor)``, increasing on a region of one curvature, ``g(start)
    <= 0 <= g(end)``); 60 halvings. The caller takes the end that keeps its line sound."""
    f_anchor = fn(anchor)
    low, high = start.clone(), end.clone()
    g_low = fn(low) + _derivative(op, low) * (anchor - low) - f_anchor
    for _ in range(60):
        mid = (low + high) / 2
        g_mid = fn(mid) + _derivative(op, mid) * (anchor - mid) - f_anchor
        same = torch.sign(g_mid) == torch.sign(g_low)
        low = torch.where(same, mid, low)
        g_low = torch.where(same, g_mid, g_low)
        high = torch.where(same, high, mid)
    return low, high


def _chord(op: str, lo: torch.Tensor, hi: torch.Tensor, f_lo: torch.Tensor,
           f_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The chord of sigmoid or tanh over ``[lo, hi]``: ``(slope, offset)`` (the
    derivative at ``lo`` on an interval narrower than 1e-9)."""
    width = hi - lo
    slope = torch.where(width < 1e-9, _derivative(op, lo),
                        (f_hi - f_lo) / width.clamp(min=1e-300))
    return slope, f_lo - slope * lo


def _crossing_tangents(op: str, lo: torch.Tensor, hi: torch.Tensor, f_lo: torch.Tensor,
                       f_hi: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """For an interval across zero: ``(g_hi, up_bracket (low, high), g_lo, low_bracket)``,
    with ``g_hi >= 0`` iff the tangent at ``hi`` passes above ``(lo, f(lo))`` (an upper
    tangent on the concave part can), ``up_bracket`` the point whose tangent passes
    through ``(lo, f(lo))``; symmetrically ``g_lo <= 0`` and ``low_bracket`` for lower
    tangents on the convex part through ``(hi, f(hi))`` (:func:`_tangent_through`)."""
    fn = ELEMENTWISE[op]
    g_hi = f_hi + _derivative(op, hi) * (lo - hi) - f_lo
    g_lo = f_lo + _derivative(op, lo) * (hi - lo) - f_hi
    up = _tangent_through(op, fn, lo, torch.zeros_like(hi), hi.clamp(min=0))
    low = _tangent_through(op, fn, hi, lo.clamp(max=0), torch.zeros_like(lo))
    return g_hi, up, g_lo, low


def _widened(lines: tuple[torch.Tensor, ...], f_lo: torch.Tensor, f_hi: torch.Tensor
             ) -> tuple[torch.Tensor, ...]:
    """``(a_low, b_low, a_up, b_up)`` with each line moved out by a few ulps of the values
    it touches (rounding)."""
    a_low, b_low, a_up, b_up = lines
    slack = 1e-12 * (1 + f_lo.abs() + f_hi.abs())
    return a_low, b_low - slack, a_up, b_up + slack


def _s_curve_lines(op: str, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Lines below and above sigmoid or tanh on ``[lo, hi]`` (convex for ``z < 0``,
    concave for ``z > 0``), each sound on the whole interval (see the module doc)."""
    fn = ELEMENTWISE[op]
    f_lo, f_hi = fn(lo), fn(hi)
    chord, chord_offset = _chord(op, lo, hi, f_lo, f_hi)
    mid = (lo + hi) / 2
    tangent_slope = _derivative(op, mid)
    tangent_offset = fn(mid) - tangent_slope * mid

    # across zero: the upper line touches the concave part and passes through (lo, f(lo))
    # if the tangent at hi passes above f(lo) there, else the chord is above everything;
    # it stays above f if its tangent point is not past the true one (a steeper slope on
    # the concave part): the bracket's low end. The lower line through (hi, f(hi)): the
    # bracket's high end (a steeper slope)
    g_hi, (d_up, _), g_lo, (_, d_low) = _crossing_tangents(op, lo, hi, f_lo, f_hi)
    up_cross_slope = torch.where(g_hi >= 0, _derivative(op, d_up), chord)
    up_cross_offset = f_lo - up_cross_slope * lo
    low_cross_slope = torch.where(g_lo <= 0, _derivative(op, d_low), chord)
    low_cross_offset = f_hi - low_cross_slope * hi

    convex, concave = hi <= 0, lo >= 0
    a_low = torch.where(convex, tangent_slope, torch.where(concave, chord, low_cross_slope))
    b_low = torch.where(convex, tangent_offset,
                        torch.where(concave, chord_offset, low_cross_offset))
    a_up = torch.where(convex, chord, torch.where(concave, tangent_slope, up_cross_slope))
    b_up = torch.where(convex, chord_offset,
                       torch.where(concave, tangent_offset, up_cross_offset))
    return _widened((a_low, b_low, a_up, b_up), f_lo, f_hi)


def s_curve_tangent_points(op: str, lo: torch.Tensor, hi: torch.Tensor
                           ) -> tuple[torch.Tensor, ...]:
    """Where the optimisable lines of sigmoid or tanh on ``[lo, hi]`` may touch the curve:
    ``(low_from, low_to, up_from, up_to, low_free, up_free)``. A tangent at any point
    of ``[low_from, low_to]`` is a sound lower line (where ``low_free``; elsewhere the
    lower line is the chord), and at any point of ``[up_from, up_to]`` a sound upper line
    (where ``up_free``):

    * convex part (``hi <= 0``): lower tangents anywhere on ``[lo, hi]``, upper = chord;
    * concave part (``lo >= 0``): upper tangents anywhere, lower = chord;
    * across zero: an upper tangent at ``t >= 0`` lies above the concave part and above
      the convex part if it passes above ``(lo, f(lo))``, which holds for ``t`` past the
      point ``t*`` whose tangent passes through it (``g(t) = f(t) + f'(t)(lo - t) -
      f(lo)`` increases in ``t`` there): ``[bracket end >= t*, hi]``, if the tangent at
      ``hi`` passes above ``(lo, f(lo))`` at all, else the chord. Symmetrically for the
      lower line on ``[lo, bracket end <= t*_low]``.
    """
    fn = ELEMENTWISE[op]
    f_lo, f_hi = fn(lo), fn(hi)
    convex, concave = hi <= 0, lo >= 0
    narrow = (hi - lo) < 1e-9
    g_hi, (_, up_start), g_lo, (low_end, _) = _crossing_tangents(op, lo, hi, f_lo, f_hi)
    crossing = ~convex & ~concave
    low_free = ~narrow & (convex | (crossing & (g_lo <= 0)))
    up_free = ~narrow & (concave | (crossing & (g_hi >= 0)))
    low_to = torch.where(convex, hi, low_end)
    up_from = torch.where(concave, lo, up_start)
    return lo, low_to, up_from, hi, low_free, up_free


def s_curve_lines_at(op: str, lo: torch.Tensor, hi: torch.Tensor,
                     points: tuple[torch.Tensor, ...], alpha_low: torch.Tensor,
                     alpha_up: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Lines below and above sigmoid or tanh on ``[lo, hi]`` with the tangent points
    chosen by ``alpha_low, alpha_up`` in ``[0, 1]`` along the ranges of
    :func:`s_curve_tangent_points` (``points``; broadcast against the alphas), the chord
    where no tangent is free; widened by a few ulps as :func:`_s_curve_lines`.
    Differentiable in the alphas (alpha-CROWN for smooth activations)."""
    fn = ELEMENTWISE[op]
    low_from, low_to, up_from, up_to, low_free, up_free = points
    f_lo, f_hi = fn(lo), fn(hi)
    chord, chord_offset = _chord(op, lo, hi, f_lo, f_hi)
    t_low = low_from + alpha_low * (low_to - low_from)
    t_up = up_from + alpha_up * (up_to - up_from)
    slope_low, slope_up = _derivative(op, t_low), _derivative(op, t_up)
    a_low = torch.where(low_free, slope_low, chord)
    b_low = torch.where(low_free, fn(t_low) - slope_low * t_low, chord_offset)
    a_up = torch.where(up_free, slope_up, chord)
    b_up = torch.where(up_free, fn(t_up) - slope_up * t_up, chord_offset)
    return _widened((a_low, b_low, a_up, b_up), f_lo, f_hi)


def relaxation(net: GraphNet, index: int, pre: Interval, rule: SlopeRule | None = None
               ) -> tuple:
    """The relaxation of nonlinear node ``index`` given bounds ``pre`` on its input
    (``rule``: the ReLU lower slope, as for :func:`_relu_lines`)."""
    op = net.nodes[index].op
    if op == "relu":
        return _relu_lines(*pre, rule)
    if op in ("sigmoid", "tanh"):
        return _s_curve_lines(op, *pre)
    if op == "maxpool":
        return _maxpool_relaxation(net, index, pre)
    raise ValueError(f"node {index}: no relaxation for {op!r}")


def _windows(t: torch.Tensor, kernel, stride, padding, fill: float) -> torch.Tensor:
    """``t (N, C, H, W)`` as its pooling windows ``(N, C, kh * kw, L)``, padded with
    ``fill``."""
    n, c = t.shape[:2]
    padded = F.pad(t, (padding[1], padding[1], padding[0], padding[0]), value=fill)
    return F.unfold(padded.reshape(n * c, 1, *padded.shape[2:]), kernel, stride=stride
                    ).reshape(n, c, kernel[0] * kernel[1], -1)


def _maxpool_relaxation(net: GraphNet, index: int, pre: Interval) -> tuple:
    """``(indices, dominant, upper)``, each ``(N, C, H_out, W_out)``: per output the flat
    input index (within its channel) of the window's element of largest lower bound,
    whether that element dominates its window (its lower bound >= the upper bound of
    every other element of the window, so the output equals it), and the window's
    largest upper bound."""
    node = net.nodes[index]
    a = node.attrs
    lo, hi = pre
    windows_lo = _windows(lo, a["kernel"], a["stride"], a["padding"], -math.inf)
    windows_hi = _windows(hi, a["kernel"], a["stride"], a["padding"], -math.inf)
    best_lo, position = windows_lo.max(dim=2)                            # (N, C, L)
    upper = windows_hi.max(dim=2).values
    others = windows_hi.scatter(2, position.unsqueeze(2), -math.inf).max(dim=2).values
    height, width = lo.shape[2:]
    where = torch.arange(height * width, dtype=lo.dtype, device=lo.device)
    windows_at = _windows(where.reshape(1, 1, height, width), a["kernel"], a["stride"],
                          a["padding"], -1.0)[0, 0]                      # (kh * kw, L)
    chosen = windows_at.gather(0, position.reshape(-1, position.shape[-1])
                               ).reshape(position.shape).long()
    out = (lo.shape[0], *node.shape)
    return chosen.reshape(out), (best_lo >= others).reshape(out), upper.reshape(out)


# --------------------------------------------------------------------- backward
def transposed_conv(coef: torch.Tensor, weight: torch.Tensor, shape: tuple[int, ...],
                    stride, padding, dilation, groups: int) -> torch.Tensor:
    """The adjoint of ``conv2d(., weight, stride, padding, dilation, groups)`` on inputs
    of per-sample ``shape (C, H, W)``, applied to ``coef (M, C_out, H', W')``: ``(M, C, H,
    W)``. The same numbers as ``conv_transpose2d`` with the output padding that gives
    ``shape``, through convolution's input gradient, which in float64 torch runs 1.4x to
    3.6x faster on these shapes (``conv_transpose2d`` takes its slow path there)."""
    return torch.nn.grad.conv2d_input((coef.shape[0], *shape), weight, coef, stride,
                                      padding, dilation, groups)


def _adjoint(net: GraphNet, index: int, coef: torch.Tensor, in_shapes: list[tuple]
             ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Coefficients on the inputs of affine node ``index`` from ``coef (B, S, *shape)``,
    and the constant ``(B, S)`` it contributes."""
    node = net.nodes[index]
    a = node.attrs
    batch, rows = coef.shape[:2]
    zero = coef.new_zeros(batch, rows)
    if node.op == "linear":
        weight, bias = net.tensor(index, "weight"), net.tensor(index, "bias")
        return [coef @ weight], coef @ bias
    if node.op == "conv":
        weight, bias = net.tensor(index, "weight"), net.tensor(index, "bias")
        shape = in_shapes[0]
        back = transposed_conv(coef.reshape(batch * rows, *node.shape), weight, shape,
                               a["stride"], a["padding"], a["dilation"], a["groups"])
        const = zero if bias is None else (coef.sum(dim=(-1, -2)) @ bias)
        return [back.reshape(batch, rows, *shape)], const
    if node.op == "deconv":              # the adjoint of a transposed convolution: a conv
        weight, bias = net.tensor(index, "weight"), net.tensor(index, "bias")
        flat = coef.reshape(batch * rows, *node.shape)
        back = F.conv2d(flat, weight, None, a["stride"], a["padding"], a["dilation"],
                        a["groups"])
        const = zero if bias is None else (coef.sum(dim=(-1, -2)) @ bias)
        return [back.reshape(batch, rows, *in_shapes[0])], const
    if node.op == "slice":               # zeros outside the slice
        whole = coef.new_zeros(batch, rows, *in_shapes[0])
        whole.narrow(a["axis"] + 2, a["start"], a["end"] - a["start"]).copy_(coef)
        return [whole], zero
    if node.op == "upsample":            # each input value: the sum over its block
        channels, height, width = in_shapes[0]
        sh, sw = a["scale"]
        return [coef.reshape(batch, rows, channels, height, sh, width, sw).sum(dim=(4, 6))], \
            zero
    if node.op == "affine":
        scale = net.tensor(index, "scale").expand(node.shape)
        offset = net.tensor(index, "offset").expand(node.shape)
        return [coef * scale], (coef * offset).flatten(2).sum(-1)
    if node.op == "add":
        return [coef, coef], zero
    if node.op == "concat":                  # each input takes its slice of the channels
        sizes = [shape[0] for shape in in_shapes]
        return list(coef.split(sizes, dim=2)), zero
    if node.op == "reshape":
        return [coef.reshape(batch, rows, *in_shapes[0])], zero
    if node.op == "transpose":
        inverse = [0] * len(a["perm"])
        for position, axis in enumerate(a["perm"]):
            inverse[axis] = position
        return [coef.permute(0, 1, *[p + 2 for p in inverse])], zero
    if node.op == "pad":
        top, left, bottom, right = a["pads"]
        height, width = node.shape[1], node.shape[2]
        return [coef[..., top:height - bottom, left:width - right]], zero
    if node.op == "avgpool":
        channels = node.shape[0]
        kernel = a["kernel"]
        uniform = coef.new_full((channels, 1, *kernel), 1.0 / (kernel[0] * kernel[1]))
        shape = in_shapes[0]
        back = transposed_conv(coef.reshape(batch * rows, *node.shape), uniform, shape,
                               a["stride"], a["padding"], (1, 1), channels)
        return [back.reshape(batch, rows, *shape)], zero
    raise ValueError(f"node {index}: {node.op!r} is not affine")


def backward_upper(net: GraphNet, relaxed: dict[int, tuple], target: int,
                   spec: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *,
                   record: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Upper bound ``(B, S)`` on ``spec[b] . v_target`` over the box ``lo, hi (B, d)``;
    ``spec (B, S, *shape of target)``; ``relaxed``: the relaxation of every nonlinear
    node that ``target`` depends on (:func:`relaxation`). ``record``, if given, receives
    the coefficients ``(B, S, *shape)`` on the output of every ReLU, sigmoid and tanh
    node on the way (for branching scores)."""
    return box_maximum(*linear_form(net, relaxed, target, spec, record=record), lo, hi)


def box_maximum(coef: torch.Tensor | None, const: torch.Tensor, lo: torch.Tensor,
                hi: torch.Tensor) -> torch.Tensor:
    """``max_{x in [lo, hi]} A x + c`` ``(B, S)`` for ``A (B, S, d)`` (or ``None``: no
    dependence on ``x``), ``c (B, S)``, ``lo, hi (B, d)``."""
    if coef is None:
        return const
    mid, rad = ((hi + lo) / 2).unsqueeze(-1), ((hi - lo) / 2).unsqueeze(-1)
    return const + (coef @ mid).squeeze(-1) + (coef.abs() @ rad).squeeze(-1)


def linear_form(net: GraphNet, relaxed: dict[int, tuple], target: int, spec: torch.Tensor,
                *, record: dict[int, torch.Tensor] | None = None,
                split_terms: dict[int, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(A (B, S, d), c (B, S))`` with ``spec[b] . v_target <= A[b] x + c[b]`` for every
    ``x`` in the box the relaxations were computed for (an equality where every
    nonlinear node on the way is linear there, e.g. every ReLU split or stable);
    ``A`` is ``None`` if the target does not depend on the input.

    ``split_terms``: per ReLU node ``beta * sign`` ``(B, S, *shape)`` for split
    constraints ``sign * zhat >= 0`` (``beta >= 0``, zero where a unit is not split),
    added to the coefficients of the ReLU's input ``zhat``: the Lagrangian of the splits
    (beta-CROWN), an upper bound over the points that satisfy them."""
    batch, rows = spec.shape[:2]
    coefs: dict[int, torch.Tensor] = {target: spec}
    const = spec.new_zeros(batch, rows)
    for index in range(target, 0, -1):
        coef = coefs.pop(index, None)
        if coef is None:
            continue
        node = net.nodes[index]
        if record is not None and node.op in ELEMENTWISE:
            record[index] = coef
        if node.op in ELEMENTWISE:      # per row already (alpha-CROWN's slopes) or shared
            a_low, b_low, a_up, b_up = (t if t.dim() == coef.dim() else t.unsqueeze(1)
                                        for t in relaxed[index])
            positive = coef.clamp(min=0)
            if node.op == "relu":                 # the lower line passes through 0
                const = const + (positive * b_up).flatten(2).sum(-1)
            else:
                const = const + (positive * b_up + (coef - positive) * b_low).flatten(2).sum(-1)
            ins = [coef * torch.where(coef > 0, a_up, a_low)]     # upper line where > 0
            if split_terms is not None and index in split_terms:
                ins[0] = ins[0] + split_terms[index]
        elif node.op == "maxpool":
            indices, dominant, upper = (t.unsqueeze(1) for t in relaxed[index])
            positive = torch.where(dominant, torch.zeros_like(coef), coef.clamp(min=0))
            const = const + (positive * upper).flatten(2).sum(-1)
            moved = coef - positive                       # negative, or all if dominant
            shape = net.nodes[node.inputs[0]].shape
            flat = coef.new_zeros(batch, rows, shape[0], shape[1] * shape[2])
            flat.scatter_add_(3, indices.expand_as(moved).flatten(3), moved.flatten(3))
            ins = [flat.reshape(batch, rows, *shape)]
        else:
            ins, extra = _adjoint(net, index, coef,
                                  [net.nodes[i].shape for i in node.inputs])
            const = const + extra
        for source, value in zip(node.inputs, ins):
            coefs[source] = coefs[source] + value if source in coefs else value
    coef = coefs.get(0)
    return (None if coef is None else coef.reshape(batch, rows, -1)), const


def layer_bounds(net: GraphNet, lo: torch.Tensor, hi: torch.Tensor,
                 rule: SlopeRule | None = None, *, prune: bool = True,
                 bound_units: UnitBounds | None = None,
                 tighten_with: list[Interval] | None = None
                 ) -> tuple[list[Interval], dict[int, tuple]]:
    """Bounds on every node (intervals, tightened by CROWN at the inputs of nonlinear
    nodes) and the relaxation of every nonlinear node, for the box ``lo, hi (B, d)``.

    ``prune`` (the default): after each nonlinear node, the intervals of the nodes after
    it are propagated again from the tightened bounds and intersected with what they
    had; at a ReLU's input only the units that interval calls crossing zero (in some box
    of the batch) get a backward pass, the others keep their interval, on which the
    ReLU is exactly linear; every bound is the intersection of the two (sound: both
    hold). ``prune=False``: CROWN's bounds at every input of a nonlinear node, not
    intersected, exactly as :mod:`verifiers.linear.propagation` computes them for an
    MLP (the cross-check of the two engines). Pruned, the boxes of a batch are bounded
    one at a time (the units crossing zero differ from box to box).

    ``bound_units`` computes the bounds at a nonlinear node's input (default
    :func:`crown_unit_bounds`; any sound bounds serve, e.g. optimised slopes,
    :func:`verifiers.linear.graph_optimisation.optimised_layer_bounds`).
    ``tighten_with``: sound bounds of every node ``(B, *shape)`` known already (e.g.
    CROWN's, under optimised bounds: tighter bounds before a node do not always make
    its CROWN bound tighter), intersected with every node's from the start."""
    batch = lo.shape[0]
    bound_units = bound_units or crown_unit_bounds
    if prune and batch > 1:
        return joined_boxes([layer_bounds(
            net, lo[b:b + 1], hi[b:b + 1], rule, bound_units=bound_units,
            tighten_with=None if tighten_with is None else [(low[b:b + 1], up[b:b + 1])
                                                            for low, up in tighten_with])
            for b in range(batch)])
    bounds = interval_bounds(net, lo, hi)
    if tighten_with is not None:
        bounds = [(torch.maximum(low, known_lo), torch.minimum(up, known_hi))
                  for (low, up), (known_lo, known_hi) in zip(bounds, tighten_with)]
    relaxed: dict[int, tuple] = {}
    for index, node in enumerate(net.nodes):
        if node.op not in (*ELEMENTWISE, "maxpool"):
            continue
        source = node.inputs[0]
        direct = net.nodes[source].inputs == (0,) and net.nodes[source].op in (
            "linear", "conv", "affine", "reshape", "pad")      # intervals are exact there
        if not direct:
            lower, upper = bounds[source]
            units = None
            if prune and node.op == "relu":
                crossing = ((lower < 0) & (upper > 0)).reshape(batch, -1).any(0)
                units = torch.nonzero(crossing).flatten()
            crown_lower, crown_upper = bound_units(net, relaxed, bounds, source, lo, hi, units)
            if prune:
                shape = lower.shape
                new_lower, new_upper = lower.reshape(batch, -1).clone(), \
                    upper.reshape(batch, -1).clone()
                chosen = slice(None) if units is None else units
                new_lower[:, chosen] = torch.maximum(new_lower[:, chosen], crown_lower)
                new_upper[:, chosen] = torch.minimum(new_upper[:, chosen], crown_upper)
                bounds[source] = (new_lower.reshape(shape), new_upper.reshape(shape))
            else:                                 # CROWN's, as for an MLP (not intersected)
                bounds[source] = (crown_lower.reshape(lower.shape),
                                  crown_upper.reshape(upper.shape))
                if tighten_with is not None:
                    bounds[source] = (torch.maximum(bounds[source][0], tighten_with[source][0]),
                                      torch.minimum(bounds[source][1], tighten_with[source][1]))
        # the nonlinear node's own interval follows from its input's
        bounds[index] = (net.apply(index, [bounds[source][0]]),
                         net.apply(index, [bounds[source][1]]))
        relaxed[index] = relaxation(net, index, bounds[source], rule)
        if prune:
            _tighten_after(net, bounds, index)
    return bounds, relaxed


def joined_boxes(parts: list[tuple[list[Interval], dict[int, tuple]]]
                 ) -> tuple[list[Interval], dict[int, tuple]]:
    """Bounds and relaxations of boxes computed one at a time, joined into a batch."""
    bounds = [(torch.cat([p[0][i][0] for p in parts]), torch.cat([p[0][i][1] for p in parts]))
              for i in range(len(parts[0][0]))]
    relaxed = {index: tuple(torch.cat([p[1][index][k] for p in parts])
                            for k in range(len(parts[0][1][index])))
               for index in parts[0][1]}
    return bounds, relaxed


def unit_chunks(net: GraphNet, source: int, units: torch.Tensor | None, batch: int,
                entries: int = CHUNK_ENTRIES, width: int | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The units ``units (U,)`` of node ``source`` (flat indices; ``None``: all of them)
    in chunks of at most ``entries`` rows times ``width`` (default: the node's size)
    times ``batch``: per chunk its flat indices ``(u,)`` and the specification ``(batch,
    2u, *shape)`` of the rows ``+e_i`` (first ``u``) and ``-e_i`` (last ``u``)."""
    shape = net.nodes[source].shape
    size = math.prod(shape)
    chosen = torch.arange(size) if units is None else units
    rows = max(1, entries // max((width or size) * batch, 1))
    for start in range(0, len(chosen), rows):
        part_units = chosen[start:start + rows]
        part = torch.zeros(len(part_units), size, dtype=torch.float64)
        part[torch.arange(len(part)), part_units] = 1.0
        part = part.reshape(-1, *shape)
        yield part_units, torch.cat([part, -part]).expand(batch, *([-1] * (len(shape) + 1)))


def crown_unit_bounds(net: GraphNet, relaxed: dict[int, tuple], bounds: list[Interval],
                      source: int, lo: torch.Tensor, hi: torch.Tensor,
                      units: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN's ``(lower, upper)`` ``(B, U)`` on the units ``units (U,)`` of node
    ``source`` (flat indices; ``None``: all of them) over the boxes ``lo, hi (B, d)``,
    in chunks (:func:`unit_chunks`). ``bounds`` (every node's, so far) is not needed
    here; it is part of the :data:`UnitBounds` signature."""
    uppers, lowers = [lo.new_zeros(lo.shape[0], 0)], [lo.new_zeros(lo.shape[0], 0)]
    for part, spec in unit_chunks(net, source, units, lo.shape[0]):
        both = backward_upper(net, relaxed, source, spec.to(lo.dtype), lo, hi)
        uppers.append(both[:, :len(part)])
        lowers.append(-both[:, len(part):])
    return torch.cat(lowers, 1), torch.cat(uppers, 1)


def _tighten_after(net: GraphNet, bounds: list[Interval], index: int) -> None:
    """In place: the intervals of the nodes after ``index`` propagated again from the
    current bounds, intersected with the ones they had."""
    for later in range(index + 1, len(net.nodes)):
        step = _interval_step(net, later, [bounds[i] for i in net.nodes[later].inputs])
        bounds[later] = (torch.maximum(bounds[later][0], step[0]),
                         torch.minimum(bounds[later][1], step[1]))


def expanded_for(bounds: list[Interval], splits: dict[int, torch.Tensor],
                 ranges: dict[int, Interval]) -> list[Interval]:
    """Bounds of a common box (batch 1) expanded to the ``B`` subdomains whose ReLU split
    signs ``splits`` and sigmoid/tanh ranges ``ranges`` (``(B, *shape)`` each) describe
    (to 1 if there are neither)."""
    batch = next(iter([*splits.values(), *(r[0] for r in ranges.values())])).shape[0] \
        if splits or ranges else 1
    return [(lo.expand(batch, *lo.shape[1:]), hi.expand(batch, *hi.shape[1:]))
            for lo, hi in bounds]


def clamped_to_splits(pair: Interval, sign: torch.Tensor | None = None,
                      ranges: Interval | None = None) -> Interval:
    """Bounds ``(B, *shape)`` of a nonlinear node's input clamped to the subdomains'
    ReLU split signs ``sign`` (``+1``: ``>= 0``, ``-1``: ``<= 0``, 0 free) and
    intersected with their sigmoid/tanh ``ranges`` (``±inf`` where a unit is free)."""
    lower, upper = pair
    if sign is not None:
        lower = torch.where(sign > 0, lower.clamp(min=0), lower)
        upper = torch.where(sign < 0, upper.clamp(max=0), upper)
    if ranges is not None:
        lower, upper = torch.maximum(lower, ranges[0]), torch.minimum(upper, ranges[1])
    return lower, upper


def split_relaxation(net: GraphNet, bounds: list[Interval], splits: dict[int, torch.Tensor],
                     ranges: dict[int, Interval] | None = None
                     ) -> tuple[list[Interval], dict[int, tuple]]:
    """Relaxations for a batch of subdomains ``(B, ...)`` from bounds computed once for
    their common box (``bounds``: per node, batch 1; valid on every subdomain, each a
    subset), with each split unit's input bound clamped to its sign (``splits``: per ReLU
    node, ``(B, *shape)`` with ``+1`` where its input is assumed ``>= 0``, ``-1`` where
    ``<= 0``, ``0`` free; a split unit is then linear). Returns the clamped bounds (per
    node, batch ``B``) and the relaxations. Later layers keep the common bounds: sound,
    and one backward pass per subdomain instead of one per layer. ``ranges``: per
    sigmoid/tanh node, the ranges ``(B, *shape)`` each (``±inf``: not split) its input
    is split to, intersected with its bounds likewise."""
    ranges = ranges or {}
    out = expanded_for(bounds, splits, ranges)
    relaxed: dict[int, tuple] = {}
    for index, node in enumerate(net.nodes):
        if node.op not in (*ELEMENTWISE, "maxpool"):
            continue
        source = node.inputs[0]
        out[source] = clamped_to_splits(out[source], splits.get(index), ranges.get(index))
        relaxed[index] = relaxation(net, index, out[source])
    return out, relaxed


# ----------------------------------------------------------------- specifications
def _in_float64(net: GraphNet) -> GraphNet:
    return net if next(net.parameters()).dtype == torch.float64 else net.float64_copy()


def graph_margin_bounds(net: GraphNet, x: torch.Tensor, y: torch.Tensor, eps: float,
                        clip: bool = True, crown: bool = True,
                        rule: SlopeRule | None = None, prune: bool = True) -> torch.Tensor:
    """``U (N, K)`` float64 upper bounds on ``f_j - f_y`` over ``B_eps(x) (∩ [0,1]^d)``,
    by linear relaxation (``crown``; ReLU lower slopes by ``rule``, default CROWN's;
    intermediate bounds as :func:`layer_bounds` with ``prune``) or intervals; ``-inf`` at
    the label."""
    net = _in_float64(net)
    x = x.to(torch.float64).reshape(x.shape[0], -1)
    lo, hi = input_box(x, eps, clip)
    spec = margin_spec(y, net.num_classes, torch.float64)             # (N, K, K)
    if crown:
        _, relaxed = layer_bounds(net, lo, hi, rule=rule, prune=prune)
        upper = backward_upper(net, relaxed, len(net.nodes) - 1, spec, lo, hi)
    else:
        out_lo, out_hi = interval_bounds(net, lo, hi)[-1]
        upper = (spec.clamp(min=0) @ out_hi.unsqueeze(-1) + spec.clamp(max=0)
                 @ out_lo.unsqueeze(-1)).squeeze(-1)
    return finish_margins(upper, y)


def graph_property_bounds(net: GraphNet, prop: Property, crown: bool = True,
                          rule: SlopeRule | None = None, prune: bool = True
                          ) -> list[torch.Tensor]:
    """Per group of ``prop``, ``(r_g,)`` float64 upper bounds on ``c_i . f(x) - d_i``
    (as :func:`graph_margin_bounds`)."""
    net = _in_float64(net)
    lo, hi = prop.lo.to(torch.float64)[None], prop.hi.to(torch.float64)[None]
    rows, offsets, sizes = split_rows(prop)
    with torch.no_grad():
        if crown:
            _, relaxed = layer_bounds(net, lo, hi, rule=rule, prune=prune)
            upper = backward_upper(net, relaxed, len(net.nodes) - 1, rows[None], lo, hi)[0]
        else:
            out_lo, out_hi = interval_bounds(net, lo, hi)[-1]
            upper = rows.clamp(min=0) @ out_hi[0] + rows.clamp(max=0) @ out_lo[0]
    return list((upper - offsets).split(sizes))
