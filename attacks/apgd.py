"""Auto-PGD (Croce & Hein, ICML 2020), l-inf: the algorithm shared by ``apgd-ce`` and
``apgd-dlr``.

Per sample, ``steps`` iterations of projected signed-gradient ascent on a loss, with
momentum 0.75 and a step size that starts at ``2 eps`` and halves at checkpoints
``w_0 = 0, w_1 = 0.22 steps, w_{j+1} = w_j + max(w_j - w_{j-1} - 0.03 steps,
0.06 steps)`` whenever, since the last checkpoint, the loss rose on at most 75% of the
steps, or neither the step size nor the best loss changed; a halving restarts from
the best point. Written here, not wrapped (see docs/attacks.md: torchattacks 3.5.1 pins
``requests~=2.25.1`` and pulls torchvision, which replaces torch with a CUDA build);
``benchmarks/test_attack_strength.py`` compares it with torchattacks' APGD.

Losses (``logits (N, K)``, label ``y``, larger is better for the attacker):

* ``ce``: cross-entropy;
* ``dlr``: ``-(z_y - max_{j != y} z_j) / (z_(1) - z_(3))``, ``z_(i)`` the sorted logits;
* targeted ``dlr`` towards ``t``: ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)``.

The points returned are, per sample, the iterate of largest margin
``max_{j != y} f_j - f_y`` (the harness's criterion), not the one of largest loss;
samples whose margin is already ``>= 0`` leave the batch. Randomness (the start in
the ball) comes from torch's global generator, which the harness seeds per batch.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from bench.contract import input_box, margins, project_box

MOMENTUM = 0.75
RHO = 0.75              # fraction of loss increases below which the step halves
FIRST_CHECKPOINT = 0.22
MIN_PERIOD = 0.06
PERIOD_DECREASE = 0.03
DLR_SHIFT = 1e-12

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def ce_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
            ) -> torch.Tensor:
    """Per-sample cross-entropy ``(N,)`` (untargeted: ``target`` is ignored)."""
    return F.cross_entropy(logits, y, reduction="none")


def dlr_scale(outputs: torch.Tensor) -> torch.Tensor:
    """The spread ``(M,)`` targeted DLR divides by, for ``outputs (M, K)``:
    ``z_(1) - (z_(3) + z_(4)) / 2`` of the sorted outputs (the last ones for ``K < 4``;
    1 for a single output), plus :data:`DLR_SHIFT`. Positive, so dividing keeps the sign
    of a margin or a property's violation."""
    if outputs.shape[1] == 1:
        return torch.ones(len(outputs), dtype=outputs.dtype, device=outputs.device)
    ranked = outputs.sort(dim=1, descending=True).values
    k = outputs.shape[1]
    third, fourth = ranked[:, min(3, k) - 1], ranked[:, min(4, k) - 1]
    return (ranked[:, 0] - (third + fourth) / 2).clamp(min=0) + DLR_SHIFT


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
             ) -> torch.Tensor:
    """DLR ``(N,)``: untargeted ``-(z_y - max_{j != y} z_j) / (z_(1) - z_(3))``, or towards
    ``target (N,)``: ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)`` (:func:`dlr_scale`)."""
    if target is not None:
        gap = (logits.gather(1, target.view(-1, 1)) - logits.gather(1, y.view(-1, 1))).view(-1)
        return gap / dlr_scale(logits)
    ranked = logits.sort(dim=1, descending=True).values
    gap = margins(logits, y).amax(dim=1)
    return gap / (ranked[:, 0] - ranked[:, min(3, logits.shape[1]) - 1] + DLR_SHIFT)


def checkpoints(steps: int) -> list[int]:
    """The iterations (1-based counts) at which the step size may halve."""
    points, previous, current = [], 0.0, FIRST_CHECKPOINT
    while math.ceil(round(current * steps, 9)) <= steps:
        points.append(math.ceil(round(current * steps, 9)))
        previous, current = current, current + max(current - previous - PERIOD_DECREASE,
                                                   MIN_PERIOD)
    return sorted(set(points))


