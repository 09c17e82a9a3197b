"""Root pre-activation bounds tightened by small branch and bounds on sub-networks.

alpha-CROWN's intermediate bounds (:func:`verifiers.bab.layer_bounds.root_layer_bounds`)
are at best those of the LP relaxation (Salman et al. 2019), and on deep networks every
later bound, and every subdomain of the search, inherits their looseness. The exact
bound of unit ``i`` of hidden layer ``k``, ``max zhat_{k,i}`` over the box, is a ReLU
program on the first ``k`` hidden layers. On VNN-COMP's deep mnistfc networks the
winning tool tightened the first layers' bounds by MILP before its branch and bound
(alpha-beta-CROWN's ``bab-refine``, with a commercial solver on many cores); here the
same bounds come from our own branch and bound, which is much faster per unit than
HiGHS on these programs (docs/complete-verification.md).

:func:`tighten_layer` bounds ``+zhat_{k,i}`` and ``-zhat_{k,i}`` of every unit crossing
zero, all at once: the sub-network ``params[:k + 1]`` (its output is ``zhat_k``), one
search per row, each started from alpha-CROWN's bound and the best point among its
bound's maximisers, then ``steps`` rounds in which every search splits its ``per_unit``
leaves of largest bound (:func:`verifiers.bab.domains.split_children`, intercept score) and
bounds the children by beta-CROWN (:func:`verifiers.bab.bounding.bound_domains`), all searches
in one batch. A leaf whose bound falls below the search's reachable value is closed.

Sound: the leaves of a search cover the box (a split keeps both ``zhat >= 0`` and
``zhat <= 0``), and each leaf's bound, in float64, is an upper bound over its leaf; the
unit's bound is the largest of its leaves' (closed and open), intersected with the bound
it had. Shapes: ``m_k`` units of hidden layer ``k``, ``d`` inputs, ``P`` searches.
"""

from __future__ import annotations

import time

import torch

from verifiers.bab.bounding import BRANCH_ITERATIONS, bound_domains
from verifiers.bab.domains import DomainPool, Domains, split_children
from verifiers.bab.layer_bounds import LayerSlopes, root_layer_bounds
from verifiers.linear.propagation import Bounds

# Subdomains split per round, over all searches (their children, each holding its bounds,
# slopes and multipliers, are bounded in one batch): fewer splits per unit on wide layers.
MAX_PARENTS = 16384


def sub_network_output(params, points: torch.Tensor) -> torch.Tensor:
    """``(P, m)``: the last layer of ``params`` (no ReLU after it) at ``points (P, d)``."""
    z = points
    for w, b in params[:-1]:
        z = (z @ w.T + b).clamp(min=0)
    w, b = params[-1]
    return z @ w.T + b


