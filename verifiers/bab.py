"""``bab``: complete verification by ReLU-split branch and bound with beta-CROWN bounds.

For a property (an input box and unsafe groups ``C_g f(x) >= d_g``, see
:class:`bench.contract.Property`), :func:`decide` answers ``holds``, ``violated`` (with
a point, checked by a float64 forward pass) or ``unknown`` at the time limit, never a
guess:

1. **Attack.** Signed-gradient ascent on each group's smallest row from the box's
   centre and random starts (:func:`bench.contract.signed_ascent`).
2. **Root.** Intermediate bounds by alpha-CROWN, layer by layer
   (:func:`verifiers.refined_bounds.root_layer_bounds`, which keeps their slopes), then
   per group the alpha-CROWN bound of its rows. A group with a row bounded ``< 0`` is
   refuted. If some group is left open on a network of two or more hidden layers, the
   root bounds of hidden layers ``1 .. tighten_layers`` are tightened first by small
   searches on sub-networks, within ``tighten_share`` of the time limit
   (:mod:`verifiers.tightened_bounds`; :data:`TIGHTEN_LAYERS`), and every group's root
   is bounded again.
3. **Branch and bound,** per remaining group. A subdomain is the box with some
   unstable ReLUs fixed (``zhat >= 0`` or ``zhat <= 0``); it inherits its parent's
   intermediate bounds clamped to its splits, on networks of ``refine_depth`` or more
   hidden layers re-derived after the split with the root's slopes
   (:func:`verifiers.refined_bounds.refined_layer_bounds`; :data:`REFINE_DEPTH`; a child
   they show empty is closed), and its bound is beta-CROWN's
   (:func:`verifiers.optimised_bounds.optimise_upper` with the split multipliers),
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
   checked as a counterexample. A subdomain without unstable units is affine: one LP
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
import hashlib
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np
import torch

from bench.contract import Property, check_options, margins, signed_ascent, torch_device
from models import MLP, weights_summary

from .linear_bounds import (Bounds, backward_upper, crown_slope, layer_params,
                            margin_upper_bounds, split_rows)
from .milp import SampleVerdict, SharedVerdicts, VerdictCache
from .optimised_bounds import optimise_upper
from .refined_bounds import LayerSlopes, refined_layer_bounds, root_layer_bounds


# Units per subdomain judged by strong branching; 1: the intercept score alone. Measured
# (CPU seconds at equal limits, README "Complete verification"): on one and two hidden
# layers the score alone settled every instance that 4 candidates settled, with fewer
# nodes and 1.1x to 2.2x sooner; on four and six hidden layers neither won clearly.
BRANCH_CANDIDATES = 1
# Memory for the open subdomains of a group (the cap on their number follows from it):
# 155,000 on 784-256x6-10, where at most 1,000 are split per second on two cores.
MEMORY_GB = 2.0
# Slope and multiplier steps per batch of children, warm-started from their parents.
# Measured at 15 s per sample on 16 AT-NN images that 10 steps left open: 10 steps
# decided 1, 5 decided 3, 3 and 2 decided 5, 1 decided 2; on 9 instances that every
# choice settles (AT-NN, fc-2x256), 3 steps took 1.1x to 1.7x less time than 10.
BRANCH_ITERATIONS = 3
# On networks of at least REFINE_DEPTH hidden layers, a child's pre-activation bounds are
# re-derived after its split with the root's intermediate slopes
# (:func:`verifiers.refined_bounds.refined_layer_bounds`) instead of kept as its parent's
# clamped to the split, and a unit's branching score is multiplied by EARLY_SPLIT_WEIGHT
# per hidden layer after its own (a split then also tightens those layers, which the
# score, the final bound's slack, does not see). Measured (README "Complete
# verification"): on 784-256x4-10 and 784-256x6-10 this settled more groups of every
# hard instance tried; on 784-256x2-10 it took 5.8x longer (one layer to re-derive, at
# 784 inputs, costs more than the nodes it saves).
REFINE_DEPTH = 4
EARLY_SPLIT_WEIGHT = 4.0
# Before branching, when some group is open at the root, the root bounds of hidden layers
# 1 .. TIGHTEN_LAYERS are tightened by small searches on sub-networks
# (:mod:`verifiers.tightened_bounds`): TIGHTEN_STEPS rounds of TIGHTEN_PER_UNIT splits per
# unit and direction, within TIGHTEN_SHARE of the time limit.
TIGHTEN_LAYERS = 2
TIGHTEN_STEPS = 8
TIGHTEN_PER_UNIT = 64
TIGHTEN_SHARE = 0.25
# Candidate points are screened by a float32 forward pass; only those whose float32
# violation is above -SCREEN_TOLERANCE * (1 + the size of its terms) are re-checked in
# float64 (a screen: a point it drops is a missed candidate, never a wrong verdict).
SCREEN_TOLERANCE = 1e-3


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


@dataclass
class Domains:
    """A batch of ``D`` subdomains of one group: per hidden layer ``(D, m_k)`` bounds and
    split signs, ``(D, S, m_k)`` warm starts, and the bound ``value (D,)`` (the smallest
    row's upper bound minus its offset; ``< 0`` closes the subdomain)."""

    lower: list[torch.Tensor]
    upper: list[torch.Tensor]
    sigma: list[torch.Tensor]
    slopes: list[torch.Tensor] | None    # None before the first bound: CROWN's slopes
    betas: list[torch.Tensor] | None
    scores: list[torch.Tensor]
    rows: torch.Tensor                  # (D, S) per-row bounds (minus offsets)
    value: torch.Tensor

    LAYERED = ("lower", "upper", "sigma", "slopes", "betas", "scores")

    def __len__(self) -> int:
        return len(self.value)

    @classmethod
    def unsplit(cls, bounds: Bounds, count: int, rows: int, device: torch.device
                ) -> "Domains":
        """``count`` copies of the unsplit box with pre-activation bounds ``bounds`` (per
        hidden layer ``(1, m_k)``, float64) and ``rows`` specification rows, on ``device``,
        not yet bounded."""
        zeros = partial(torch.zeros, dtype=torch.float64, device=device)
        return cls([low.expand(count, -1) for low, _ in bounds],
                   [up.expand(count, -1) for _, up in bounds],
                   [zeros(count, low.shape[1]) for low, _ in bounds], None, None, [],
                   zeros(count, rows), zeros(count))

    def exhausted(self) -> torch.Tensor:
        """``(D,)`` bool: subdomains without an unstable unit left to split."""
        return torch.stack([s.amax(dim=1) for s in self.scores], 1).amax(1) < 0

    def flat(self) -> list[torch.Tensor]:
        """Every tensor, layer lists first (bounded domains only: slopes and betas set)."""
        return [t for name in self.LAYERED for t in getattr(self, name)] + [self.rows,
                                                                            self.value]

    @classmethod
    def unflat(cls, tensors: list[torch.Tensor], layers: int) -> "Domains":
        parts = [tensors[k * layers:(k + 1) * layers] for k in range(len(cls.LAYERED))]
        return cls(*parts, tensors[-2], tensors[-1])

    def take(self, index: torch.Tensor) -> "Domains":
        return Domains.unflat([t[index] for t in self.flat()], len(self.lower))

    @classmethod
    def concat(cls, parts: list["Domains"]) -> "Domains":
        """The subdomains of every part, in order (bounded domains, as :meth:`flat`)."""
        return cls.unflat([torch.cat(tensors) for tensors in zip(*(p.flat() for p in parts))],
                          len(parts[0].lower))

    def pack(self, keep_scores: int, keep_bounds: bool) -> list[torch.Tensor]:
        """The lean form kept in a :class:`DomainPool`: split signs (int8, all layers in
        one ``(D, sum m_k)``), with ``keep_bounds`` the pre-activation bounds (float32,
        rounded outwards, so still sound; all layers in one ``(D, sum m_k)`` each), slopes,
        multipliers, the ``keep_scores`` best branching units (indices into all hidden
        units, and their scores), ``rows`` and ``value``. Without ``keep_bounds`` the
        bounds are the root's clamped to the splits, rebuilt by :meth:`unpack`."""
        flat_scores = torch.cat(self.scores, dim=1)
        best = flat_scores.topk(min(keep_scores, flat_scores.shape[1]), dim=1)
        bounds = [_rounded(torch.cat(self.lower, dim=1), -torch.inf),
                  _rounded(torch.cat(self.upper, dim=1), torch.inf)] if keep_bounds else []
        return [torch.cat(self.sigma, dim=1).to(torch.int8), *bounds, *self.slopes,
                *self.betas, best.indices.to(torch.int32), best.values, self.rows, self.value]

    @classmethod
    def unpack(cls, packed: list[torch.Tensor], widths: list[int], root: Bounds | None
               ) -> "Domains":
        """Inverse of :meth:`pack`: bounds back in float64, or, for a pack without them,
        rebuilt from the group's root bounds ``root`` (each unit split ``zhat >= 0`` has
        its lower bound raised to 0, each split ``zhat <= 0`` its upper bound lowered to
        0); the scores not kept are ``-1`` (never chosen)."""
        layers = len(widths)
        signs = [t.to(torch.float64) for t in packed[0].split(widths, dim=1)]
        if root is None:
            lower, upper = ([t.to(torch.float64) for t in packed[i].split(widths, dim=1)]
                            for i in (1, 2))
            packed = packed[3:]
        else:
            lower = [torch.where(sign > 0, low.clamp(min=0), low)
                     for sign, (low, _) in zip(signs, root)]
            upper = [torch.where(sign < 0, up.clamp(max=0), up)
                     for sign, (_, up) in zip(signs, root)]
            packed = packed[1:]
        slopes, betas = packed[:layers], packed[layers:2 * layers]
        units, kept, rows, value = packed[2 * layers:]
        scores = torch.full((len(value), sum(widths)), -1.0, dtype=kept.dtype,
                            device=kept.device).scatter_(1, units.long(), kept)
        return cls(lower, upper, signs, list(slopes), list(betas),
                   list(scores.split(widths, dim=1)), rows, value)


def _rounded(bound: torch.Tensor, towards: float) -> torch.Tensor:
    """``bound`` (float64) in float32, rounded towards ``-inf`` or ``+inf`` (``towards``)
    where the nearest float32 lies on the wrong side, so a lower bound stays below and
    an upper bound above."""
    near = bound.to(torch.float32)
    wrong = near.to(bound.dtype) > bound if towards < 0 else near.to(bound.dtype) < bound
    return torch.where(wrong, torch.nextafter(near, torch.full_like(near, towards)), near)


class DomainPool:
    """The open subdomains of one group, in buffers that grow by half: adding a batch
    writes into free slots and taking the best ones marks them dead, so a step costs in
    proportion to its batch, not to the pool (copying the pool each step cost a third of
    the time at 24,000 subdomains). A full buffer is rebuilt with the live subdomains
    only, at 1.5 times their number (plus the batch), so each rebuild is paid for by as many
    additions as it copies.

    A subdomain is stored lean (:meth:`Domains.pack`): split signs as int8, no
    pre-activation bounds (rebuilt from the group's root bounds and the splits) unless
    they are re-derived per subdomain (then float32, rounded outwards), and of the
    branching scores only the ``keep_scores`` best units. On 784-256x6-10 with one row
    that is 13.8 KB (26.1 KB with bounds) instead of 55.3 KB. ``bytes_per_domain`` is
    that size (the cap on open subdomains follows a memory budget)."""

    def __init__(self, root: Domains, keep_scores: int = 1, keep_bounds: bool = False
                 ) -> None:
        """``root``: the group's one unsplit subdomain, bounded. ``keep_bounds``: store
        each subdomain's pre-activation bounds (when they are re-derived, not just the
        root's clamped to the splits)."""
        if len(root) != 1:
            raise ValueError(f"a pool starts from one root subdomain, not {len(root)}")
        self.root = None if keep_bounds else list(zip(root.lower, root.upper))
        self.widths = [s.shape[1] for s in root.sigma]
        self.keep_scores = keep_scores
        self.keep_bounds = keep_bounds
        packed = root.pack(keep_scores, keep_bounds)
        self.buffers = [t[:0].clone() for t in packed]
        self.bytes_per_domain = sum(t[:1].nelement() * t.element_size() for t in packed)
        self.alive = torch.zeros(0, dtype=torch.bool, device=root.value.device)
        self.end = 0
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def _resize(self, capacity: int) -> None:
        keep = torch.nonzero(self.alive[:self.end]).flatten()
        fresh = []
        for buffer in self.buffers:
            grown = buffer.new_empty((capacity, *buffer.shape[1:]))
            grown[:len(keep)] = buffer[keep]
            fresh.append(grown)
        self.buffers = fresh
        self.alive = torch.zeros(capacity, dtype=torch.bool, device=self.alive.device)
        self.alive[:len(keep)] = True
        self.end = len(keep)

    def add(self, domains: Domains) -> torch.Tensor:
        """Keep the open ones of ``domains`` (bound ``>= 0``); return ``(S,)``, per row the
        largest bound of the closed ones (``-inf`` if none)."""
        closed = domains.value < 0
        closed_max = domains.rows[closed].amax(dim=0) if closed.any() else \
            domains.rows.new_full(domains.rows.shape[1:], -torch.inf)
        domains = domains.take(torch.nonzero(~closed).flatten())
        size = len(domains)
        if size == 0:
            return closed_max
        if self.end + size > len(self.alive):
            self._resize(max(3 * (self.count + size) // 2, 64))
        for buffer, tensor in zip(self.buffers, domains.pack(self.keep_scores, self.keep_bounds)):
            buffer[self.end:self.end + size] = tensor
        self.alive[self.end:self.end + size] = True
        self.end += size
        self.count += size
        return closed_max

    def take_best(self, count: int) -> Domains:
        """Remove and return the ``count`` subdomains with the largest bounds (with their
        pre-activation bounds rebuilt and the scores of all but the kept units ``-1``)."""
        values = self.buffers[-1][:self.end].masked_fill(~self.alive[:self.end], -torch.inf)
        index = values.topk(min(count, self.count)).indices
        taken = Domains.unpack([buffer[index] for buffer in self.buffers], self.widths,
                               self.root)
        self.alive[index] = False
        self.count -= len(index)
        return taken

    def rows_max(self) -> torch.Tensor:
        """``(S,)``: per row the largest bound over the open subdomains (``-inf`` if none)."""
        rows = self.buffers[-2][:self.end]
        return rows.masked_fill(~self.alive[:self.end, None], -torch.inf).amax(dim=0)

    def value_max(self) -> float:
        return float(self.buffers[-1][:self.end][self.alive[:self.end]].max())


def intercept_scores(coefs: list[torch.Tensor], bounds: Bounds, early_weight: float = 1.0
                     ) -> list[torch.Tensor]:
    """Per hidden layer ``(D, m_k)``: the BaBSR-style score of splitting each unit, summed
    over the specification rows and multiplied by ``early_weight`` per hidden layer after
    the unit's (``>= 0`` for unstable units, ``-1`` for the others)."""
    out = []
    for k, (coef, (lower, upper)) in enumerate(zip(coefs, bounds)):
        crossing = (lower < 0) & (upper > 0)
        gap = torch.where(crossing, upper - lower, torch.ones_like(upper))
        slack = torch.where(crossing, upper * (-lower) / gap, torch.zeros_like(upper))
        score = (coef.clamp(min=0).sum(1) * slack).to(torch.float32)
        score = score * early_weight ** (len(bounds) - 1 - k)
        # an unstable unit the bound does not see still splits before none at all
        out.append(torch.where(crossing, score + 1e-9 * gap.to(torch.float32),
                               torch.full_like(score, -1.0)))
    return out


def forward_worst(net64: MLP, points: torch.Tensor, rows: torch.Tensor,
                  offsets: torch.Tensor) -> torch.Tensor:
    """``min_i (c_i . f(x) - d_i)`` per point ``(P, d)`` in float64: ``>= 0`` violates."""
    with torch.no_grad():
        return (net64(points) @ rows.T - offsets).amin(dim=1)


def screened_worst(net32: MLP, net64: MLP, points: torch.Tensor, rows: torch.Tensor,
                   offsets: torch.Tensor) -> tuple[int, float]:
    """The point of ``points (P, d)`` (float64) most violating by :func:`forward_worst`,
    and its violation, among those a float32 pass does not rule out: a point is ruled
    out when its float32 violation lies below ``-SCREEN_TOLERANCE`` times the size of
    the terms it sums (far beyond float32 rounding). ``(-1, -inf)`` if all are."""
    rows32, offsets32 = rows.float(), offsets.float()
    with torch.no_grad():
        outputs = net32(points.float())
        values = (outputs @ rows32.T - offsets32).amin(dim=1)
        scale = (outputs.abs() @ rows32.abs().T + offsets32.abs()).amax(dim=1)
        keep = torch.nonzero(values >= -SCREEN_TOLERANCE * (1 + scale)).flatten()
    if len(keep) == 0:
        return -1, -torch.inf
    exact = forward_worst(net64, points[keep], rows, offsets)
    best = int(exact.argmax())
    return int(keep[best]), float(exact[best])


def attack_property(net64: MLP, prop: Property, *, restarts: int, steps: int,
                    seed: int = 0) -> tuple[torch.Tensor, float]:
    """The most violating point found in the box, ``(d,)`` float64, and its violation
    ``max_g min_i (c_i . f - d_i)`` (``>= 0``: a counterexample by a float64 forward pass).

    Signed-gradient ascent (:func:`bench.contract.signed_ascent`) on each group's smallest
    row, from the box's centre and ``restarts - 1`` uniform random starts per group, all
    groups in one batch; step ``max(hi - lo) / 8``.
    """
    device = net64.linears[0].weight.device
    generator = torch.Generator().manual_seed(seed)
    lo, hi = prop.lo.to(torch.float64), prop.hi.to(torch.float64)
    rows, offsets, sizes = split_rows(prop)
    owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    per_group = torch.cat([((lo + hi) / 2)[None], lo + (hi - lo) * torch.rand(
        max(restarts - 1, 0), len(lo), generator=generator, dtype=torch.float64)])
    starts = per_group.repeat(len(sizes), 1)
    group_of_start = torch.arange(len(sizes)).repeat_interleave(len(per_group))
    lo, hi, rows, offsets, starts, owner, group_of_start = (
        t.to(device) for t in (lo, hi, rows.to(torch.float64), offsets.to(torch.float64),
                               starts, owner, group_of_start))
    foreign = group_of_start[:, None] != owner[None, :]          # (P, R): not its rows

    def violation(points: torch.Tensor) -> torch.Tensor:
        values = net64(points) @ rows.T - offsets
        return values.masked_fill(foreign, torch.inf).amin(dim=1)

    step = float((hi - lo).max()) / 8 or 1e-3
    found = signed_ascent(violation, starts, lo.expand_as(starts), hi.expand_as(starts),
                          step=step, steps=steps, keep_best=True)
    with torch.no_grad():
        values = violation(found)
    best = int(values.argmax())
    return found[best], float(values[best])


@torch.no_grad()
def linear_leaf(params, domains: Domains, index: int, lo: torch.Tensor, hi: torch.Tensor,
                rows: torch.Tensor, offsets: torch.Tensor
                ) -> tuple[torch.Tensor, np.ndarray | None]:
    """A subdomain without unstable units, where the network is affine: per row the LP
    ``max c_i . f(x) - d_i`` over the box and the split constraints (HiGHS). Returns per
    row ``(S,)`` the weak-duality bound (sound, from the LP's duals, in float64; ``inf``
    where the LP failed, ``-inf`` for all rows if the subdomain is empty) and the LP's
    maximiser of the row with the largest LP value (a counterexample candidate)."""
    from scipy.optimize import linprog

    params = [(w.cpu(), b.cpu()) for w, b in params]     # HiGHS works on host arrays
    lo, hi, rows, offsets = lo.cpu(), hi.cpu(), rows.cpu(), offsets.cpu()
    weight = torch.eye(len(lo), dtype=torch.float64)     # zhat_k = weight x + shift
    shift = torch.zeros(len(lo), dtype=torch.float64)
    constraints, limits = [], []
    for k, (w, b) in enumerate(params[:-1]):
        weight, shift = w @ weight, w @ shift + b
        sigma = domains.sigma[k][index].cpu()
        split = sigma != 0
        if split.any():        # sigma * (weight x + shift) >= 0
            constraints.append(-(sigma[split, None] * weight[split]))
            limits.append(sigma[split] * shift[split])
        active = (domains.lower[k][index] >= 0).to(torch.float64).cpu()
        weight, shift = active[:, None] * weight, active * shift
    w_last, b_last = params[-1]
    out_weight, out_shift = w_last @ weight, w_last @ shift + b_last
    a_ub = torch.cat(constraints).numpy() if constraints else None
    b_ub = torch.cat(limits).numpy() if constraints else None
    box = list(zip(lo.numpy(), hi.numpy()))
    found = torch.full((len(rows),), torch.inf, dtype=torch.float64)
    best_point, best_value = None, -np.inf
    for i, (c, d) in enumerate(zip(rows, offsets)):
        gain = (c @ out_weight).numpy()
        constant = float(c @ out_shift - d)
        result = linprog(-gain, A_ub=a_ub, b_ub=b_ub, bounds=box, method="highs")
        if result.status == 2:                      # infeasible subdomain: nothing to reach
            return torch.full_like(found, -torch.inf), None
        if result.status != 0:
            continue
        duals = np.zeros(0) if a_ub is None else np.maximum(-result.ineqlin.marginals, 0.0)
        reduced = gain - (duals @ a_ub if a_ub is not None else 0.0)
        bound = constant + float(np.maximum(reduced * lo.numpy(), reduced * hi.numpy()).sum())
        if a_ub is not None:
            bound += float(duals @ b_ub)
        found[i] = bound
        if -result.fun + constant > best_value:
            best_value, best_point = -result.fun + constant, result.x
    return found, best_point


def split_children(parents: Domains, choice: torch.Tensor) -> Domains:
    """Both children of every parent (``zhat >= 0`` first, then ``zhat <= 0``), split on
    unit ``choice (D,)`` (an index into the hidden units of all layers): bounds clamped,
    split signs set, warm starts inherited (the new unit's multiplier is still zero);
    ``rows``/``value``/``scores`` are the parents' until :func:`bound_domains` runs."""
    widths = [s.shape[1] for s in parents.scores]
    starts = np.cumsum([0] + widths)
    device = parents.value.device
    twice = torch.arange(len(parents), device=device).repeat(2)
    children = parents.take(twice)
    side = torch.cat([torch.ones(len(parents), dtype=torch.float64, device=device),
                      -torch.ones(len(parents), dtype=torch.float64, device=device)])
    for k in range(len(widths)):
        inside = (choice >= starts[k]) & (choice < starts[k + 1])
        if not inside.any():
            continue
        rows_k = torch.nonzero(inside.repeat(2)).flatten()
        units = (choice.repeat(2) - int(starts[k]))[rows_k]
        positive = side[rows_k] > 0
        lower, upper = children.lower[k].clone(), children.upper[k].clone()
        lower[rows_k[positive], units[positive]] = 0.0
        upper[rows_k[~positive], units[~positive]] = 0.0
        sigma = children.sigma[k].clone()
        sigma[rows_k, units] = side[rows_k]
        children.lower[k], children.upper[k], children.sigma[k] = lower, upper, sigma
    return children


def quick_values(params32, domains: Domains, lo32: torch.Tensor, hi32: torch.Tensor,
                 rows32: torch.Tensor, offsets32: torch.Tensor) -> torch.Tensor:
    """``(D,)`` float32 estimates of the domains' bounds with their inherited slopes and
    multipliers, no optimisation (for ranking branching candidates only, never for a
    verdict)."""
    count = len(domains)
    bounds = [(low.float(), up.float()) for low, up in zip(domains.lower, domains.upper)]
    split_coef = [b.clamp(min=0) * sig.float().unsqueeze(1)
                  for b, sig in zip(domains.betas, domains.sigma)]
    with torch.no_grad():
        upper = backward_upper(params32, bounds, rows32[None].expand(count, -1, -1),
                               lo32[None].expand(count, -1), hi32[None].expand(count, -1),
                               slopes=domains.slopes, split_coef=split_coef)
    return (upper - offsets32).amin(dim=1)


def strong_branching(params, parents: Domains, lo: torch.Tensor, hi: torch.Tensor,
                     rows: torch.Tensor, offsets: torch.Tensor, candidates: int
                     ) -> torch.Tensor:
    """Filtered smart branching (after De Palma et al. 2021): per parent, the
    ``candidates`` units of highest intercept score, each judged by both children's
    quick bounds; the unit whose worse child is lowest wins. Returns ``choice (D,)``."""
    flat = torch.cat(parents.scores, dim=1)
    top = flat.topk(min(candidates, flat.shape[1]), dim=1)
    params32 = [(w.float(), b.float()) for w, b in params]
    lo32, hi32, rows32, offsets32 = lo.float(), hi.float(), rows.float(), offsets.float()
    worst = []
    for column in range(top.indices.shape[1]):
        children = split_children(parents, top.indices[:, column])
        values = quick_values(params32, children, lo32, hi32, rows32, offsets32)
        value = torch.maximum(values[:len(parents)], values[len(parents):])
        worst.append(torch.where(top.values[:, column] >= 0, value,
                                 torch.full_like(value, torch.inf)))
    best = torch.stack(worst, dim=1).argmin(dim=1)
    return top.indices.gather(1, best[:, None]).squeeze(1)


def bound_domains(params, domains: Domains, lo: torch.Tensor, hi: torch.Tensor,
                  rows: torch.Tensor, offsets: torch.Tensor, iterations: int,
                  early_weight: float = 1.0,
                  refine: tuple[LayerSlopes, torch.Tensor] | None = None
                  ) -> tuple[Domains, torch.Tensor]:
    """beta-CROWN bounds of ``domains`` (in place of their ``rows``/``value``/warm starts/
    scores, weighted by ``early_weight``, see :func:`intercept_scores`); returns them and
    each subdomain's candidate points ``(D, S, d)``. ``rows (S, K)`` and ``offsets (S,)``
    are the specification of every subdomain, or ``(D, S, K)`` and ``(D, S)`` one per
    subdomain. With ``refine = (root slopes,
    k (D,))`` their pre-activation bounds are first re-derived, each from its layer ``k``
    on (the one after its newest split;
    :func:`verifiers.refined_bounds.refined_layer_bounds`), and a subdomain they show
    empty is closed (``rows`` and ``value`` ``-inf``)."""
    count = len(domains)
    bounds = list(zip(domains.lower, domains.upper))
    empty = None
    if refine is not None:
        bounds = refined_layer_bounds(params, bounds, lo[None].expand(count, -1),
                                      hi[None].expand(count, -1), *refine)
        empty = torch.stack([(low > up).any(dim=1) for low, up in bounds], 1).any(1)
    if rows.dim() == 2:
        rows, offsets = rows[None].expand(count, -1, -1), offsets[None].expand(count, -1)
    result = optimise_upper(params, bounds, rows, lo[None].expand(count, -1),
                            hi[None].expand(count, -1), iterations=iterations,
                            slopes=domains.slopes, sigmas=domains.sigma, betas=domains.betas,
                            settle_below=offsets)
    values = result.upper - offsets
    if empty is not None:
        values = values.masked_fill(empty[:, None], -torch.inf)
    candidates = torch.where(result.input_coef > 0, hi, lo)
    scores = intercept_scores(result.coefs, bounds, early_weight)
    updated = Domains([low for low, _ in bounds], [up for _, up in bounds], domains.sigma,
                      result.slopes, result.betas, scores, values, values.amin(dim=1))
    return updated, candidates


def decide(net: MLP, prop: Property, *, time_limit: float, batch: int = 256,
           iterations: int = 20, branch_iterations: int = BRANCH_ITERATIONS,
           restarts: int = 16, attack_steps: int = 100, memory_gb: float = MEMORY_GB,
           seed: int = 0, branch_candidates: int = BRANCH_CANDIDATES,
           refine_depth: int = REFINE_DEPTH, tighten_layers: int = TIGHTEN_LAYERS,
           tighten_share: float = TIGHTEN_SHARE, device: str = "cpu") -> BabOutcome:
    """Settle ``prop`` on ``net`` within about ``time_limit`` seconds (see the module doc).
    Bounds and subdomains live on ``device`` (``cpu``, or ``cuda`` where torch sees one);
    the returned tensors are on the CPU."""
    began = time.perf_counter()
    on = torch_device(device)
    net64 = net.float64_copy().requires_grad_(False).to(on)
    net32 = copy.deepcopy(net64).float()
    params = layer_params(net64, torch.float64)
    lo, hi = prop.lo.to(on, torch.float64), prop.hi.to(on, torch.float64)
    nodes, leaves_open = 0, 0
    stats: dict[str, Any] = {"linear_leaves": 0}

    def done(verdict: str, uppers: list[torch.Tensor], point: torch.Tensor | None = None
             ) -> BabOutcome:
        stats["open_leaves"] = leaves_open
        return BabOutcome(verdict, [u.cpu() for u in uppers],
                          None if point is None else point.cpu(), nodes,
                          time.perf_counter() - began, stats)

    groups = [(m.to(on, torch.float64), d.to(on, torch.float64)) for m, d in prop.groups]
    inf_bounds = [torch.full((len(d),), torch.inf, dtype=torch.float64) for _, d in groups]
    if restarts > 0:                                                  # 1. attack
        point, value = attack_property(net64, prop, restarts=restarts, steps=attack_steps,
                                       seed=seed)
        if value >= 0:
            return done("violated", inf_bounds, point)
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
        from .tightened_bounds import tightened_root_bounds

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
                leaf, point = linear_leaf(params, head, index, lo, hi, rows, offsets)
                stats["linear_leaves"] += 1
                if point is not None:
                    x = torch.from_numpy(point).to(on).clamp(lo, hi)
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
            closed_max = torch.maximum(closed_max, pool.add(children))
            per_parent = (time.perf_counter() - batch_began) / len(head)
    return done("holds", uppers)


def bab_verdicts(net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 options: dict[str, Any], clip: bool, cache: VerdictCache | None = None
                 ) -> list[SampleVerdict]:
    """Per sample of ``x (N, d)``, ``y (N,)``: :func:`decide` on its robustness property
    (``B_eps(x)``, ``∩ [0, 1]^d`` with ``clip``) with ``options`` (its keywords), as a
    :class:`verifiers.milp.SampleVerdict`: ``upper (K,)`` float64 per class, the smaller
    of CROWN's bound and branch and bound's (``-inf`` at the label); the counterexample
    as ``witness`` with its float64 worst margin ``lower >= 0`` (``-inf`` without one);
    ``milps`` is 0. Cached like ``milp``'s verdicts (per weights, eps, options, input
    and label; a float32 copy of a cached float64 input reuses its verdict)."""
    store = cache if cache is not None else VerdictCache()
    keys = _sample_keys(net, x, y, eps, options, clip)
    if x.dtype != torch.float64:
        keys = [store.for_attack(key, x[n]) for n, key in enumerate(keys)]
    missing = [n for n, key in enumerate(keys) if store.get(key) is None]
    if missing:
        x64 = x[missing].to(torch.float64)
        net64 = net.float64_copy()
        with torch.no_grad():   # sound everywhere; what a sample keeps when bab ends early
            crown = margin_upper_bounds(net64, x64, y[missing], eps, crown_slope, clip)
        for row, n in enumerate(missing):
            label = int(y[n])
            prop = Property.robustness(x64[row], label, eps, net.num_classes, clip)
            outcome = decide(net, prop, **options)
            upper = crown[row].clone()
            others = [j for j in range(net.num_classes) if j != label]
            upper[others] = torch.minimum(upper[others], torch.cat(outcome.uppers))
            lower, witness = -np.inf, None
            if outcome.counterexample is not None:
                witness = outcome.counterexample.to(torch.float64)
                with torch.no_grad():
                    lower = float(margins(net64(witness[None]), y[n:n + 1]).amax())
                witness = witness.numpy()
            verdict = {"holds": "certified", "violated": "broken"}.get(outcome.verdict,
                                                                       "unknown")
            store.put(keys[n], x64[row], SampleVerdict(upper.numpy(), lower, witness, verdict,
                                                       outcome.nodes, outcome.seconds, 0))
    return [store.get(key) for key in keys]


def _sample_keys(net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float,
                 options: dict[str, Any], clip: bool) -> list[tuple]:
    """Each sample's verdict-cache key: weights, eps, ``clip`` and ``options``, input,
    label (the one definition :func:`bab_verdicts` and the shared work both use)."""
    net_key = weights_summary(net)
    config = (clip, *sorted(options.items()))
    return [VerdictCache.key(net_key, eps, config, x[n], int(y[n])) for n in range(len(y))]


def _verdicts_of(x: torch.Tensor, y: torch.Tensor, eps: float, options: dict[str, Any],
                 clip: bool, net: MLP) -> list[tuple[tuple, torch.Tensor, SampleVerdict]]:
    """A batch's searches as a piece of shared work: ``(cache key, x_n, verdict)`` rows."""
    cache = VerdictCache(size=max(len(y), 1))
    verdicts = bab_verdicts(net, x, y, eps, options=options, clip=clip, cache=cache)
    keys = _sample_keys(net, x, y, eps, options, clip)
    return [(key, x[n], verdict) for n, (key, verdict) in enumerate(zip(keys, verdicts))]


class SharedSearches(SharedVerdicts):
    """Options and verdict cache of ``bab`` and ``bab-cex``: one branch and bound per
    sample. As for ``milp`` and ``milp-cex`` (whose verdict cache and ``use_shared`` it
    reuses), ``shared_work`` names a batch's searches by everything they depend on, so
    in a run with both plugins the harness searches each batch once."""

    def __init__(self, *, time_limit: float = 60.0, batch: int = 256, iterations: int = 20,
                 branch_iterations: int = BRANCH_ITERATIONS,
                 branch_candidates: int = BRANCH_CANDIDATES,
                 memory_gb: float = MEMORY_GB, refine_depth: int = REFINE_DEPTH,
                 tighten_layers: int = TIGHTEN_LAYERS, tighten_share: float = TIGHTEN_SHARE,
                 clip: bool = True, device: str = "cpu") -> None:
        check_options(time_limit=(time_limit, "number>0"), batch=(batch, "int>=1"),
                      iterations=(iterations, "int>=0"),
                      branch_iterations=(branch_iterations, "int>=0"),
                      branch_candidates=(branch_candidates, "int>=1"),
                      memory_gb=(memory_gb, "number>0"), refine_depth=(refine_depth, "int>=0"),
                      tighten_layers=(tighten_layers, "int>=0"),
                      tighten_share=(tighten_share, "fraction"), clip=(clip, "bool"))
        torch_device(device)
        self.time_limit = time_limit
        self.batch = batch
        self.iterations = iterations
        self.branch_iterations = branch_iterations
        self.branch_candidates = branch_candidates
        self.memory_gb = memory_gb
        self.refine_depth = refine_depth
        self.tighten_layers = tighten_layers
        self.tighten_share = tighten_share
        self.clip = clip
        self.device = device
        self._verdicts = VerdictCache()
        self._stats: list[dict[str, Any]] = []      # bab's per-sample rows

    def _options(self) -> dict[str, Any]:
        """:func:`decide`'s keywords."""
        return {name: value for name, value in self.config().items() if name != "clip"}

    def shared_work(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float,
                    workers: int) -> dict[str, Callable[[MLP], list]]:
        """One piece: the batch's searches (``workers`` does not matter: one batch)."""
        x64 = x.detach().to(torch.float64).clone()
        digest = hashlib.sha256(x64.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:24]
        options = ",".join(f"{k}={v!r}" for k, v in sorted(self._options().items()))
        key = f"bab-verdicts/{options}/{self.clip}/{eps!r}/{digest}"
        return {key: partial(_verdicts_of, x64, y.clone(), eps, self._options(), self.clip)}

    def verdicts(self, net: MLP, x: torch.Tensor, y: torch.Tensor,
                 eps: float) -> list[SampleVerdict]:
        """The cached verdicts of ``x (N, d)`` (float64, or an attack's float32 copy),
        searching those not cached."""
        return bab_verdicts(net, x, y, eps, options=self._options(), clip=self.clip,
                            cache=self._verdicts)


class BranchAndBound(SharedSearches):
    """Complete verifier: per sample, :func:`decide` on the robustness property."""

    name = "bab"
    opt_in = True      # seconds to minutes per sample; ask for it by name
    exact = True

    def bound(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)``, ``y (N,)`` -> ``U (N, K)`` float64, ``U[n, y_n] = -inf``: per class
        the largest upper bound over the final subdomains (``< 0`` everywhere iff
        certified), or CROWN's bound where that is smaller (a sample whose counterexample
        came first keeps CROWN's bounds; the point itself is the attack ``bab-cex``).
        The verdicts are in :meth:`statistics`."""
        verdicts = self.verdicts(net, x, y, eps)
        for row, verdict in enumerate(verdicts):
            self._stats.append({"row": row, "verdict": verdict.verdict,
                                "nodes": verdict.nodes, "seconds": round(verdict.seconds, 4)})
        return torch.from_numpy(np.stack([v.upper for v in verdicts]))

    def bound_property(self, net: MLP, prop: Property) -> list[torch.Tensor]:
        """Per group of ``prop``, ``(r_g,)`` upper bounds over its box (see :func:`decide`)."""
        return decide(net, prop, **self._options()).uppers

    def statistics(self) -> list[dict[str, Any]]:
        """Every sample's verdict, nodes and seconds so far (the harness takes the new rows
        after each batch; ``row`` is the index within its batch)."""
        return list(self._stats)
