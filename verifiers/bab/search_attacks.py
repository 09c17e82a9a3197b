"""Attacks during branch and bound: APGD from the maximisers of the most promising
subdomains' linear bounds.

Every subdomain's bound comes with a candidate point (the input that maximises its
linear bound), which the searches check by one forward pass. Those candidates sit at
box corners (ReLU splits) or inside small boxes (input splits), where the bound is
loose; a short APGD run (:func:`attacks.property_attacks.apgd_from`) from the
candidates of the subdomains of largest bound climbs to the network's own maximum
nearby. It runs after batches 1, 2, 4, 8, ... of a search (:func:`attack_due`), so its
cost stays a vanishing share of a long search and a violated instance is still caught
early.
"""

from __future__ import annotations

import torch

from attacks.property_attacks import apgd_from

STARTS = 32            # candidates attacked per round: those of the largest bounds
STEPS = 50


def attack_due(batch_number: int) -> bool:
    """Whether the search attacks after its ``batch_number``-th batch (1-based): at
    powers of two."""
    return batch_number > 0 and batch_number & (batch_number - 1) == 0


def attack_candidates(net64: torch.nn.Module, rows: torch.Tensor, offsets: torch.Tensor,
                      candidates: torch.Tensor, bounds: torch.Tensor, lo: torch.Tensor,
                      hi: torch.Tensor) -> torch.Tensor | None:
    """APGD on the group ``rows (S, K) . f(x) >= offsets (S,)`` from the :data:`STARTS`
    ``candidates (P, d)`` of largest ``bounds (P,)`` (upper bounds of their subdomains;
    a negative one is a closed subdomain, never a start), each inside its box
    ``[lo, hi]`` (``(d,)`` for all, or ``(P, d)`` one per candidate): a counterexample
    ``(d,)`` (float64 forward pass), or ``None``."""
    live = torch.isfinite(bounds) & (bounds >= 0)
    if not bool(live.any()):
        return None
    order = torch.where(live, bounds, torch.full_like(bounds, -torch.inf)).argsort(
        descending=True)[:min(STARTS, int(live.sum()))]
    starts = candidates[order].to(torch.float64)
    lo = (lo[order] if lo.dim() == 2 else lo.expand_as(starts)).to(torch.float64)
    hi = (hi[order] if hi.dim() == 2 else hi.expand_as(starts)).to(torch.float64)
    point, violation = apgd_from(net64, rows.to(torch.float64), offsets.to(torch.float64),
                                 starts, lo.clone(), hi.clone(), steps=STEPS)
    return point if violation >= 0 else None
