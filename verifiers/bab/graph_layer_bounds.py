"""Bounds of branch-and-bound subdomains on operator graphs, re-derived after the splits.

A subdomain fixes the sign of some unstable ReLU inputs. Its split units' bounds
tighten at once (clamped to the split), but the nonlinear nodes after a split only
tighten if their input bounds are derived again through it, where the split unit is
exact. :func:`refined_bounds` does so with one backward pass per nonlinear node, with the
parameters the root's intermediate bounds were optimised with
(:class:`verifiers.linear.graph_optimisation.GraphSlopes`, kept for the units crossing
zero at the root; units stable there stay stable), through the subdomain's own bounds of
the nodes before; each bound is intersected with the root's (both sound on the
subdomain). As on MLPs (:mod:`verifiers.bab.layer_bounds`), the root's optimised slopes
rather than CROWN's are what makes the re-derived bounds tighter. Shapes: ``B``
subdomains; bounds per node ``(B, *shape)``, float64.
"""

from __future__ import annotations

import math

import torch

from models.graph import ELEMENTWISE, GraphNet
from verifiers.linear.graph_optimisation import GraphSlopes, curve_ranges, lines_with
from verifiers.linear.graph_propagation import (
    Interval,
    box_maximum,
    clamped_to_splits,
    expanded_for,
    linear_form,
    relaxation,
    unit_chunks,
)


@torch.no_grad()
def refined_bounds(net: GraphNet, root: list[Interval], splits: dict[int, torch.Tensor],
                   slopes: GraphSlopes, lo: torch.Tensor, hi: torch.Tensor,
                   ranges: dict[int, Interval] | None = None
                   ) -> tuple[list[Interval], dict[int, tuple], torch.Tensor]:
    """``(bounds, relaxed, empty)`` of ``B`` subdomains of the box ``lo, hi (1, d)``:
    per node ``(B, *shape)`` bounds, every nonlinear node's relaxation, and ``empty
    (B,)``, the subdomains whose bounds contradict (some lower bound above its upper
    bound: no point satisfies their splits). ``root``: the box's bounds (batch 1, with
    ``slopes`` from :func:`verifiers.linear.graph_optimisation.optimised_layer_bounds`);
    ``splits``: per ReLU node ``(B, *shape)`` signs (``+1``: input ``>= 0``, ``-1``:
    ``<= 0``, ``0`` free); ``ranges``: per sigmoid/tanh node the ranges its input is
    split to, ``(B, *shape)`` each (``±inf`` where free).

    In topological order, at each nonlinear node after the first split: the root's
    crossing units of its input that still cross zero in some subdomain are bounded by
    one backward pass (in chunks of rows) with their root parameters, intersected with
    the bounds so far; then the node's split units are clamped and it is relaxed."""
    ranges = ranges or {}
    bounds = expanded_for(root, splits, ranges)
    batch = bounds[0][0].shape[0]
    relaxed: dict[int, tuple] = {}
    empty = torch.zeros(batch, dtype=torch.bool)
    split_seen = False
    for index, node in enumerate(net.nodes):
        if node.op not in (*ELEMENTWISE, "maxpool"):
            continue
        source = node.inputs[0]
        if split_seen and source in slopes.units:
            bounds[source] = _rederived(net, relaxed, bounds, source, slopes, lo, hi)
        bounds[source] = clamped_to_splits(bounds[source], splits.get(index),
                                           ranges.get(index))
        if index in splits:
            split_seen = split_seen or bool((splits[index] != 0).any())
        if index in ranges:
            split_seen = split_seen or bool(torch.isfinite(ranges[index][0]).any()
                                            or torch.isfinite(ranges[index][1]).any())
        low, up = bounds[source]
        empty |= (low > up).flatten(1).any(1)
        relaxed[index] = relaxation(net, index, bounds[source])
    return bounds, relaxed, empty


def _rederived(net: GraphNet, relaxed: dict[int, tuple], bounds: list[Interval],
               source: int, slopes: GraphSlopes, lo: torch.Tensor, hi: torch.Tensor
               ) -> Interval:
    """Node ``source``'s bounds ``(B, *shape)`` with its root-crossing units that still
    cross somewhere bounded again through ``relaxed`` (the subdomains') with the root's
    parameters of their rows, intersected with ``bounds[source]``."""
    shape = net.nodes[source].shape
    lower, upper = (t.reshape(t.shape[0], -1) for t in bounds[source])
    batch = lower.shape[0]
    root_units = slopes.units[source]
    live = ((lower[:, root_units] < 0) & (upper[:, root_units] > 0)).any(0)
    positions = torch.nonzero(live).flatten()
    if len(positions) == 0:
        return bounds[source]
    lower, upper = lower.clone(), upper.clone()
    curves = curve_ranges(net, relaxed, bounds)
    count = len(root_units)
    # rows per pass: their coefficients on the largest node before (B x 2 x rows x size)
    largest = max(math.prod(node.shape) for node in net.nodes[:source + 1])
    done = 0
    for units, spec in unit_chunks(net, source, root_units[positions], batch,
                                   width=2 * largest):
        part = positions[done:done + len(units)]        # the units' places in root_units
        done += len(units)
        rows = torch.cat([part, part + count])
        free = {index: alpha for index, alpha in slopes.whole(net, source, rows).items()
                if index in relaxed}
        lines = lines_with(net, relaxed, curves, free, lower.dtype)
        both = box_maximum(*linear_form(net, lines, source, spec.to(lower.dtype)), lo, hi)
        lower[:, units] = torch.maximum(lower[:, units], -both[:, len(units):])
        upper[:, units] = torch.minimum(upper[:, units], both[:, :len(units)])
    return lower.reshape(batch, *shape), upper.reshape(batch, *shape)