@torch.no_grad()
def tighten_layer(params, bounds: Bounds, k: int, lo: torch.Tensor, hi: torch.Tensor, *,
                  steps: int, per_unit: int, iterations: int, deadline: float
                  ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(l, u)``, each ``(1, m_k)``: ``bounds[k]`` (of the box ``lo, hi (1, d)``, given the
    bounds of the layers before) tightened by branch and bound on every unit that
    crosses zero (at most the ``MAX_PARENTS / 2`` widest, ``min(u, -l)``), for ``steps``
    rounds of ``per_unit`` splits per search (fewer where :data:`MAX_PARENTS` says) or
    until ``deadline`` (``time.perf_counter()``); see the module doc; and the number of
    subdomains bounded. ``iterations``: alpha-CROWN steps of each search's root."""
    lower, upper = bounds[k]
    units = torch.nonzero((lower[0] < 0) & (upper[0] > 0)).flatten()
    if len(units) == 0:
        return lower, upper, 0
    if 2 * len(units) > MAX_PARENTS:        # a wide layer: its widest units only
        width = torch.minimum(upper[0, units], -lower[0, units])
        units = units[width.topk(MAX_PARENTS // 2).indices]
    per_unit = max(1, min(per_unit, MAX_PARENTS // (2 * len(units))))
    sub, prefix = params[:k + 1], bounds[:k]
    count = 2 * len(units)                               # +zhat_i first, then -zhat_i
    eye = torch.eye(lower.shape[1], dtype=lower.dtype, device=lower.device)[units]
    rows = torch.cat([eye, -eye])[:, None, :]            # (P, 1, m_k)
    box_lo, box_hi = lo[0], hi[0]
    zero = torch.zeros(count, 1, dtype=lower.dtype, device=lower.device)
    roots, candidates = bound_domains(sub, Domains.unsplit(prefix, count, 1, lower.device),
                                      box_lo, box_hi, rows, zero, iterations)
    bounded = count
    reached = (sub_network_output(sub, candidates[:, 0]) * rows[:, 0]).sum(dim=1)   # (P,)
    offsets = reached[:, None]
    roots.rows, roots.value = roots.rows - offsets, roots.value - reached
    own_roots = [roots.take(torch.tensor([p], device=lower.device)) for p in range(count)]
    pools = [DomainPool(root) for root in own_roots]
    kept = torch.stack([pool.add(root) for pool, root in zip(pools, own_roots)])  # (P, 1)
    for _ in range(steps):
        if time.perf_counter() > deadline:
            break
        parts, owners = [], []
        for p, pool in enumerate(pools):
            if len(pool) == 0:
                continue
            head = pool.take_best(per_unit)
            exhausted = head.exhausted()
            if bool(exhausted.any()):       # no unit left to split: its bound stays
                kept[p] = torch.maximum(kept[p], head.rows[exhausted].amax(dim=0))
            splittable = torch.nonzero(~exhausted).flatten()
            if len(splittable):
                parts.append(head.take(splittable))
                owners.append(torch.full((len(splittable),), p, device=lower.device))
        if not parts:
            break
        parents, owner = Domains.concat(parts), torch.cat(owners)
        children = split_children(parents, torch.cat(parents.scores, dim=1).argmax(dim=1))
        owner = owner.repeat(2)
        children, _ = bound_domains(sub, children, box_lo, box_hi, rows[owner],
                                    offsets[owner], BRANCH_ITERATIONS)
        bounded += len(children)
        for p in torch.unique(owner).tolist():
            mine = torch.nonzero(owner == p).flatten()
            kept[p] = torch.maximum(kept[p], pools[p].add(children.take(mine)))
    for p, pool in enumerate(pools):
        if len(pool):
            kept[p] = torch.maximum(kept[p], pool.rows_max())
    best = kept[:, 0] + reached                        # (P,): upper bounds on each row
    lower, upper = lower.clone(), upper.clone()
    upper[0, units] = torch.minimum(upper[0, units], best[:len(units)])
    lower[0, units] = torch.maximum(lower[0, units], -best[len(units):])
    return lower, upper, bounded


def tightened_root_bounds(params, lo: torch.Tensor, hi: torch.Tensor, bounds: Bounds,
                          slopes: LayerSlopes, *, layers: int, iterations: int, steps: int,
                          per_unit: int, deadline: float) -> tuple[Bounds, LayerSlopes, int]:
    """The root bounds ``bounds`` of the box ``lo, hi (1, d)`` (with ``slopes``, as
    :func:`verifiers.bab.layer_bounds.root_layer_bounds` gives them) with hidden layers
    ``1 .. layers`` tightened in turn (:func:`tighten_layer`; layer 0 is exact), each
    followed by alpha-CROWN again (``iterations`` steps) on every layer, with all bounds
    so far known (so no bound ever loosens), until ``deadline``; the slopes behind the
    final bounds, and the number of subdomains bounded."""
    bounded = 0
    for k in range(1, min(layers, len(params) - 2) + 1):
        if time.perf_counter() > deadline:
            break
        lower, upper, count = tighten_layer(params, bounds, k, lo, hi, steps=steps,
                                            per_unit=per_unit, iterations=iterations,
                                            deadline=deadline)
        bounded += count
        known = bounds[:k] + [(lower, upper)] + bounds[k + 1:]
        with torch.no_grad():
            bounds, slopes = root_layer_bounds(params, lo, hi, iterations=iterations,
                                               known=known)
    return bounds, slopes, bounded
