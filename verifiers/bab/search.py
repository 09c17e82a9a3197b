"""``bab``: complete verification by ReLU-split branch and bound with beta-CROWN bounds.

For a property (an input box and unsafe groups ``C_g f(x) >= d_g``, see
:class:`bench.contract.Property`), :func:`decide` answers ``holds``, ``violated`` (with
a point, checked by a float64 forward pass) or ``unknown`` at the time limit, never a
guess:

1. **Attack.** Signed-gradient ascent on each group's smallest row from the box's
   centre and random starts (:func:`bench.contract.signed_ascent`).
2. **Root.** Intermediate bounds by alpha-CROWN, layer by layer
   (:func:`verifiers.bab.layer_bounds.root_layer_bounds`, which keeps their slopes), then
   per group the alpha-CROWN bound of its rows. A group with a row bounded ``< 0`` is
   refuted. If some group is left open on a network of two or more hidden layers, the
   root bounds of hidden layers ``1 .. tighten_layers`` are tightened first by small
   searches on sub-networks, within ``tighten_share`` of the time limit
   (:mod:`verifiers.bab.root_tightening`; :data:`TIGHTEN_LAYERS`), and every group's root
   is bounded again.
3. **Branch and bound,** per remaining group. A subdomain is the box with some
   unstable ReLUs fixed (``zhat >= 0`` or ``zhat <= 0``); it inherits its parent's
   intermediate bounds clamped to its splits, on networks of ``refine_depth`` or more
   hidden layers re-derived after the split with the root's slopes
   (:func:`verifiers.bab.layer_bounds.refined_layer_bounds`; :data:`REFINE_DEPTH`; a child
   they show empty is closed), and its bound is beta-CROWN's
   (:func:`verifiers.linear.slope_optimisation.optimise_upper` with the split multipliers),
   warm-started from the parent's slopes and multipliers and searched for
   ``branch_iterations`` steps (:data:`BRANCH_ITERATIONS`; a child stops once it closes).
   The ``batch`` subdomains with the largest bounds are split at once (fewer when the
   time left would not fit a whole batch at the last batch's pace), and stored lean
   (:class:`DomainPool`). Branching: the unit with the largest
   BaBSR-style intercept score ``max(a_i, 0) * u_i * (-l_i) / (u_i - l_i)`` (``a_i``
   the bound's coefficient on ``relu(zhat_i)``: the slack the split removes; with
   re-derived bounds, times :data:`EARLY_SPLIT_WEIGHT` per later hidden layer) is split.
   With ``branch_candidates = k > 1`` the ``k`` best-scoring units are each tried with
   quick, unoptimised bounds of both children, and the unit whose worse child is lowest
   is split (filtered strong branching); see :data:`BRANCH_CANDIDATES`. A child whose
   bound is ``< 0`` is closed; the maximiser of each child's linear bound over the box is
   checked as a counterexample, and after batches 1, 2, 4, 8, ... APGD runs from the
   maximisers of the open children of largest bound
   (:mod:`verifiers.bab.search_attacks`). A subdomain without unstable units is affine: one LP
   per row (HiGHS), whose duals give a bound by weak duality in float64 and whose
   optimum is checked as a counterexample.

Sound because every bound is an upper bound over a superset of its subdomain, for any
slopes in ``[0, 1]`` and multipliers ``>= 0``, evaluated in float64. The answer is
``unknown`` at the time limit, when the open subdomains outgrow ``memory_gb`` (each
holds its splits, warm starts and best branching units, and its bounds where they are
re-derived: 13.8 KB, or 26.1 KB, on 784-256x6-10, see :class:`DomainPool`), or when a
linear leaf stays open (an LP that neither closes it nor yields a point).
"""


from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from attacks.property_attacks import attack_property
from bench.contract import Property, torch_device
from models import MLP
from verifiers.bab.bounding import (
    bound_domains,
    forward_worst,
    linear_leaf,
    screened_worst,
)
from verifiers.bab.branching import strong_branching
from verifiers.bab.domains import DomainPool, Domains, split_children
from verifiers.bab.input_split import branching_for, search_group
from verifiers.bab.layer_bounds import root_layer_bounds
from verifiers.bab.options import SearchOptions
from verifiers.bab.root_tightening import tightened_root_bounds
from verifiers.bab.search_attacks import attack_candidates, attack_due
from verifiers.linear.propagation import (
    Bounds,
    layer_params,
)

# A unit's branching score is multiplied by EARLY_SPLIT_WEIGHT per hidden layer after its
# own where bounds are re-derived (``refine_depth``, :mod:`verifiers.bab.options`): a split
# then also tightens those layers, which the score, the final bound's slack, does not see.
EARLY_SPLIT_WEIGHT = 4.0
# Root tightening (``tighten_layers``): TIGHTEN_STEPS rounds of TIGHTEN_PER_UNIT splits per
# unit and direction (:mod:`verifiers.bab.root_tightening`).
TIGHTEN_STEPS = 8
TIGHTEN_PER_UNIT = 64


