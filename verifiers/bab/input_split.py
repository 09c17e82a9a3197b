"""Input-split branch and bound: the box is split, not the ReLUs.

Where inputs are few and the box is large (collision avoidance: 5 inputs, a property
over a whole region), ReLU splitting stalls, because nearly every unit is unstable and
stays so until the box is small. Splitting the box instead (as nnenum, VeriNet and
alpha-beta-CROWN's input-split mode do) shrinks every pre-activation interval at once,
and CROWN's bound over a box converges to the true maximum as the box shrinks.

Per unsafe group ``C_g f(x) >= d_g`` (rows ``c_i``, offsets ``d_i``) a pool of boxes,
each bounded by CROWN, its intermediate bounds intersected with intervals
(:func:`bound_boxes`): ``U_b[i] >= max_{x in box b} c_i . f(x) - d_i``, float64. A box
with some row ``U_b[i] < 0`` is closed (that row, hence the conjunction, is unreachable
there). The ``batch`` open boxes of largest ``min_i U_b[i]`` are split at the middle of
one dimension each, chosen by the score ``|a_j| (hi_j - lo_j)``, with ``a`` the input
coefficients of the linear bound of the box's smallest row: the dimension along which
that bound varies most (:func:`split_dimension`). Every child's centre and the
maximiser of its smallest row's linear bound are checked as counterexamples by a
float64 forward pass, and after batches 1, 2, 4, 8, ... APGD runs inside the open
children of largest bound (:mod:`verifiers.bab.search_attacks`). The group holds when
no box is open; the answer is ``unknown`` at the deadline or when the open boxes
outgrow the memory allowance. Sound for the same reason as the ReLU search: the boxes
cover the input box at every step, and each closed box's bound is an upper bound over
it.

Shapes: ``B`` boxes, ``d`` inputs, ``S`` rows of the group.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from models import MLP
from verifiers.bab.bounding import forward_worst
from verifiers.bab.search_attacks import attack_candidates, attack_due
from verifiers.linear.propagation import (
    backward_upper,
    crown_slope,
    interval_bounds,
    linear_layer_bounds,
)

# Networks with at most this many inputs are searched by splitting the input box when
# ``branching = "auto"`` (collision avoidance has 5; image classifiers have hundreds).
INPUT_SPLIT_MAX_INPUTS = 12


@dataclass
class GroupOutcome:
    """One group's result: ``verdict`` ``holds``/``violated``/``unknown``; ``upper (S,)``
    float64 row bounds over the whole box (the largest over the leaves); the
    counterexample ``point (d,)`` for ``violated``; boxes bounded; open boxes left."""

    verdict: str
    upper: torch.Tensor
    point: torch.Tensor | None
    boxes: int
    open_boxes: int = 0


def bound_boxes(params, lo: torch.Tensor, hi: torch.Tensor, rows: torch.Tensor,
                offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN bounds of ``rows (S, K)`` over every box ``[lo, hi] (B, d)``, minus
    ``offsets (S,)``: ``(U (B, S), a (B, S, d))`` with ``a`` the input coefficients of each
    row's linear bound (its maximiser over box ``b`` is ``where(a > 0, hi, lo)``)."""
    with torch.no_grad():
        intervals = interval_bounds(params[:-1], lo, hi) if len(params) > 1 else []
        bounds = linear_layer_bounds(params, lo, hi, crown_slope, tighten_with=intervals)
        record: list[torch.Tensor] = []
        upper = backward_upper(params, bounds, rows[None].expand(len(lo), -1, -1), lo, hi,
                               crown_slope, record=record)
    return upper - offsets, record[-1]


