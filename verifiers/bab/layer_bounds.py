"""Pre-activation bounds of branch-and-bound subdomains, re-derived after each split.

A subdomain fixes some unstable ReLUs (``zhat >= 0`` or ``zhat <= 0``). Its bounds on
the split units tighten at once (clamped to the split), but the layers after a split
only tighten if their bounds are derived again through it: the split unit is exact, no
longer relaxed. Optimising fresh slopes for every subdomain would cost tens of backward
passes per layer; :func:`refined_layer_bounds` does one, with the slopes the root's
intermediate bounds were optimised with (:func:`root_layer_bounds`), through the
subdomain's own bounds of the layers before.

Measured on 784-256x6-10 (image 3186, eps 0.02, root bound 17.69; both children of
the two widest unstable units of each hidden layer, the final bound then optimised for
20 steps): re-deriving with the root's slopes gave children bounds 1.0 to 3.0 lower than
the root's bounds clamped to the split after splits in the first two layers, 0.0 to 1.4
after later ones; 20 more steps of slope optimisation from the root's slopes gained only
0.1 to 0.6 more, and fresh bounds from CROWN's slopes (0 or 3 steps) gained nothing over
clamping. Shapes: ``D``
subdomains, ``m_k`` units of hidden layer ``k``; every bound is sound for any slopes in
``[0, 1]`` and computed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from verifiers.linear.propagation import Bounds, backward_upper, crown_slope, interval_bounds
from verifiers.linear.slope_optimisation import optimise_upper


@dataclass
class LayerSlopes:
    """The slopes behind intermediate bounds: per hidden layer ``k``, ``units[k]`` (its
    units that cross zero, ``(u_k,)``) and ``slopes[k]``, per layer ``j < k``, the lower
    ReLU slopes ``(1, 2 u_k, m_j)`` float32 of the rows ``+e_i`` (first ``u_k``) and
    ``-e_i`` (last ``u_k``) of those units. Layer 0 has none (its bounds are exact)."""

    units: list[torch.Tensor]
    slopes: list[list[torch.Tensor]]


def root_layer_bounds(params, lo: torch.Tensor, hi: torch.Tensor, *, iterations: int,
                      known: Bounds | None = None) -> tuple[Bounds, LayerSlopes]:
    """alpha-CROWN's intermediate bounds ``[(l, u) (1, m_k)]`` of the box ``lo, hi (1, d)``
    (as :func:`verifiers.linear.slope_optimisation.optimised_layer_bounds`: per layer the ``±I``
    rows with slopes optimised for ``iterations`` steps from CROWN's, never looser than
    CROWN or intervals), and the slopes that gave them, kept for the units crossing zero
    (units stable at the root stay stable in every subdomain). ``known``: sound bounds of
    the first ``len(known)`` hidden layers from elsewhere (e.g.
    :func:`verifiers.bab.root_tightening.tightened_root_bounds`), intersected in layer by
    layer before the next layer is bounded."""
    if len(params) == 1:                # a linear map: no hidden layer
        return [], LayerSlopes([], [])
    intervals = interval_bounds(params, lo, hi)
    bounds: Bounds = [intervals[0]]     # affine in the box: the interval is exact
    units = [torch.zeros(0, dtype=torch.long, device=lo.device)]
    slopes: list[list[torch.Tensor]] = [[]]
    for k in range(1, len(params) - 1):
        width = params[k][0].shape[0]
        eye = torch.eye(width, dtype=lo.dtype, device=lo.device)[None]
        spec = torch.cat([eye, -eye], dim=1)
        start = [crown_slope(low, up).unsqueeze(1).expand(-1, 2 * width, -1).float()
                 for low, up in bounds]
        with torch.no_grad():
            both = backward_upper(params[:k + 1], bounds, spec, lo, hi,
                                  slopes=[s.to(lo.dtype) for s in start])
        if iterations > 0:
            result = optimise_upper(params[:k + 1], bounds, spec, lo, hi,
                                    iterations=iterations)
            both = torch.minimum(both, result.upper)
            start = result.slopes      # the best per row: no worse than CROWN's start
        lower = torch.maximum(-both[:, width:], intervals[k][0])
        upper = torch.minimum(both[:, :width], intervals[k][1])
        if known is not None and k < len(known):
            lower = torch.maximum(lower, known[k][0])
            upper = torch.minimum(upper, known[k][1])
        bounds.append((lower, upper))
        crossing = torch.nonzero(((lower < 0) & (upper > 0)).any(dim=0)).flatten()
        units.append(crossing)
        slopes.append([s[:, torch.cat([crossing, crossing + width])] for s in start])
    return bounds, LayerSlopes(units, slopes)


@torch.no_grad()
def refined_layer_bounds(params, bounds: Bounds, lo: torch.Tensor, hi: torch.Tensor,
                         slopes: LayerSlopes, start: torch.Tensor) -> Bounds:
    """The bounds ``[(l, u) (D, m_k)]`` of ``D`` subdomains (each clamped to its splits;
    boxes ``lo, hi (D, d)``) re-derived from layer ``start (D,)`` on (per subdomain, the
    layer after its newest split): layer by layer, the units that still cross zero in
    some of those subdomains are bounded by one backward pass with the root's ``slopes``
    through the subdomains' bounds of the layers before (already re-derived), and the
    result is intersected with their bounds. A subdomain where some ``l > u`` is empty."""
    out = list(bounds)
    for k in range(1, len(params) - 1):
        which = torch.nonzero(start <= k).flatten()
        if len(which) == 0:
            continue
        lower, upper = out[k]
        root_units = slopes.units[k]
        live = ((lower[which][:, root_units] < 0)
                & (upper[which][:, root_units] > 0)).any(dim=0)
        if not bool(live.any()):
            continue
        index = torch.nonzero(live).flatten()
        units = root_units[index]
        count = len(units)
        eye = torch.eye(params[k][0].shape[0], dtype=lower.dtype, device=lower.device)[units]
        spec = torch.cat([eye, -eye])[None].expand(len(which), -1, -1)
        rows = torch.cat([index, index + len(root_units)])
        both = backward_upper(params[:k + 1], [(low[which], up[which]) for low, up in out[:k]],
                              spec, lo[which], hi[which],
                              slopes=[s[:, rows].to(lower.dtype) for s in slopes.slopes[k]])
        lower, upper = lower.clone(), upper.clone()
        grid = (which[:, None], units[None, :])
        lower[grid] = torch.maximum(lower[grid], -both[:, count:])
        upper[grid] = torch.minimum(upper[grid], both[:, :count])
        out[k] = (lower, upper)
    return out