Objective = Callable[[torch.Tensor, torch.Tensor],
                     tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _value_and_grad(net: torch.nn.Module, loss: Loss, point: torch.Tensor, y: torch.Tensor,
                    target: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss (N,), margin (N,), grad (N, d))`` at ``point``."""
    point = point.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = net(point)
        value = loss(logits, y, target)
        grad, = torch.autograd.grad(value.sum(), point)
    with torch.no_grad():
        margin = margins(logits.detach(), y).amax(dim=1)
    return value.detach(), margin, grad.detach()


def apgd(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, loss: Loss, *,
         steps: int, target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run: ``x (N, d)``, ``y (N,)`` -> ``(points (N, d), margins (N,))``.

    ``points`` lie in ``B_eps(x) ∩ [0, 1]^d``; ``margins`` are their worst margins
    ``max_{j != y} f_j - f_y`` under ``net`` (float32; the harness re-evaluates).
    ``loss(logits, y, target) -> (N,)`` is maximised; it must act row by row;
    ``target (N,)`` (or None) is passed through.
    """
    lo, hi = input_box(x, eps)
    direction = 2 * torch.rand_like(x) - 1
    start = x + eps * direction / direction.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)

    def objective(point: torch.Tensor, active: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _value_and_grad(net, loss, point, y[active],
                               None if target is None else target[active])

    return apgd_in_box(objective, start, lo, hi, torch.full((len(x), 1), 2.0 * eps,
                                                            dtype=x.dtype), steps=steps)


def apgd_in_box(objective: Objective, start: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                step: torch.Tensor, *, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The APGD iteration (module doc) in boxes ``[lo, hi] (N, d)`` from ``start (N, d)``
    with first step sizes ``step (N, 1)``: ``objective(points (M, d), active (M,))``
    returns ``(loss (M,), criterion (M,), grad of the loss (M, d))`` for the rows
    ``active`` of the batch. Returns per row the point of largest criterion and that
    criterion ``(N,)``; a row whose criterion reaches 0 (a counterexample) leaves the
    batch."""
    active = torch.arange(len(start))
    point = project_box(start, lo, hi)
    value, margin, grad = objective(point, active)
    best_point, best_margin = point.clone(), margin.clone()        # the harness's criterion
    top_point, top_value, top_grad = point.clone(), value.clone(), grad.clone()  # APGD's x_max
    step = step.clone()
    previous = point.clone()
    increases = torch.zeros(len(start), dtype=torch.int64)
    top_at_check = top_value.clone()
    halved_at_check = torch.zeros(len(start), dtype=torch.bool)
    marks = checkpoints(steps)
    last_mark = 0
    for iteration in range(1, steps + 1):
        a = 1.0 if iteration == 1 else MOMENTUM
        with torch.no_grad():
            z = project_box(point + step * grad.sign(), lo, hi)
            moved = project_box(point + a * (z - point) + (1 - a) * (point - previous), lo, hi)
        previous = point
        point = moved
        new_value, margin, grad = objective(point, active)
        with torch.no_grad():
            increases += (new_value > value).long()
            value = new_value
            better = margin > best_margin[active]
            best_point[active[better]] = point[better]
            best_margin[active[better]] = margin[better]
            rose = value > top_value
            top_point[rose], top_value[rose], top_grad[rose] = point[rose], value[rose], grad[rose]
            if iteration in marks:
                period = iteration - last_mark
                stalled = ~halved_at_check & (top_value <= top_at_check)
                halve = (increases <= RHO * period) | stalled
                step[halve] /= 2
                point[halve], grad[halve] = top_point[halve], top_grad[halve]
                halved_at_check, top_at_check = halve, top_value.clone()
                increases.zero_()
                last_mark = iteration
            keep = best_margin[active] < 0
            if not keep.all():
                active = active[keep]
                if len(active) == 0:
                    break
                (point, previous, grad, value, step, increases, top_point, top_value, top_grad,
                 top_at_check, halved_at_check, lo, hi) = (
                    t[keep] for t in (point, previous, grad, value, step, increases, top_point,
                                      top_value, top_grad, top_at_check, halved_at_check, lo, hi))
    return best_point, best_margin
