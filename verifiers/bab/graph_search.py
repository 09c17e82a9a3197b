"""Branch and bound on ReLU splits for operator graphs (:class:`models.graph.GraphNet`).

**Root.** CROWN's bounds at the input of every nonlinear node
(:func:`verifiers.linear.graph_optimisation.optimised_layer_bounds` with no steps, which
keeps the parameters behind them), then alpha-CROWN on every row of the property
(:func:`verifiers.linear.graph_optimisation.optimise`, ``options.iterations`` steps); a
group with a row bounded below zero is settled. If a group is left open and they fit
:data:`INTERMEDIATE_SHARE` of the time limit (at about three CROWN passes per step), the
intermediate bounds are optimised too, up to ``options.iterations`` steps, and every row
bounded again on them.

**Branching,** per open group. A subdomain is the input box and a sign for some ReLU
units (``+1``: input ``>= 0``, ``-1``: ``<= 0``); batches of the open subdomains of
largest parent bound (best first) are bounded at once. The split units' input bounds
are clamped to their signs (BaBSR's scheme); on networks of at least
``options.refine_depth`` nonlinear nodes, where :data:`REFINE_PASSES` passes of the
root's intermediate bounds fit the time limit, the bounds of the nodes after a split are
re-derived through it with the root's parameters
(:func:`verifiers.bab.graph_layer_bounds.refined_bounds`; a subdomain whose bounds
contradict is empty, closed), elsewhere they stay the root's
(:func:`verifiers.linear.graph_propagation.split_relaxation`, sound on the subdomain, one
pass instead of one per node). CROWN bounds the batch; the subdomains it leaves open get
``options.branch_iterations`` steps of alpha-beta-CROWN (the lower slopes, tangent
points and a multiplier per split unit and row), warm-started from their parent's
parameters, which their children inherit in turn. A subdomain is refuted when some row
of the group has an upper bound below zero. Otherwise the point of the box that
maximises the bound's linear form of its loosest row is checked by a float64 forward
pass (a counterexample ends the search), and the unit with the largest BaBSR-style
score (positive coefficient times the upper line's intercept, summed over the group's
rows; the widest unstable unit where all scores vanish) is split. After batches 1, 2,
4, 8, ... APGD runs from the corners of the live subdomains of largest bound
(:mod:`verifiers.bab.search_attacks`). A subdomain without an unstable ReLU left is
linear on its region: an LP over the box and the split signs (HiGHS) decides it
exactly, its solution checked by a forward pass. Where no ReLU is unstable, a sigmoid or
tanh unit is split instead, at 0 if its input range crosses it, else at the middle
(the unit of largest coefficient times relaxation gap; each child clamps the unit's
input range, and the children together cover the parent). Max pooling is never split:
a leaf that still relaxes one is left open, and the verdict is ``unknown``. A child's
bound is never above its parent's (both hold on it; its own relaxations' lines are
chosen afresh and can be looser).

Each open subdomain holds one ``int8`` per ReLU unit and its warm start (float32 per
unit and row; ``stats["bytes_per_subdomain"]`` counts the most it can hold); the pool of
open subdomains is held under ``options.memory_gb``: past it the search stops with
``unknown``.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attacks.property_attacks import attack_property
from bench.contract import Property, split_rows
from models.graph import GraphNet
from verifiers.bab.graph_layer_bounds import refined_bounds
from verifiers.bab.options import SearchOptions
from verifiers.bab.search import BabOutcome
from verifiers.bab.search_attacks import attack_candidates, attack_due
from verifiers.linear.graph_optimisation import (
    GraphSlopes,
    crossing_units,
    optimise,
    optimised_layer_bounds,
    packed,
    unpacked,
)
from verifiers.linear.graph_propagation import box_maximum, linear_form, split_relaxation

BATCH_MEMORY = 2 * 2 ** 30                # bytes a batch's bound computation may take, about
# subdomains' bounds are re-derived after their splits (on deep enough networks) only if
# this many passes of the root's intermediate bounds fit the time limit: on a CIFAR-sized
# ResNet one pass takes 11 s (one thread), and a batch of re-derived subdomains ran 26 s
# past a 60 s limit
REFINE_PASSES = 50
NARROWEST = 1e-7                          # sigmoid/tanh input ranges split no further
INTERMEDIATE_SHARE = 0.2                  # of the time limit, for optimised root intermediates
MIN_INTERMEDIATE_STEPS = 3                # fewer affordable steps: CROWN's intermediates


@dataclass
class Domain:
    """An open subdomain: per ReLU node its split signs ``(*shape)`` int8 (``+1``: input
    ``>= 0``, ``-1``: ``<= 0``, 0 free), and the parameters of its last optimised bound,
    the warm start of its children's: per nonlinear node ``(S, *shape)`` (sigmoid/tanh
    ``(2, S, *shape)``), per split ReLU node multipliers ``(S, *shape)``, float32 (none:
    CROWN's, and 0); per sigmoid/tanh node with split units, the range its input is
    split to, ``(lo, hi)`` each ``(*shape)`` float64 (``±inf`` where not split); and its
    parent's row bounds ``(S,)`` (valid on it too: a child's own can be looser, its
    relaxations' lines being chosen afresh)."""

    signs: dict[int, torch.Tensor]
    alphas: dict[int, torch.Tensor] = field(default_factory=dict)
    betas: dict[int, torch.Tensor] = field(default_factory=dict)
    ranges: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    bound: torch.Tensor | None = None


Params = dict[int, torch.Tensor]          # per node, a subdomain's or a batch's parameters


class WarmStarts:
    """Subdomains' parameters, kept lean: a ReLU node's slopes and multipliers only at the
    units crossing zero at the root (``positions``, per ReLU node ``(n,)`` flat indices;
    the only units that cross in any subdomain, and the only ones split), ``(S, n)``;
    sigmoid/tanh tangent positions whole, ``(2, S, *shape)``."""

    def __init__(self, net: GraphNet, positions: dict[int, torch.Tensor]) -> None:
        self.net = net
        self.positions = positions

    def _rows_axis(self, index: int, tensor: torch.Tensor) -> int:
        """The axis of the rows in node ``index``'s parameters (before its shape)."""
        return tensor.dim() - len(self.net.nodes[index].shape) - 1

    def kept(self, params: dict[int, torch.Tensor], b: int) -> dict[int, torch.Tensor]:
        """Subdomain ``b``'s parameters of a batch's ``params`` (per node ``(B, S,
        *shape)`` or ``(2, B, S, *shape)``), kept lean."""
        out = {}
        for index, t in params.items():
            one = t.select(self._rows_axis(index, t) - 1, b)
            if index in self.positions:
                one = packed(one, self.net.nodes[index].shape, self.positions[index])
            out[index] = one.clone()
        return out

    def stacked(self, parts: list[dict[int, torch.Tensor]], fill: bool
                ) -> dict[int, torch.Tensor]:
        """Per node, the subdomains' kept parameters ``parts`` whole again and stacked on a
        batch axis before the rows (``(B, S, *shape)``, ``(2, B, S, *shape)``; 0 at the
        units not kept, which are stable): the nodes all of them have, or with ``fill``
        every node some have, zeros for the others."""
        keys = set().union(*parts) if fill else set.intersection(*(set(p) for p in parts))
        out = {}
        for index in keys:
            some = next(p[index] for p in parts if index in p)
            whole = []
            for part in parts:
                value = part.get(index, torch.zeros_like(some))
                if index in self.positions:
                    value = unpacked(value, self.net.nodes[index].shape,
                                     self.positions[index])
                whole.append(value)
            out[index] = torch.stack(whole, self._rows_axis(index, whole[0]))
        return out


def _stack_ranges(domains: list[Domain], curves: list[int], net: GraphNet
                  ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per sigmoid/tanh node some domain splits, the domains' input ranges ``(B,
    *shape)`` each (``±inf`` where not split)."""
    out = {}
    for index in curves:
        if not any(index in d.ranges for d in domains):
            continue
        shape = net.nodes[net.nodes[index].inputs[0]].shape
        free = (torch.full(shape, -math.inf, dtype=torch.float64),
                torch.full(shape, math.inf, dtype=torch.float64))
        pairs = [d.ranges.get(index, free) for d in domains]
        out[index] = (torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]))
    return out


def _violates(net64: GraphNet, prop: Property, points: torch.Tensor) -> torch.Tensor:
    """Per point ``(P, d)``: inside the box and violating the property (float64)."""
    with torch.no_grad():
        return prop.contains(points) & prop.violated_by(net64(points))


def _stack(domains: list[Domain], relus: list[int], net: GraphNet) -> dict[int, torch.Tensor]:
    out = {}
    for index in relus:
        shape = net.nodes[net.nodes[index].inputs[0]].shape
        out[index] = torch.stack([d.signs.get(index, torch.zeros(shape, dtype=torch.int8))
                                  for d in domains])
    return out


def _leaf_lp(net: GraphNet, relaxed: dict, splits: dict[int, torch.Tensor], b: int,
             matrix: torch.Tensor, offset: torch.Tensor, lo: torch.Tensor,
             hi: torch.Tensor) -> np.ndarray | None | str:
    """An LP over subdomain ``b`` (every ReLU linear there): a point of the box meeting
    the split signs and every row ``c . f(x) >= d`` of the group, ``None`` if there is
    none (refuted), ``"failed"`` if the solver failed."""
    from scipy.optimize import linprog

    one = {k: tuple(t[b:b + 1] for t in v) for k, v in relaxed.items()}
    out = len(net.nodes) - 1
    coef, const = linear_form(net, one, out, matrix[None])
    a_ub, b_ub = [], []
    if coef is not None:          # rows: -(A x + c - d) <= 0
        a_ub.append(-coef[0].numpy())
        b_ub.append((const[0] - offset).numpy())
    for index, sign in splits.items():
        chosen = sign[b].reshape(-1).nonzero().flatten()
        if len(chosen) == 0:
            continue
        source = net.nodes[index].inputs[0]
        shape = net.nodes[source].shape
        eye = torch.eye(math.prod(shape), dtype=torch.float64)[chosen].reshape(-1, *shape)
        sigma = sign[b].reshape(-1)[chosen].to(torch.float64)
        pre, pre_const = linear_form(net, one, source, eye[None])
        if pre is None:
            continue
        # sigma * (A x + c) >= 0  <=>  -sigma A x <= sigma c
        a_ub.append(-(sigma[:, None] * pre[0]).numpy())
        b_ub.append((sigma * pre_const[0]).numpy())
    if not a_ub:
        return lo.numpy()
    result = linprog(np.zeros(lo.numel()), A_ub=np.concatenate(a_ub),
                     b_ub=np.concatenate(b_ub), bounds=list(zip(lo.tolist(), hi.tolist())),
                     method="highs")
    if result.status == 2:
        return None
    return result.x if result.status == 0 else "failed"


def decide_graph(net: GraphNet, prop: Property, options: SearchOptions = SearchOptions(), *,
                 restarts: int = 16, attack_steps: int = 100, seed: int = 0) -> BabOutcome:
    """Settle ``prop`` on the graph ``net`` within about ``options.time_limit`` seconds
    (see the module doc; ``options.batch`` subdomains per bound computation, fewer on a
    network too large for that many in :data:`BATCH_MEMORY`,
    ``options.memory_gb`` for the pool). ``uppers``: per group the largest upper bound
    over the closed subdomains of the smallest row bound, repeated per row (an upper
    bound on ``max_x min_i c_i . f(x) - d_i``: for a one-row group, the row's bound;
    ``+inf`` where subdomains were left open)."""
    began = time.perf_counter()
    net64 = net.float64_copy().requires_grad_(False)
    lo, hi = prop.lo.to(torch.float64), prop.hi.to(torch.float64)
    relus = [i for i, node in enumerate(net64.nodes) if node.op == "relu"]
    units = sum(math.prod(net64.nodes[net64.nodes[i].inputs[0]].shape) for i in relus)
    curve_units = sum(math.prod(node.shape) for node in net64.nodes
                      if node.op in ("sigmoid", "tanh"))
    rows_most = max(len(offset) for _, offset in prop.groups)
    stats: dict[str, Any] = {"branching": "relu", "bytes_per_subdomain": units,
                             "leaf_lps": 0, "open_leaves": 0}
    nodes = 0

    def outcome(verdict: str, uppers: list[torch.Tensor], point: torch.Tensor | None = None
                ) -> BabOutcome:
        return BabOutcome(verdict, uppers, point, nodes, time.perf_counter() - began, stats)

    unbounded = [torch.full((len(d),), math.inf, dtype=torch.float64) for _, d in prop.groups]

    if restarts:
        point, _ = attack_property(net64, prop, restarts=restarts, steps=attack_steps,
                                   seed=seed)
        point = torch.minimum(torch.maximum(point.to(torch.float64), lo), hi)
        if bool(_violates(net64, prop, point[None])[0]):
            return outcome("violated", unbounded, point)
    out = len(net64.nodes) - 1
    # sigmoid and tanh units are split at a point of their input range; max pooling is
    # never split: a leaf relaxing one stays open; a leaf with every ReLU fixed is
    # linear (an LP decides it) only without these
    curves = [i for i, node in enumerate(net64.nodes) if node.op in ("sigmoid", "tanh")]
    linear_leaves = not any(node.op in ("sigmoid", "tanh", "maxpool") for node in net64.nodes)
    stats["curve_splits"] = 0
    # CROWN's bounds on the whole box, shared by every subdomain (and the parameters behind
    # them, to re-derive a subdomain's bounds after its splits)
    refine = net64.hidden_layers >= options.refine_depth
    slopes = GraphSlopes()
    started = time.perf_counter()
    root_bounds, root_relaxed = optimised_layer_bounds(net64, lo[None], hi[None], 0,
                                                       slopes if refine else None)
    crown_seconds = time.perf_counter() - started
    # re-deriving a subdomain's bounds costs up to one such pass: only where the parameters
    # fit their budget and REFINE_PASSES passes fit the time limit
    refine = refine and slopes.complete and \
        crown_seconds * REFINE_PASSES <= options.time_limit
    stats["refined"] = refine
    uppers: list[torch.Tensor] = []
    open_groups = False
    stats["groups_settled_at_root"] = 0
    rows, offsets, sizes = split_rows(prop)
    offsets = offsets.to(torch.float64)
    # subdomains per batch: ``options.batch``, or fewer where the backward pass of a batch
    # (coefficients of the largest node per row, and autograd's copies) would pass
    # BATCH_MEMORY
    largest = max(math.prod(node.shape) for node in net64.nodes)
    per_batch = max(1, min(options.batch, BATCH_MEMORY // (largest * max(sizes) * 8 * 8)))
    stats["subdomains_per_batch"] = per_batch       # alpha-CROWN on every row at once (each
    spec = rows.to(torch.float64)[None]               # row's slopes are its own)
    roots, root_alphas, _ = optimise(net64, lo[None], hi[None], spec, out, options.iterations,
                                     root_relaxed, root_bounds)
    roots = roots[0] - offsets
    # a group left open: the intermediate bounds optimised too (alpha-CROWN's), with as
    # many steps as fit INTERMEDIATE_SHARE of the time limit at about three CROWN passes
    # per step, and every row bounded again on them
    steps = min(options.iterations, int(INTERMEDIATE_SHARE * options.time_limit
                                        / max(3 * crown_seconds, 1e-9)))
    stats["intermediate_iterations"] = 0
    if steps >= MIN_INTERMEDIATE_STEPS and not all(bool((root < 0).any())
                                                    for root in roots.split(sizes)):
        stats["intermediate_iterations"] = steps
        slopes = GraphSlopes()
        root_bounds, root_relaxed = optimised_layer_bounds(net64, lo[None], hi[None], steps,
                                                           slopes if refine else None,
                                                           tighten_with=root_bounds)
        refine = refine and slopes.complete
        again, root_alphas, _ = optimise(net64, lo[None], hi[None], spec, out,
                                         options.iterations, root_relaxed, root_bounds)
        roots = torch.minimum(roots, again[0] - offsets)
    roots = roots.split(sizes)
    warm = options.branch_iterations > 0
    starts = WarmStarts(net64, {index: crossing_units(root_relaxed, index) for index in relus})
    # a subdomain's signs, and its warm start at most: float32 slopes and multipliers of
    # every ReLU unit crossing at the root and two tangent positions of every
    # sigmoid/tanh unit, per row
    stats["bytes_per_subdomain"] = units + (
        4 * rows_most * (2 * sum(len(p) for p in starts.positions.values())
                         + 2 * curve_units) if warm else 0)
    pool_limit = max(1, int(options.memory_gb * 1e9 // max(stats["bytes_per_subdomain"], 1)))
    for group, ((matrix, offset), root) in enumerate(zip(prop.groups, roots)):
        matrix, offset = matrix.to(torch.float64), offset.to(torch.float64)
        if bool((root < 0).any()):                 # alpha-CROWN settles the group
            stats["groups_settled_at_root"] += 1
            uppers.append(torch.full((len(offset),), float(root.min()), dtype=torch.float64))
            continue
        # open subdomains, largest bound first: (-its parent's min-over-rows bound, order
        # of arrival, the subdomain)
        first = sum(sizes[:group])        # the root's parameters of this group's rows
        start = {index: t.narrow(t.dim() - len(net64.nodes[index].shape) - 1, first,
                                 sizes[group])
                 for index, t in root_alphas.items()} if warm else {}
        queue: list[tuple[float, int, Domain]] = [(-float(root.min()), 0,
                                                   Domain({}, starts.kept(start, 0)))]
        arrivals = 1
        worst = -math.inf          # the largest min-over-rows bound of a closed subdomain
        batches = 0
        pace: float | None = None
        last_count = 1
        while queue:
            if time.perf_counter() - began > options.time_limit or len(queue) > pool_limit:
                open_groups = True
                stats["open_leaves"] += len(queue)
                stats["open_bound"] = -queue[0][0]
                # every subdomain, open or closed, is bounded: the largest bound holds
                worst = max(worst, -queue[0][0])
                break
            # fewer than a whole batch when the time left would not fit it at the last
            # batch's pace (seconds per subdomain), and at most twice the last batch (a
            # batch's cost can grow faster than its size: re-derived bounds take the
            # units crossing in any of its subdomains)
            take = min(per_batch, len(queue))
            if pace is not None:
                left = options.time_limit - (time.perf_counter() - began)
                take = max(1, min(take, int(left / max(pace, 1e-9)), 2 * last_count))
            batch_began = time.perf_counter()
            batch = [heapq.heappop(queue)[2] for _ in range(take)]
            count = len(batch)
            nodes += count
            box_lo, box_hi = lo.expand(count, -1), hi.expand(count, -1)
            splits = _stack(batch, relus, net64)
            ranges = _stack_ranges(batch, curves, net64)
            with torch.no_grad():
                if refine:
                    bounds, relaxed, empty = refined_bounds(net64, root_bounds, splits, slopes,
                                                            lo[None], hi[None], ranges)
                else:
                    bounds, relaxed = split_relaxation(net64, root_bounds, splits, ranges)
                    empty = torch.zeros(count, dtype=torch.bool)
                    for index in ranges:
                        low, up = bounds[net64.nodes[index].inputs[0]]
                        empty |= (low > up).flatten(1).any(1)
                record: dict[int, torch.Tensor] = {}
                spec = matrix.expand(count, -1, -1)
                coef, const = linear_form(net64, relaxed, out, spec, record=record)
            upper = box_maximum(coef, const, box_lo, box_hi) - offset
            inherited = torch.stack([d.bound if d.bound is not None
                                     else torch.full_like(offset, math.inf) for d in batch])
            upper = torch.minimum(upper, inherited)
            upper[empty] = -math.inf             # no point meets their splits: closed
            params = {b: (batch[b].alphas, batch[b].betas) for b in range(count)}
            if warm and coef is not None:
                params.update(_tighten(net64, upper, bounds, relaxed, splits, spec, offset,
                                       lo, hi, options.branch_iterations, batch, starts))
            pace, last_count = (time.perf_counter() - batch_began) / count, count
            refuted = (upper < 0).any(1)
            if bool(refuted.any()):
                worst = max(worst, float(upper[refuted].min(1).values.max()))
            alive = (~refuted).nonzero().flatten().tolist()
            if not alive:
                continue
            # a counterexample candidate per live subdomain: the box corner that
            # maximises the linear form of its loosest row
            if coef is not None:
                row = upper.argmin(1)
                pick = coef[torch.arange(count), row]                    # (B, d)
                corners = torch.where(pick > 0, box_hi, box_lo)[alive]
                hit = _violates(net64, prop, corners).nonzero().flatten()
                if len(hit):
                    return outcome("violated", unbounded, corners[int(hit[0])])
                batches += 1
                if attack_due(batches):    # APGD from the corners of the largest bounds
                    point = attack_candidates(net64, matrix, offset, corners,
                                              upper.amin(1)[alive], lo, hi)
                    if point is not None and bool(_violates(net64, prop, point[None])[0]):
                        stats["found_by"] = "attack on subdomain maximisers"
                        return outcome("violated", unbounded, point)
            for b in alive:
                unit = _branch(net64, relus, bounds, record, b)
                cut = _curve_branch(net64, curves, bounds, relaxed, record, b) \
                    if unit is None and curves else None  # no unstable ReLU: an S-curve
                if unit is not None or cut is not None:
                    stats["curve_splits"] += cut is not None
                    alphas, betas = params[b]
                    for signs, ranges in _children(net64, batch[b], unit, cut):
                        heapq.heappush(queue, (-float(upper[b].min()), arrivals,
                                               Domain(signs, alphas, betas, ranges,
                                                      upper[b].clone())))
                        arrivals += 1
                    continue
                # nothing to split: linear here (an LP decides it), or a leaf left open
                if linear_leaves:
                    stats["leaf_lps"] += 1
                    found = _leaf_lp(net64, relaxed, splits, b, matrix, offset, lo, hi)
                    if found is None:
                        continue
                    if isinstance(found, np.ndarray):
                        point = torch.from_numpy(found)
                        if bool(_violates(net64, prop, point[None])[0]):
                            return outcome("violated", unbounded, point)
                stats["open_leaves"] += 1  # max pool or too narrow an S-curve left, or LP failed
                open_groups = True
                worst = math.inf
        uppers.append(torch.full((len(offset),), worst, dtype=torch.float64))
        if open_groups:
            break
    if open_groups:
        return outcome("unknown", uppers + unbounded[len(uppers):])
    return outcome("holds", uppers)


def _tighten(net: GraphNet, upper: torch.Tensor, bounds: list, relaxed: dict[int, tuple],
             splits: dict[int, torch.Tensor], spec: torch.Tensor, offset: torch.Tensor,
             lo: torch.Tensor, hi: torch.Tensor, iterations: int,
             domains: list[Domain], starts: WarmStarts) -> dict[int, tuple[Params, Params]]:
    """In place: ``upper (B, S)`` (CROWN's row bounds minus ``offset``) lowered to
    alpha-beta-CROWN's (:func:`verifiers.linear.graph_optimisation.optimise` with the
    split multipliers, ``iterations`` steps from the parameters ``domains`` kept, from
    the subdomains' ``bounds`` and their relaxations) on the subdomains with splits (of
    ReLU or sigmoid/tanh units) that CROWN leaves open. Returns, per such subdomain, its
    parameters at the end (its children's warm start), kept lean by ``starts``."""
    split = torch.stack([(sign != 0).flatten(1).any(1) for sign in splits.values()]).any(0) \
        if splits else torch.zeros(len(upper), dtype=torch.bool)
    split |= torch.tensor([bool(d.ranges) for d in domains])
    pick = (split & ~(upper < 0).any(1)).nonzero().flatten()
    if len(pick) == 0:
        return {}
    count = len(upper)

    def taken(tensors: tuple) -> tuple:
        """The picked subdomains' rows of per-subdomain tensors (shared ones as they are)."""
        return tuple(t[pick] if t.shape[0] == count else t for t in tensors)

    chosen = [domains[b] for b in pick.tolist()]
    tighter, alphas, betas = optimise(
        net, lo[None], hi[None], spec[pick], len(net.nodes) - 1, iterations,
        {index: taken(lines) for index, lines in relaxed.items()},
        [taken(pair) for pair in bounds],
        {index: sign[pick] for index, sign in splits.items()}, crown=upper[pick] + offset,
        start=starts.stacked([d.alphas for d in chosen], fill=False),
        start_betas=starts.stacked([d.betas for d in chosen], fill=True))
    upper[pick] = torch.minimum(upper[pick], tighter - offset)
    return {b: (starts.kept(alphas, position), starts.kept(betas, position))
            for position, b in enumerate(pick.tolist())}


def _curve_branch(net: GraphNet, curves: list[int], bounds: list, relaxed: dict[int, tuple],
                  record: dict[int, torch.Tensor], b: int) -> tuple[int, int, float] | None:
    """The sigmoid/tanh unit of subdomain ``b`` to split, and where: ``(node, flat index,
    point)``, the unit of largest ``|coefficient|`` (summed over the rows) times its
    relaxation's gap (upper line minus lower line, largest at an end of its input
    range: how far the bound can be off there), split at 0 if its input range crosses it
    (each half is then convex or concave, where the lines are tight), else at the
    midpoint; ``None`` if every unit's range is narrower than :data:`NARROWEST`."""
    best: tuple[float, int, int, float] | None = None
    for index in curves:
        lower, upper = (t[b].reshape(-1) for t in bounds[net.nodes[index].inputs[0]])
        a_low, b_low, a_up, b_up = (t[b].reshape(-1) for t in relaxed[index])
        gap = torch.maximum((a_up - a_low) * lower + b_up - b_low,
                            (a_up - a_low) * upper + b_up - b_low)
        coef = record.get(index)
        weight = coef[b].abs().reshape(coef.shape[1], -1).sum(0) if coef is not None \
            else torch.ones_like(lower)
        score = weight * gap
        score = torch.where(upper - lower > NARROWEST, score, torch.full_like(score, -1.0))
        value, flat = score.max(0)
        if float(value) > 0 and (best is None or float(value) > best[0]):
            low, up = float(lower[flat]), float(upper[flat])
            best = (float(value), index, int(flat), 0.0 if low < 0 < up else (low + up) / 2)
    return None if best is None else best[1:]


def _children(net: GraphNet, domain: Domain, unit: tuple[int, int] | None,
              cut: tuple[int, int, float] | None) -> list[tuple[dict, dict]]:
    """The two children of ``domain`` as ``(signs, ranges)``: split at ReLU ``unit =
    (node, flat)`` (its input ``>= 0`` and ``<= 0``), or else at the sigmoid/tanh unit
    ``cut = (node, flat, point)`` (its input in ``[lo, point]`` and ``[point, hi]``);
    together they cover the parent."""
    children = []
    for side in (0, 1):
        signs, ranges = domain.signs, domain.ranges
        if unit is not None:
            index, flat = unit
            shape = net.nodes[net.nodes[index].inputs[0]].shape
            signs = {k: v.clone() for k, v in signs.items()}
            split = signs.setdefault(index, torch.zeros(shape, dtype=torch.int8))
            split.view(-1)[flat] = 1 if side == 0 else -1
        else:
            assert cut is not None
            index, flat, point = cut
            shape = net.nodes[net.nodes[index].inputs[0]].shape
            ranges = {k: (v[0].clone(), v[1].clone()) for k, v in ranges.items()}
            low, up = ranges.setdefault(index, (
                torch.full(shape, -math.inf, dtype=torch.float64),
                torch.full(shape, math.inf, dtype=torch.float64)))
            (up if side == 0 else low).view(-1)[flat] = point
        children.append((signs, ranges))
    return children


def _branch(net: GraphNet, relus: list[int], bounds: list, record: dict[int, torch.Tensor],
            b: int) -> tuple[int, int] | None:
    """The ReLU unit of subdomain ``b`` to split: ``(node, flat index)``, or ``None`` if
    no unit is unstable."""
    best: tuple[float, int, int] | None = None
    widest: tuple[float, int, int] | None = None
    for index in relus:
        source = net.nodes[index].inputs[0]
        lower, upper = (t[b].reshape(-1) for t in bounds[source])
        unstable = (lower < 0) & (upper > 0)
        if not bool(unstable.any()):
            continue
        gap = (upper - lower).clamp(min=1e-300)
        intercept = torch.where(unstable, -upper * lower / gap, torch.zeros_like(lower))
        coef = record.get(index)
        score = (coef[b].clamp(min=0).reshape(coef.shape[1], -1) * intercept).sum(0) \
            if coef is not None else torch.zeros_like(lower)
        score = torch.where(unstable, score, torch.full_like(score, -1.0))
        value, flat = score.max(0)
        if best is None or float(value) > best[0]:
            best = (float(value), index, int(flat))
        width = torch.where(unstable, torch.minimum(upper, -lower), torch.full_like(lower, -1))
        w_value, w_flat = width.max(0)
        if widest is None or float(w_value) > widest[0]:
            widest = (float(w_value), index, int(w_flat))
    if best is None:
        return None
    chosen = best if best[0] > 0 else widest
    assert chosen is not None
    return chosen[1], chosen[2]
