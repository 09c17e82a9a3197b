"""Bound propagation through ReLU MLPs of any depth: intervals and linear relaxations.

The input set is the box ``[lo, hi] = B_eps(x) ∩ [0, 1]^d`` (or the bare ball with
``clip=False``). Layers are ``z_{-1} = x``, ``zhat_k = W_k z_{k-1} + b_k`` and
``z_k = relu(zhat_k)`` for hidden layers ``k = 0 .. L-1``; the output is
``W_L z_{L-1} + b_L``.

:func:`backward_upper` bounds ``max c^T f(x')`` for rows ``c`` of a specification by
one backward pass (the dual network of Wong & Kolter 2017; CROWN of Zhang et al.
2018). Given pre-activation bounds ``l <= zhat <= u``, a crossing unit (``l < 0 < u``)
is relaxed by ``alpha * zhat <= relu(zhat) <= s * (zhat - l)`` with ``s = u / (u - l)``;
an upper bound takes the upper line where its coefficient is positive and the lower
line where it is negative. ``alpha = s`` is Wong-Kolter's dual network (``lp``);
``alpha = 1[u > -l]`` is CROWN's adaptive choice (``crown``). Any ``alpha`` in
``[0, 1]`` gives a sound upper bound. Every function is differentiable in the
weights (for training) and works in the dtype of ``x``.
"""

from __future__ import annotations

from typing import Callable, cast

import torch

from bench.contract import Property, input_box, split_rows
from models import MLP

Bounds = list[tuple[torch.Tensor, torch.Tensor]]           # per hidden layer: (l, u), (N, m_k)
SlopeRule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Relaxed = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def layer_params(net: MLP, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(W_k (m_k, m_{k-1}), b_k (m_k,))]`` in ``dtype``, keeping the autograd graph."""
    return [(cast(torch.Tensor, layer.weight).to(dtype), cast(torch.Tensor, layer.bias).to(dtype))
            for layer in net.linears]


def interval_bounds(params, lo: torch.Tensor, hi: torch.Tensor) -> Bounds:
    """Interval arithmetic: pre-activation bounds of every layer, hidden and output."""
    out: Bounds = []
    z_lo, z_hi = lo, hi
    for k, (w, b) in enumerate(params):
        mid, rad = (z_hi + z_lo) / 2, (z_hi - z_lo) / 2
        centre, spread = mid @ w.T + b, rad @ w.abs().T
        out.append((centre - spread, centre + spread))
        z_lo, z_hi = out[-1][0].clamp(min=0), out[-1][1].clamp(min=0)
    return out


def wong_kolter_slope(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """``alpha = u / (u - l)``, the dual network's choice (same slope as the upper line)."""
    return upper / (upper - lower)


