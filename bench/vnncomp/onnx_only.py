"""Instances whose network certbench cannot import (an operator without a bound rule):
attacked through onnxruntime alone, so such an instance is answered ``sat`` or
``unknown``, never ``error``.

Without an imported network there are no bounds, hence never ``unsat``; the search reads
only the ONNX file's outputs: the box's centre and uniform random points, then Square's
random search over the box's vertices (:func:`attacks.square.square_search`) in rounds
until half the timeout. Every point is a float32 value inside the box (what onnxruntime
evaluates is what is written), and a ``sat`` is the property violated by onnxruntime's
float32 outputs, read in float64 (the competition's own check).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from attacks.square import image_layout, square_search
from bench.contract import Property
from bench.vnncomp.portfolio import Answer, onnx_forward, ort_session

RANDOM_POINTS = 256           # per case, with the centre
SQUARE_QUERIES = 100          # per round of Square
SQUARE_STARTS = 8
SEARCH_SHARE = 0.5            # of the timeout


def onnx_sizes(onnx_path: Path) -> tuple[int, int]:
    """The number of elements of the ONNX graph's first input and first output (symbolic
    dimensions read as 1)."""
    session = ort_session(str(onnx_path))

    def size(shape: list) -> int:
        return math.prod(d if isinstance(d, int) and d > 0 else 1 for d in shape)

    return size(session.get_inputs()[0].shape), size(session.get_outputs()[0].shape)


def float32_inside(points: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                   ) -> torch.Tensor:
    """``points (M, d)`` rounded to float32 values inside ``[lo, hi]`` (a value that rounds
    outside moves one float32 step back in), as float64."""
    single = points.to(torch.float32)
    up = torch.full_like(single, math.inf)
    down = torch.full_like(single, -math.inf)
    single = torch.where(single.double() > hi, torch.nextafter(single, down), single)
    single = torch.where(single.double() < lo, torch.nextafter(single, up), single)
    return single.double()


def violation(prop: Property, outputs: torch.Tensor) -> torch.Tensor:
    """``max_g min_i (c_i . y - d_i)`` per row of ``outputs (M, K)``: ``>= 0`` violates."""
    return torch.stack([(outputs @ rows.T - offsets).amin(dim=1)
                        for rows, offsets in prop.groups]).amax(dim=0)


def attack_only(onnx_path: Path, cases: list[Property], timeout: float, reason: str,
                seed: int = 0) -> Answer:
    """``sat`` with a point and onnxruntime's outputs, or ``unknown`` saying why (the
    network was not imported: ``reason``), within ``SEARCH_SHARE`` of ``timeout``."""
    began = time.perf_counter()
    deadline = began + SEARCH_SHARE * timeout
    forward = onnx_forward(onnx_path)
    generator = torch.Generator().manual_seed(seed)
    note = f"network not imported ({reason}); onnxruntime-only search"

    def found(prop: Property, points: torch.Tensor) -> Answer | None:
        points = float32_inside(points, prop.lo, prop.hi)
        inside = ((points >= prop.lo) & (points <= prop.hi)).all(dim=1)
        if not bool(inside.any()):
            return None
        points = points[inside]
        outputs = forward(points)
        values = violation(prop, outputs)
        best = int(values.argmax())
        if float(values[best]) < 0:
            return None
        return Answer("sat", 0.0, time.perf_counter() - began,
                      (points[best].numpy(), outputs[best].numpy()), message=note)

    for prop in cases:                                  # centres and random points
        lo, hi = prop.lo.double(), prop.hi.double()
        points = torch.cat([((lo + hi) / 2)[None], lo + (hi - lo) * torch.rand(
            RANDOM_POINTS, len(lo), generator=generator, dtype=torch.float64)])
        answer = found(prop, points)
        if answer is not None:
            return answer
    rounds = 0
    while time.perf_counter() < deadline:               # Square, round after round
        prop = cases[rounds % len(cases)]
        lo, hi = prop.lo.double(), prop.hi.double()
        box_lo, box_hi = (float32_inside(t.expand(SQUARE_STARTS, -1), lo, hi)
                          for t in (lo, hi))
        best, _ = square_search(
            lambda points, rows, p=prop: violation(p, forward(points)), box_lo, box_hi,
            queries=SQUARE_QUERIES, p_init=0.3, layout=image_layout(len(lo), "auto"),
            generator=generator)
        answer = found(prop, best)
        if answer is not None:
            return answer
        rounds += 1
    return Answer("unknown", 0.0, time.perf_counter() - began, message=note)
