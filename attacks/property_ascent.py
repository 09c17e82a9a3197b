"""Attacks on a property's unsafe groups inside its input box: signed-gradient ascent
(the complete search's first step) and APGD (the VNN-COMP portfolio's second attack).

Both maximise, per start, its group's violation ``min_i (c_i . f(x) - d_i)`` (``>= 0``:
the point satisfies every row of the group, a counterexample), each group from the
box's centre and random starts, all groups in one batch."""

from __future__ import annotations

import torch

from attacks.apgd import apgd_in_box
from bench.contract import Property, signed_ascent, split_rows
from models import MLP


def _starts(net64: MLP, prop: Property, restarts: int, seed: int):
    """Per group the box's centre and ``restarts - 1`` uniform random points: ``(starts
    (P, d), lo (d,), hi (d,), violation)`` on the network's device, with
    ``violation(points (M, d), which (M,)) -> (M,)`` the violation of start ``which``'s
    group at each point."""
    device = next(net64.parameters()).device
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

    def violation(points: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        values = net64(points) @ rows.T - offsets
        return values.masked_fill(foreign[which], torch.inf).amin(dim=1)

    return starts, lo, hi, violation


def attack_property(net64: MLP, prop: Property, *, restarts: int, steps: int,
                    seed: int = 0) -> tuple[torch.Tensor, float]:
    """The most violating point found in the box, ``(d,)`` float64, and its violation
    ``max_g min_i (c_i . f - d_i)`` (``>= 0``: a counterexample by a float64 forward pass).

    Signed-gradient ascent (:func:`bench.contract.signed_ascent`) on each group's smallest
    row, from the box's centre and ``restarts - 1`` uniform random starts per group, all
    groups in one batch; step ``max(hi - lo) / 8``.
    """
    starts, lo, hi, violation = _starts(net64, prop, restarts, seed)
    everyone = torch.arange(len(starts), device=starts.device)
    step = float((hi - lo).max()) / 8 or 1e-3
    found = signed_ascent(lambda points: violation(points, everyone), starts,
                          lo.expand_as(starts), hi.expand_as(starts), step=step, steps=steps,
                          keep_best=True)
    with torch.no_grad():
        values = violation(found, everyone)
    best = int(values.argmax())
    return found[best], float(values[best])


def apgd_property(net64: MLP, prop: Property, *, restarts: int, steps: int,
                  seed: int = 0) -> tuple[torch.Tensor, float]:
    """As :func:`attack_property`, by APGD (:func:`attacks.apgd.apgd_in_box`: momentum,
    step halved at checkpoints when the violation stalls, restarting from the best point)
    on each group's violation, first step ``max(hi - lo)``; a start stops once it finds
    a counterexample."""
    starts, lo, hi, violation = _starts(net64, prop, restarts, seed)

    def objective(points: torch.Tensor, active: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        points = points.detach().requires_grad_(True)
        with torch.enable_grad():
            value = violation(points, active)
            grad, = torch.autograd.grad(value.sum(), points)
        return value.detach(), value.detach(), grad.detach()

    first = torch.full((len(starts), 1), float((hi - lo).max()) or 1e-3, dtype=starts.dtype,
                       device=starts.device)
    found, values = apgd_in_box(objective, starts, lo.expand_as(starts).clone(),
                                hi.expand_as(starts).clone(), first, steps=steps)
    with torch.no_grad():
        values = violation(found, torch.arange(len(found), device=found.device))
    best = int(values.argmax())
    return found[best], float(values[best])