@dataclass
class BabOutcome:
    """``verdict``: ``holds``, ``violated`` or ``unknown``. ``uppers``: per group
    ``(r_g,)`` float64 upper bounds on ``c_i . f(x) - d_i`` over the whole box (the
    largest over the subdomains when branch and bound ran); ``counterexample (d,)``
    float64 for ``violated``."""

    verdict: str
    uppers: list[torch.Tensor]
    counterexample: torch.Tensor | None = None
    nodes: int = 0
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)


def decide(net: MLP, prop: Property, options: SearchOptions = SearchOptions(), *,
           restarts: int = 16, attack_steps: int = 100, seed: int = 0) -> BabOutcome:
    """Settle ``prop`` on ``net`` within about ``options.time_limit`` seconds (see the
    module doc; every option is documented in :class:`SearchOptions`). ``restarts``
    starts per group for the first attack (0: none, as when the caller attacked
    already), ``attack_steps`` its steps, ``seed`` its random starts. Bounds and
    subdomains live on ``options.device``; the returned tensors are on the CPU."""
    time_limit, batch, iterations = options.time_limit, options.batch, options.iterations
    branch_iterations, branch_candidates = options.branch_iterations, options.branch_candidates
    memory_gb, refine_depth = options.memory_gb, options.refine_depth
    tighten_layers, tighten_share = options.tighten_layers, options.tighten_share
    device = options.device
    branching = branching_for(options.branching, prop.num_inputs)
    began = time.perf_counter()
    on = torch_device(device)
    net64 = net.float64_copy().requires_grad_(False).to(on)
    net32 = copy.deepcopy(net64).float()
    params = layer_params(net64, torch.float64)
    lo, hi = prop.lo.to(on, torch.float64), prop.hi.to(on, torch.float64)
    nodes, leaves_open = 0, 0
    stats: dict[str, Any] = {"linear_leaves": 0, "branching": branching}

    def done(verdict: str, uppers: list[torch.Tensor], point: torch.Tensor | None = None,
             **extra: Any) -> BabOutcome:
        """The outcome; ``extra`` goes to its stats (``boxes``: the input-split count of
        bounded boxes, reported as its nodes)."""
        stats["open_leaves"] = leaves_open
        stats.update(extra)
        return BabOutcome(verdict, [u.cpu() for u in uppers],
                          None if point is None else point.cpu(), extra.get("boxes", nodes),
                          time.perf_counter() - began, stats)

    groups = [(m.to(on, torch.float64), d.to(on, torch.float64)) for m, d in prop.groups]
    inf_bounds = [torch.full((len(d),), torch.inf, dtype=torch.float64) for _, d in groups]
    point: torch.Tensor | None
    if restarts > 0:                                                  # 1. attack
        point, value = attack_property(net64, prop, restarts=restarts, steps=attack_steps,
                                       seed=seed)
        if value >= 0:
            return done("violated", inf_bounds, point)
    if branching == "input":                                          # 2'. split the box
        return _by_input_splits(net64, params, lo, hi, groups, options, began, done,
                                inf_bounds)
    if len(params) == 1:          # a linear classifier: the root bound below is exact
        iterations = 0
    with torch.no_grad():                                              # 2. root
        bounds, layer_slopes = root_layer_bounds(params, lo[None], hi[None],
                                                 iterations=iterations)
    ends = torch.tensor([low.shape[1] for low, _ in bounds], device=on).cumsum(0)
    refine = len(bounds) >= refine_depth
    early_weight = EARLY_SPLIT_WEIGHT if refine else 1.0

    def bound_roots(bounds: Bounds) -> tuple[list[Domains], torch.Tensor | None]:
        """Per group its unsplit subdomain, bounded; or, first, a violating point."""
        roots = []
        for rows, offsets in groups:
            root = Domains.unsplit(bounds, 1, len(offsets), on)
            root, candidates = bound_domains(params, root, lo, hi, rows, offsets, iterations,
                                             early_weight)
            roots.append(root)
            index, value = screened_worst(net32, net64, candidates[0], rows, offsets)
            if value >= 0:
                return roots, candidates[0][index]
        return roots, None

    roots, point = bound_roots(bounds)
    nodes += len(roots)
    if point is not None:
        return done("violated", inf_bounds, point)
    if (tighten_layers > 0 and len(bounds) >= 2
            and any(float(root.value[0]) >= 0 for root in roots)):
        tightening_began = time.perf_counter()
        bounds, layer_slopes, stats["tightening_subdomains"] = tightened_root_bounds(
            params, lo[None], hi[None], bounds, layer_slopes, layers=tighten_layers,
            iterations=iterations, steps=TIGHTEN_STEPS, per_unit=TIGHTEN_PER_UNIT,
            deadline=began + tighten_share * time_limit)
        stats["tightening_seconds"] = time.perf_counter() - tightening_began
        again, point = bound_roots(bounds)     # the same subdomains, bounded again
        if point is not None:
            return done("violated", inf_bounds, point)
        # per group the lower of the two (alpha-CROWN's search need not gain everywhere)
        roots = [new if float(new.value[0]) <= float(old.value[0]) else old
                 for old, new in zip(roots, again)]
    uppers = [root.rows[0] for root in roots]
    per_parent = 0.0      # seconds per subdomain split, as the last batch took
    order = sorted(range(len(groups)), key=lambda g: float(roots[g].value[0]))
    stats["groups"], stats["groups_settled"] = len(groups), 0
    for g in order:                                                    # 3. branch
        rows, offsets = groups[g]
        pool = DomainPool(roots[g], keep_scores=branch_candidates, keep_bounds=refine)
        max_domains = int(memory_gb * 2 ** 30) // pool.bytes_per_domain
        stats["domain_cap"] = max_domains
        closed_max = pool.add(roots[g])
        batches = 0
        while True:
            if len(pool) == 0:
                uppers[g] = closed_max
                stats["groups_settled"] += 1
                break
            if time.perf_counter() - began > time_limit or len(pool) > max_domains:
                uppers[g] = torch.maximum(closed_max, pool.rows_max())
                stats["open_domains"] = len(pool)
                stats["open_bound"] = pool.value_max()
                stats["root_bound"] = float(roots[g].value[0])
                return done("unknown", uppers)
            # a batch fits in the time left, at the last batch's pace per subdomain (the
            # first, of 16, sets the pace)
            left = time_limit - (time.perf_counter() - began)
            fits = int(left / per_parent) if per_parent > 0 else 16
            head = pool.take_best(max(1, min(batch, fits)))
            batch_began = time.perf_counter()
            exhausted = head.exhausted()
            for index in torch.nonzero(exhausted).flatten().tolist():
                leaf, optimum = linear_leaf(params, head, index, lo, hi, rows, offsets)
                stats["linear_leaves"] += 1
                if optimum is not None:
                    x = torch.from_numpy(optimum).to(on).clamp(lo, hi)
                    if float(forward_worst(net64, x[None], rows, offsets)[0]) >= 0:
                        return done("violated", inf_bounds, x)
                if bool((leaf < 0).any()):
                    closed_max = torch.maximum(closed_max,
                                               torch.minimum(head.rows[index], leaf.to(on)))
                else:
                    leaves_open += 1
            if leaves_open:
                uppers[g] = torch.maximum(closed_max, torch.maximum(pool.rows_max(),
                                                                    head.rows.amax(dim=0)))
                return done("unknown", uppers)
            splittable = torch.nonzero(~exhausted).flatten()
            if len(splittable) == 0:
                continue
            parents = head.take(splittable)
            choice = (strong_branching(params, parents, lo, hi, rows, offsets,
                                       branch_candidates) if branch_candidates > 1 else
                      torch.cat(parents.scores, dim=1).argmax(dim=1))
            children = split_children(parents, choice)
            after_split = torch.searchsorted(ends, choice, right=True).repeat(2) + 1
            children, candidates = bound_domains(
                params, children, lo, hi, rows, offsets, branch_iterations, early_weight,
                (layer_slopes, after_split) if refine else None)
            nodes += len(children)
            flat = candidates.reshape(-1, len(lo))
            index, value = screened_worst(net32, net64, flat, rows, offsets)
            if value >= 0:
                return done("violated", inf_bounds, flat[index])
            batches += 1
            if attack_due(batches):
                point = attack_candidates(net64, rows, offsets, flat,
                                          children.value.repeat_interleave(
                                              candidates.shape[1]), lo, hi)
                if point is not None:
                    stats["found_by"] = "attack on subdomain maximisers"
                    return done("violated", inf_bounds, point)
            closed_max = torch.maximum(closed_max, pool.add(children))
            per_parent = (time.perf_counter() - batch_began) / len(head)
    return done("holds", uppers)