def crown_slope(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """``alpha = 1`` if ``u > -l`` else ``0``: the smaller-area lower line (CROWN)."""
    return (upper > -lower).to(upper.dtype)


def _upper_lines(lower: torch.Tensor, upper: torch.Tensor) -> Relaxed:
    """``(s, offset, crossing, active)`` per unit, each ``(N, m)``: the upper line
    ``relu <= s * zhat + offset`` (``s = u / (u - l)``, ``offset = -s * l`` on crossing
    units; the identity on stable active units, zero on stable inactive ones), the
    crossing units (bool) and the stable active ones (1.0, else 0.0)."""
    active = (lower >= 0).to(upper.dtype)
    crossing = (lower < 0) & (upper > 0)
    safe_gap = torch.where(crossing, upper - lower, torch.ones_like(upper))
    s = torch.where(crossing, upper / safe_gap, active)
    offset = torch.where(crossing, -s * lower, torch.zeros_like(upper))
    return s, offset, crossing, active


def relaxation(lower: torch.Tensor, upper: torch.Tensor, rule: SlopeRule
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(upper_slope, upper_offset, lower_slope)`` per unit, each ``(N, m)``.

    Stable active units are the identity, stable inactive units zero, crossing units
    get ``relu <= s * zhat - s * l`` and ``relu >= alpha * zhat``.
    """
    s, offset, crossing, active = _upper_lines(lower, upper)
    alpha = torch.where(crossing, rule(torch.where(crossing, lower, -torch.ones_like(lower)),
                                       torch.where(crossing, upper, torch.ones_like(upper))),
                        active)
    return s, offset, alpha


def fixed_relaxation(bounds: Bounds) -> list[Relaxed]:
    """Per hidden layer, the parts of the relaxation that the bounds alone fix, each
    ``(N, 1, m_k)`` (one entry for all rows): the upper slope ``s`` and offset ``-s * l``
    (as in :func:`relaxation`), the crossing units (bool) and the stable active units
    (1.0, else 0.0). An optimiser that evaluates :func:`backward_upper` many times on
    the same bounds computes them once (``relaxed=``)."""
    return [cast(Relaxed, tuple(t.unsqueeze(1) for t in _upper_lines(lower, upper)))
            for lower, upper in bounds]


def projected(values: torch.Tensor, low: float | None = None, high: float | None = None
              ) -> torch.Tensor:
    """``values`` clamped to ``[low, high]`` (exactly ``clamp``'s values), with the
    gradient of the identity: the convention of a projected gradient step. The
    optimisers of slopes and multipliers keep their variables inside the bounds and
    start them on the bounds (CROWN's slopes 0 or 1, multipliers 0), where torch 2.14
    gives ``clamp`` a zero gradient (2.13 gave one): with ``clamp`` there, no variable
    ever moved and alpha-CROWN equalled CROWN (measured on torch 2.14.1)."""
    return values.clamp(low, high).detach() + (values - values.detach())


def free_slopes(relaxed: Relaxed, free: torch.Tensor) -> torch.Tensor:
    """Lower-line slopes ``(N, S, m)``: ``free (N or 1, S or 1, m)`` clamped to ``[0, 1]``
    (:func:`projected`) on crossing units, 1 on stable active units, 0 on stable
    inactive ones."""
    _, _, crossing, active = relaxed
    return torch.where(crossing, projected(free, 0, 1), active)


def lower_slopes(lower: torch.Tensor, upper: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """:func:`free_slopes` for the bounds ``lower, upper (N, m)``."""
    return free_slopes(fixed_relaxation([(lower, upper)])[0], free)


def backward_upper(params, bounds: Bounds, spec: torch.Tensor, lo: torch.Tensor,
                   hi: torch.Tensor, rule: SlopeRule | None = None, *,
                   slopes: list[torch.Tensor] | None = None,
                   split_coef: list[torch.Tensor | None] | None = None,
                   record: list[torch.Tensor] | None = None,
                   relaxed: list[Relaxed] | None = None) -> torch.Tensor:
    """Upper bound on ``spec[n] @ g(x')`` over the box, for ``g`` the first ``len(params)``
    layers (the last one affine, no ReLU after it).

    ``params``: ``[(W_k, b_k)]``; ``bounds``: pre-activation bounds of the hidden layers
    ``0 .. len(params) - 2``; ``spec``: ``(N, S, out)``. Returns ``(N, S)``.

    The lower ReLU lines come from ``rule`` (one slope per unit) or from ``slopes``
    (per hidden layer, ``(N or 1, S or 1, m_k)``, one per unit *and* row: alpha-CROWN).
    ``split_coef`` (per hidden layer, ``(N, S, m_k)`` or ``None``) is added to the
    coefficients of ``zhat_k``: with ``beta * sigma`` for split units (``sigma = +1``
    for ``zhat >= 0``, ``-1`` for ``zhat <= 0``, ``beta >= 0``) the result bounds the
    Lagrangian ``spec . g + sum beta sigma zhat``, which is ``>= spec . g`` on the
    subdomain (beta-CROWN). ``record``, if given, receives each hidden layer's
    coefficients on ``z_k`` ``(N, S, m_k)``, last layer first (for branching scores).
    ``relaxed``: :func:`fixed_relaxation` of ``bounds``, if already computed (with
    ``slopes`` only).
    """
    if slopes is not None and relaxed is None:
        relaxed = fixed_relaxation(bounds)
    w_last, b_last = params[-1]
    const = spec @ b_last                                    # (N, S)
    coef = spec @ w_last                                     # (N, S, m_{L-1})
    for k in range(len(params) - 2, -1, -1):
        if record is not None:
            record.append(coef)
        if relaxed is None:
            assert rule is not None, "backward_upper needs a slope rule or slopes"
            s, offset, alpha = (t.unsqueeze(1) for t in relaxation(*bounds[k], rule))
        else:
            assert slopes is not None
            s, offset = relaxed[k][:2]
            alpha = free_slopes(relaxed[k], slopes[k])
        positive, negative = coef.clamp(min=0), coef.clamp(max=0)
        const = const + (positive * offset).sum(-1)
        coef = positive * s + negative * alpha
        if split_coef is not None and split_coef[k] is not None:
            coef = coef + split_coef[k]
        w, b = params[k]
        const = const + coef @ b
        coef = coef @ w
    if record is not None:
        record.append(coef)
    mid, rad = ((hi + lo) / 2).unsqueeze(-1), ((hi - lo) / 2).unsqueeze(-1)
    return const + (coef @ mid).squeeze(-1) + (coef.abs() @ rad).squeeze(-1)


def linear_layer_bounds(params, lo: torch.Tensor, hi: torch.Tensor, rule: SlopeRule,
                        tighten_with: Bounds | None = None) -> Bounds:
    """Pre-activation bounds of every hidden layer by backward passes, layer by layer.

    Layer ``k >= 1``'s bounds use ``+I`` and ``-I`` specifications on the sub-network up
    to it, relaxed with the bounds of the layers before; layer 0 is affine in the input
    box, so its interval bounds are exact. ``tighten_with`` (e.g. the
    interval bounds) is intersected in, which keeps every bound sound and only tighter.
    """
    bounds: Bounds = []
    n = lo.shape[0]
    for k in range(len(params) - 1):
        if k == 0:   # an affine map of a box: the interval is exact, and ±I would cost O(m d)
            bounds.append(interval_bounds(params[:1], lo, hi)[0])
            continue
        width = params[k][0].shape[0]
        eye = torch.eye(width, dtype=lo.dtype, device=lo.device).expand(n, width, width)
        both = backward_upper(params[:k + 1], bounds, torch.cat([eye, -eye], dim=1), lo, hi,
                              rule)
        lower, upper = -both[:, width:], both[:, :width]
        if tighten_with is not None:
            lower = torch.maximum(lower, tighten_with[k][0])
            upper = torch.minimum(upper, tighten_with[k][1])
        bounds.append((lower, upper))
    return bounds


def margin_spec(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``C (N, K, K)`` with ``C[n, j] = e_j - e_{y_n}`` (the row ``j = y_n`` is zero)."""
    eye = torch.eye(num_classes, dtype=dtype)
    return eye.unsqueeze(0) - eye[y].unsqueeze(1)


def finish_margins(upper: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Put ``-inf`` in each sample's label column of ``U (N, K)``."""
    return upper.scatter(1, y.view(-1, 1), float("-inf"))


def margin_upper_bounds(net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float,
                        rule: SlopeRule, clip: bool = True) -> torch.Tensor:
    """``U (N, K)`` for ``f_j - f_y`` by linear relaxation with ``rule``; label column ``-inf``.

    In the dtype of ``x`` and differentiable in the weights.
    """
    params = layer_params(net, x.dtype)
    lo, hi = input_box(x, eps, clip)
    bounds = linear_layer_bounds(params, lo, hi, rule)
    spec = margin_spec(y, net.num_classes, x.dtype)
    return finish_margins(backward_upper(params, bounds, spec, lo, hi, rule), y)


def property_upper_bounds(net: MLP, prop: Property, rule: SlopeRule) -> list[torch.Tensor]:
    """Per group, ``(r_g,)`` float64 upper bounds on ``max_{x in box} c_i . f(x) - d_i``."""
    params = layer_params(net, torch.float64)
    lo, hi = prop.lo.to(torch.float64)[None], prop.hi.to(torch.float64)[None]
    rows, offsets, sizes = split_rows(prop)
    with torch.no_grad():
        bounds = linear_layer_bounds(params, lo, hi, rule)
        upper = backward_upper(params, bounds, rows[None], lo, hi, rule)[0] - offsets
    return list(upper.split(sizes))
