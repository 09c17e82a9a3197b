"""Subdomains of branch and bound: a batch of them (:class:`Domains`), the pool of
open ones (:class:`DomainPool`), and splitting a batch on chosen units."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from verifiers.linear.propagation import (
    Bounds,
)


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


