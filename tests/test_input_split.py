"""Input-split branch and bound (``verifiers/bab/input_split.py``): its verdicts against
exact MILP maxima on threshold properties over whole boxes, its bounds against dense
sampling, the covering of its splits, and the choice between input and ReLU splitting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.contract import Property
from tests.conftest import random_mlp
from verifiers.bab.input_split import (
    INPUT_SPLIT_MAX_INPUTS,
    branching_for,
    search_group,
    split_boxes,
)
from verifiers.bab.options import SearchOptions
from verifiers.bab.search import decide
from verifiers.linear.propagation import layer_params
from verifiers.mip.relu_program import box_batch, solve_mip


def exact_max(net, lo: torch.Tensor, hi: torch.Tensor, row: np.ndarray
              ) -> tuple[float, float]:
    """``max_{x in [lo, hi]} row . f(x)`` by MILP (HiGHS, to optimality): the value its
    point reaches and its proved upper bound, within 1e-4 of each other."""
    batch = box_batch(net, lo[None], hi[None])
    program = batch.program(0, binaries=True)
    objective, constant = program.output_objective(row)
    outcome = solve_mip(program, objective, time_limit=60)
    assert outcome.upper - outcome.lower <= 1e-4 * (1 + abs(outcome.lower))
    return outcome.lower + constant, outcome.upper + constant


def threshold_property(lo, hi, row: np.ndarray, threshold: float) -> Property:
    """The unsafe set ``row . f(x) >= threshold`` over the box ``[lo, hi]``."""
    return Property(lo, hi, ((torch.from_numpy(row)[None], torch.tensor([threshold],
                                                                        dtype=torch.float64)),))


def instances():
    """Deep little networks with 2 to 4 inputs, the whole box, one output difference."""
    for trial in range(6):
        inputs = 2 + trial % 3
        net = random_mlp([inputs, 16, 16, 3], seed=500 + trial, scale=1.5).double()
        lo = -torch.ones(inputs, dtype=torch.float64)
        hi = torch.ones(inputs, dtype=torch.float64)
        row = np.zeros(3)
        row[trial % 3], row[(trial + 1) % 3] = 1.0, -1.0
        yield trial, net, lo, hi, row


@pytest.mark.parametrize("side", ["holds", "violated"])
def test_input_splitting_agrees_with_milp_and_has_to_branch(side):
    """Thresholds just above the exact maximum (the property holds) or just below it
    (a counterexample exists, and no attack runs first): every verdict is right, and the
    search has to split (CROWN's root bound decides none of them)."""
    branched = 0
    for trial, net, lo, hi, row in instances():
        reached, proved = exact_max(net, lo, hi, row)
        gap = 0.02 * (1 + abs(proved))
        threshold = proved + gap if side == "holds" else reached - gap
        prop = threshold_property(lo, hi, row, threshold)
        outcome = decide(net, prop, SearchOptions(time_limit=60, branching="input"),
                         restarts=0)
        assert outcome.verdict == side, (trial, outcome.verdict, proved, threshold)
        assert outcome.stats["branching"] == "input"
        # a violated one may fall to the search's first attack, after one split
        branched += outcome.nodes > (3 if side == "holds" else 1)
        if side == "violated":
            point = outcome.counterexample
            assert bool(((point >= lo) & (point <= hi)).all())
            with torch.no_grad():
                assert float(net(point[None]) @ torch.from_numpy(row)) >= threshold
        else:
            assert float(outcome.uppers[0][0]) < 0
    assert branched >= (4 if side == "holds" else 2)   # most need splits to be decided


def test_the_bound_of_an_open_search_is_above_every_sampled_value():
    """Stopped early (a deadline in the past after the root), the reported row bound is
    still an upper bound: above the largest value of dense samples of the box."""
    trial, net, lo, hi, row = next(iter(instances()))
    params = layer_params(net, torch.float64)
    rows = torch.from_numpy(row)[None]
    threshold = exact_max(net, lo, hi, row)[1] + 0.5
    for deadline in (0.0, float("inf")):
        outcome = search_group(net, params, lo, hi, rows, torch.tensor([threshold],
                               dtype=torch.float64), deadline=deadline, batch=64,
                               memory_gb=0.01)
        points = lo + (hi - lo) * torch.rand(200_000, len(lo), dtype=torch.float64,
                                             generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            sampled = float((net(points) @ rows.T).max()) - threshold
        assert float(outcome.upper[0]) >= sampled
        assert outcome.verdict == ("unknown" if deadline == 0.0 else "holds")


def test_the_two_halves_cover_the_box():
    generator = torch.Generator().manual_seed(1)
    lo = torch.rand(7, 4, dtype=torch.float64, generator=generator)
    hi = lo + torch.rand(7, 4, dtype=torch.float64, generator=generator)
    dims = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    child_lo, child_hi = split_boxes(lo, hi, dims)
    for b, d in enumerate(dims.tolist()):
        low, high = (child_lo[b], child_hi[b]), (child_lo[b + 7], child_hi[b + 7])
        assert torch.equal(low[0], lo[b]) and torch.equal(high[1], hi[b])
        assert float(low[1][d]) == float(high[0][d]) == float((lo[b, d] + hi[b, d]) / 2)
        others = [j for j in range(4) if j != d]
        assert torch.equal(low[1][others], hi[b][others])
        assert torch.equal(high[0][others], lo[b][others])


def test_auto_splits_the_input_of_small_networks_only():
    assert branching_for("auto", 5) == "input"
    assert branching_for("auto", INPUT_SPLIT_MAX_INPUTS + 1) == "relu"
    assert branching_for("auto", 784) == "relu"
    assert branching_for("relu", 2) == "relu" and branching_for("input", 784) == "input"
    with pytest.raises(ValueError, match="branching must be one of auto, relu, input"):
        SearchOptions(branching="both")


# --- a union of input boxes (ACAS Xu's property 6) --------------------------------------

UNION = """(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (or (and (>= X_0 -1) (<= X_0 -0.2) (>= X_1 -1) (<= X_1 1))
            (and (>= X_0 0.2) (<= X_0 1) (>= X_1 -1) (<= X_1 1))))
(assert (>= Y_0 {threshold}))
"""


def test_a_union_of_input_boxes_reads_as_one_property_per_box():
    from bench.properties import VnnlibError, read_vnnlib, read_vnnlib_cases

    cases = read_vnnlib_cases("p6.vnnlib", text=UNION.format(threshold=1.5))
    assert [case.lo.tolist() for case in cases] == [[-1.0, -1.0], [0.2, -1.0]]
    assert [case.hi.tolist() for case in cases] == [[-0.2, 1.0], [1.0, 1.0]]
    for case in cases:
        (rows, offsets), = case.groups
        assert rows.tolist() == [[1.0, 0.0, 0.0]] and offsets.tolist() == [1.5]
    with pytest.raises(VnnlibError, match="union of 2 boxes"):
        read_vnnlib("p6.vnnlib", text=UNION.format(threshold=1.5))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_portfolio_decides_a_union_of_boxes_as_milp_does(seed):
    """The threshold between the two boxes' exact maxima: violated (a point in the box of
    the larger maximum) or, above both, holds; every answer agrees with MILP."""
    from bench.properties import read_vnnlib_cases
    from bench.vnncomp.portfolio import solve_cases

    net = random_mlp([2, 16, 16, 3], seed=700 + seed, scale=1.5).double()
    template = read_vnnlib_cases("p6.vnnlib", text=UNION.format(threshold=0))
    row = np.array([1.0, 0.0, 0.0])
    maxima = [exact_max(net, case.lo, case.hi, row) for case in template]
    low, high = sorted(maxima, key=lambda pair: pair[1])
    for threshold, truth in (((low[1] + high[0]) / 2, "sat"),
                             (high[1] + 0.05 * (1 + abs(high[1])), "unsat")):
        if low[1] >= high[0]:          # the two maxima too close to part: only above both
            if truth == "sat":
                continue
        cases = read_vnnlib_cases("p6.vnnlib", text=UNION.format(threshold=repr(threshold)))
        answer = solve_cases(net, cases, 30.0, None, verifiers=[])
        assert answer.result == truth, (seed, answer.result, maxima, threshold)
        if truth == "sat":
            x, y = answer.counterexample
            assert any(bool(((torch.from_numpy(x) >= c.lo) & (torch.from_numpy(x) <= c.hi))
                            .all()) for c in cases)
            assert y[0] >= threshold


def test_bench_vnncomp_answers_a_union_of_boxes_through_onnx(tmp_path):
    """End to end: an ONNX network, a property-6-style VNN-LIB file (two input boxes),
    ``bench vnncomp``: the answer agrees with MILP, a ``sat`` comes with a counterexample
    file that lies in one of the boxes, and the rerun keeps it (re-checked)."""
    from bench.vnncomp.competition import run
    from bench.vnncomp.files import counterexample_name, read_counterexample
    from models.onnx_import import export_onnx

    pytest.importorskip("onnxruntime")
    net = random_mlp([2, 16, 16, 3], seed=701, scale=1.5)
    export_onnx(net, tmp_path / "net.onnx")
    template = read_vnnlib_cases_of(threshold=0)
    maxima = [exact_max(net.double(), case.lo, case.hi, np.array([1.0, 0.0, 0.0]))
              for case in template]
    top = max(reached for reached, _ in maxima)
    proved = max(bound for _, bound in maxima)
    rows = []
    for name, threshold, truth in (("below", top - 0.05 * (1 + abs(top)), "sat"),
                                   ("above", proved + 0.05 * (1 + abs(proved)), "unsat")):
        (tmp_path / f"{name}.vnnlib").write_text(UNION.format(threshold=repr(threshold)))
        rows.append((f"net.onnx,{name}.vnnlib,30", truth))
    (tmp_path / "instances.csv").write_text("\n".join(row for row, _ in rows) + "\n")
    lines: list[str] = []
    answers = run(tmp_path / "instances.csv", tmp_path / "out", echo=lines.append)
    assert [answer["result"] for answer in answers] == [truth for _, truth in rows]
    sat = answers[0]
    name = counterexample_name(sat["onnx_sha256"], sat["vnnlib_sha256"], sat["vnnlib"])
    point = torch.from_numpy(read_counterexample(tmp_path / "out" / "counterexamples" / name,
                                                 2))
    assert any(bool(((point >= case.lo) & (point <= case.hi)).all()) for case in template)
    again: list[str] = []
    run(tmp_path / "instances.csv", tmp_path / "out", echo=again.append)
    assert again == []                                     # both kept, the sat re-checked


def read_vnnlib_cases_of(threshold: float) -> list[Property]:
    from bench.properties import read_vnnlib_cases

    return read_vnnlib_cases("p6.vnnlib", text=UNION.format(threshold=repr(threshold)))
