"""What every attack plugin here shares: a private copy of the network, restarts on the
samples not yet broken, and keep-the-best per sample by worst margin."""

from __future__ import annotations

import copy
from typing import Callable

import torch

from bench.contract import margins


def frozen_copy(net: torch.nn.Module) -> torch.nn.Module:
    """A float32 copy of ``net`` in eval mode whose weights need no gradient (autograd
    then differentiates only with respect to the input; the caller's network is untouched)."""
    return copy.deepcopy(net).float().eval().requires_grad_(False)


def worst_margin(net: torch.nn.Module, points: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_{j != y} f_j(points) - f_y(points)``: ``points (N, d)`` -> ``(N,)``."""
    with torch.no_grad():
        return margins(net(points), y).amax(dim=1)


def keep_better(best: torch.Tensor, best_margin: torch.Tensor, rows: torch.Tensor,
                candidate: torch.Tensor, margin: torch.Tensor) -> None:
    """In place: ``best[rows[k]] = candidate[k]`` where ``margin[k] > best_margin[rows[k]]``."""
    better = margin > best_margin[rows]
    best[rows[better]] = candidate[better]
    best_margin[rows[better]] = margin[better]


def unbroken_runs(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, runs: int,
                  attempt: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
                  ) -> torch.Tensor:
    """Up to ``runs`` calls of ``attempt(rows, run) -> (points, margins)`` on the samples whose
    best margin is still ``< 0`` (the first call on all); the best point per sample
    (``x`` itself if nothing beat it). ``x (N, d)`` float32 -> ``(N, d)``."""
    best = x.clone()
    best_margin = worst_margin(net, x, y)
    for run in range(runs):
        rows = torch.arange(len(x)) if run == 0 else torch.nonzero(best_margin < 0).view(-1)
        if len(rows) == 0:
            break
        points, margin = attempt(rows, run)
        keep_better(best, best_margin, rows, points, margin)
    return best
