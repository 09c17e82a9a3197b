"""``square``: the l-inf Square attack (Andriushchenko, Croce, Flammarion & Hein, ECCV
2020), score-based: it reads only the network's outputs, never its gradients, so it is
not fooled by gradient masking.

Start: vertical stripes of ``±eps`` (one random sign per column and channel). Each
query proposes, per sample, a random square window whose pixels are set to ``x ±
eps`` (one random sign per channel), and keeps it when the margin loss
``f_y - max_{j != y} f_j`` falls. The window's side is ``round(sqrt(p d / c))``, with
``p`` from ``p_init`` halved on AutoAttack's schedule (at 10, 50, 200, 500, 1000,
2000, 4000, 6000 and 8000 of 10,000 queries, rescaled to ``queries``). Samples leave
the batch once broken. Window position and signs are drawn per sample (the reference
code draws one window per batch). Randomness: torch's global generator.

Inputs are flat ``(N, d)``; the image layout ``(c, h, w)`` comes from ``image_shape``
(``"auto"``: ``d = c s^2`` with ``c`` in 1 or 3 gives ``(c, s, s)``, anything else
``(1, 1, d)``, whose windows are runs of ``p d`` coordinates).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from attacks.common import frozen_copy, unbroken_runs
from bench.contract import (
    POSITIVE,
    Configurable,
    Integer,
    check_options,
    input_box,
    margins,
)
from models import MLP

SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)   # of 10,000 queries


def window_fraction(p_init: float, query: int, queries: int) -> float:
    """``p`` at ``query`` (0-based): ``p_init`` halved once per schedule point passed."""
    scaled = int(query / queries * 10_000)
    return p_init / 2 ** sum(scaled > point for point in SCHEDULE)


def image_layout(d: int, image_shape: str) -> tuple[int, int, int]:
    """``(c, h, w)`` with ``c h w = d`` from ``"auto"`` or ``"C,H,W"``."""
    if image_shape != "auto":
        shape = tuple(int(part) for part in image_shape.split(","))
        if len(shape) != 3 or math.prod(shape) != d or min(shape) < 1:
            raise ValueError(f"image_shape {image_shape!r} does not describe {d} inputs")
        return shape  # type: ignore[return-value]
    for channels in (1, 3):
        side = math.isqrt(d // channels)
        if d % channels == 0 and side * side * channels == d and side >= 2:
            return channels, side, side
    return 1, 1, d


def window_size(p: float, layout: tuple[int, int, int]) -> tuple[int, int]:
    """``(height, width)`` of a window covering about ``p`` of each channel: a square of
    side ``round(sqrt(p h w))`` (at most ``h - 1``), or for ``h = 1`` a run of ``round(p w)``."""
    _, h, w = layout
    if h > 1:
        side = min(max(round(math.sqrt(p * h * w)), 1), h - 1)
        return side, side
    return 1, min(max(round(p * w), 1), max(w - 1, 1))


def _window_mask(rows: int, layout: tuple[int, int, int], size: tuple[int, int],
                 generator: torch.Generator | None) -> torch.Tensor:
    """Per sample one random window of ``size``: ``(rows, 1, h, w)`` boolean."""
    _, h, w = layout
    height, width = size
    top = torch.randint(0, h - height + 1, (rows, 1, 1, 1), generator=generator)
    left = torch.randint(0, w - width + 1, (rows, 1, 1, 1), generator=generator)
    r = torch.arange(h).view(1, 1, h, 1)
    c = torch.arange(w).view(1, 1, 1, w)
    return (r >= top) & (r < top + height) & (c >= left) & (c < left + width)


def square_search(objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  lo: torch.Tensor, hi: torch.Tensor, *, queries: int, p_init: float,
                  layout: tuple[int, int, int], generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Square's random search over the vertices of boxes ``[lo, hi] (N, d)``: maximise
    ``objective(points (M, d), rows (M,)) -> (M,)`` (``rows``: which boxes the points
    belong to). Start: vertical stripes of ``lo``/``hi``; each query sets one random window
    per box to ``lo`` or ``hi`` (one sign per channel) and keeps it where the objective
    rises. A box leaves once its value is ``>= 0`` (a success). Returns per box the best
    point and its value ``((N, d), (N,))``. Randomness: ``generator`` (``None``: torch's
    global one)."""
    n, (c, h, w) = len(lo), layout
    signs = torch.randint(0, 2, (n, c, 1, w), dtype=lo.dtype, generator=generator) * 2 - 1
    best = torch.where(signs.expand(n, c, h, w).reshape(n, -1) > 0, hi, lo)
    with torch.no_grad():
        value = objective(best, torch.arange(n))
    active = torch.nonzero(value < 0).view(-1)
    for query in range(queries):
        if len(active) == 0:
            break
        p = window_fraction(p_init, query, queries)
        mask = _window_mask(len(active), layout, window_size(p, layout), generator)
        sign = torch.randint(0, 2, (len(active), c, 1, 1), dtype=lo.dtype,
                             generator=generator) * 2 - 1
        window = torch.where(sign.expand(-1, c, h, w).reshape(len(active), -1) > 0,
                             hi[active], lo[active])
        full = mask.expand(-1, c, h, w).reshape(len(active), -1)
        proposal = torch.where(full, window, best[active])
        with torch.no_grad():
            proposed = objective(proposal, active)
        better = proposed > value[active]
        best[active[better]] = proposal[better]
        value[active[better]] = proposed[better]
        active = active[value[active] < 0]
    return best, value


def square_attack(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                  queries: int, p_init: float, layout: tuple[int, int, int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (N, d)``, ``y (N,)`` -> ``(points (N, d), worst margins (N,))``, the points in
    ``B_eps(x) ∩ [0, 1]^d`` (:func:`square_search` on the worst margin; the vertices
    ``lo``/``hi`` of that box are the points ``x ± eps`` clipped to it)."""
    lo, hi = input_box(x, eps)
    return square_search(lambda points, rows: margins(net(points), y[rows]).amax(dim=1),
                         lo, hi, queries=queries, p_init=p_init, layout=layout)


class Square(Configurable):
    """Random-search l-inf attack on the margin loss; ``queries`` forward passes per sample
    at most (5,000, as in AutoAttack); ``restarts`` runs on the samples not yet broken."""

    name = "square"
    graphs = True          # needs only forward passes: any network
    opt_in = True

    def __init__(self, *, queries: int = 5000, p_init: float = 0.8, restarts: int = 1,
                 image_shape: str = "auto") -> None:
        check_options(queries=(queries, Integer(1)), p_init=(p_init, POSITIVE),
                      restarts=(restarts, Integer(1)))
        if p_init > 1:
            raise ValueError(f"p_init must be at most 1, got {p_init!r}")
        if not isinstance(image_shape, str):
            raise ValueError(f"image_shape must be 'auto' or 'C,H,W', got {image_shape!r}")
        self.queries = queries
        self.p_init = p_init
        self.restarts = restarts
        self.image_shape = image_shape

    def perturb(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)`` in ``[0, 1]``, ``y (N,)`` -> ``x_adv (N, d)`` float32 in the ball."""
        net = frozen_copy(net)
        x, y = x.detach().to(torch.float32), y.to(torch.int64)
        layout = image_layout(x.shape[1], self.image_shape)
        return unbroken_runs(net, x, y, self.restarts, lambda rows, run: square_attack(
            net, x[rows], y[rows], float(eps), queries=self.queries, p_init=self.p_init,
            layout=layout))