def smallest_row_coef(upper: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """Per box the input coefficients ``(B, d)`` of its smallest row's linear bound (the
    row closest to closing the box): ``upper (B, S)``, ``coef (B, S, d)``."""
    return coef[torch.arange(len(upper)), upper.argmin(dim=1)]


def split_dimension(coef: torch.Tensor, upper: torch.Tensor, lo: torch.Tensor,
                    hi: torch.Tensor) -> torch.Tensor:
    """Per box the dimension to split ``(B,)``: the largest ``|a_j| (hi_j - lo_j)`` of its
    smallest row's input coefficients (ties, e.g. all zero: the widest dimension)."""
    a = smallest_row_coef(upper, coef)
    width = hi - lo
    score = a.abs() * width + 1e-12 * width / width.amax(dim=1, keepdim=True).clamp(min=1e-300)
    return score.argmax(dim=1)


def split_boxes(lo: torch.Tensor, hi: torch.Tensor, dims: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both halves of every box ``(B, d)`` along ``dims (B,)``: ``(2B, d)`` each, lower
    halves first; the halves share the midpoint, so together they cover the box."""
    index = torch.arange(len(lo))
    middle = (lo[index, dims] + hi[index, dims]) / 2
    low_hi, high_lo = hi.clone(), lo.clone()
    low_hi[index, dims] = middle
    high_lo[index, dims] = middle
    return torch.cat([lo, high_lo]), torch.cat([low_hi, hi])


def search_group(net64: MLP, params, lo: torch.Tensor, hi: torch.Tensor, rows: torch.Tensor,
                 offsets: torch.Tensor, *, deadline: float, batch: int,
                 memory_gb: float) -> GroupOutcome:
    """Settle one group ``rows (S, K) . f(x) >= offsets (S,)`` over ``[lo, hi] (d,)`` by
    input splitting (see the module doc) before ``deadline`` (``time.perf_counter()``)."""
    box_lo, box_hi = lo[None].clone(), hi[None].clone()
    upper, coef = bound_boxes(params, box_lo, box_hi, rows, offsets)
    closed_max = torch.full((len(offsets),), -torch.inf, dtype=torch.float64,
                            device=lo.device)
    boxes = 1
    bytes_per_box = (2 + len(offsets)) * lo.numel() * 8 + len(offsets) * 8
    max_boxes = max(int(memory_gb * 2 ** 30) // bytes_per_box, 2 * batch)
    fresh = slice(0, 1)                          # the boxes bounded last: checked once
    batches = 0
    while True:
        point = counterexample(net64, box_lo[fresh], box_hi[fresh], upper[fresh],
                               coef[fresh], rows, offsets)
        if point is not None:
            return GroupOutcome("violated", torch.full_like(closed_max, torch.inf), point,
                                boxes)
        value = upper.amin(dim=1)
        shut = value < 0
        if bool(shut.any()):
            closed_max = torch.maximum(closed_max, upper[shut].amax(dim=0))
        box_lo, box_hi, upper, coef = box_lo[~shut], box_hi[~shut], upper[~shut], coef[~shut]
        if len(box_lo) == 0:
            return GroupOutcome("holds", closed_max, None, boxes)
        if time.perf_counter() > deadline or len(box_lo) > max_boxes:
            return GroupOutcome("unknown", torch.maximum(closed_max, upper.amax(dim=0)), None,
                                boxes, len(box_lo))
        order = value[~shut].argsort(descending=True)
        take, keep = order[:batch], order[batch:]
        dims = split_dimension(coef[take], upper[take], box_lo[take], box_hi[take])
        child_lo, child_hi = split_boxes(box_lo[take], box_hi[take], dims)
        child_upper, child_coef = bound_boxes(params, child_lo, child_hi, rows, offsets)
        boxes += len(child_lo)
        batches += 1
        if attack_due(batches):        # APGD inside the sub-boxes of largest bounds
            point = attack_candidates(net64, rows, offsets, (child_lo + child_hi) / 2,
                                      child_upper.amin(dim=1), child_lo, child_hi)
            if point is not None:
                return GroupOutcome("violated", torch.full_like(closed_max, torch.inf),
                                    point, boxes)
        box_lo = torch.cat([box_lo[keep], child_lo])
        box_hi = torch.cat([box_hi[keep], child_hi])
        upper = torch.cat([upper[keep], child_upper])
        coef = torch.cat([coef[keep], child_coef])
        fresh = slice(len(keep), len(box_lo))


def counterexample(net64: MLP, lo: torch.Tensor, hi: torch.Tensor, upper: torch.Tensor,
                   coef: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor
                   ) -> torch.Tensor | None:
    """The most violating of the boxes' centres and their smallest rows' maximisers
    ``(d,)``, if it violates by a float64 forward pass (:func:`forward_worst` ``>= 0``)."""
    a = smallest_row_coef(upper, coef)
    candidates = torch.cat([(lo + hi) / 2, torch.where(a > 0, hi, lo)])
    values = forward_worst(net64, candidates, rows, offsets)
    best = int(values.argmax())
    return candidates[best] if float(values[best]) >= 0 else None


def branching_for(choice: str, inputs: int) -> str:
    """``relu`` or ``input``: ``choice`` itself, or for ``auto`` input splitting where the
    network has at most :data:`INPUT_SPLIT_MAX_INPUTS` inputs."""
    if choice != "auto":
        return choice
    return "input" if inputs <= INPUT_SPLIT_MAX_INPUTS else "relu"