def _by_input_splits(net64: MLP, params, lo: torch.Tensor, hi: torch.Tensor,
                     groups: list[tuple[torch.Tensor, torch.Tensor]], options: SearchOptions,
                     began: float, done: Callable[..., BabOutcome],
                     inf_bounds: list[torch.Tensor]) -> BabOutcome:
    """Every group by input-split branch and bound (:mod:`verifiers.bab.input_split`)
    within the time limit: ``violated`` at the first counterexample, ``holds`` when every
    group holds, else ``unknown`` (a group left open does not stop the others, which may
    still give a counterexample)."""
    deadline = began + options.time_limit
    uppers, verdicts, boxes, open_boxes = [], [], 0, 0
    for rows, offsets in groups:
        outcome = search_group(net64, params, lo, hi, rows, offsets, deadline=deadline,
                               batch=options.batch, memory_gb=options.memory_gb)
        boxes += outcome.boxes
        open_boxes += outcome.open_boxes
        if outcome.verdict == "violated":
            return done("violated", inf_bounds, outcome.point, boxes=boxes)
        uppers.append(outcome.upper)
        verdicts.append(outcome.verdict)
    verdict = "holds" if all(v == "holds" for v in verdicts) else "unknown"
    return done(verdict, uppers, boxes=boxes, open_boxes=open_boxes,
                groups_settled=sum(v == "holds" for v in verdicts))
