"""Which unstable ReLU a subdomain splits: the BaBSR-style intercept score and filtered
strong branching."""

from __future__ import annotations

import torch

from verifiers.bab.domains import Domains, split_children
from verifiers.linear.propagation import (
    Bounds,
    backward_upper,
)


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


