"""Signed-gradient ascent on a property's unsafe groups inside its input box: the attack
of the complete search and of the VNN-COMP portfolio."""

from __future__ import annotations

import torch

from bench.contract import Property, signed_ascent, split_rows
from models import MLP


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


