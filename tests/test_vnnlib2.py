"""VNN-LIB 2.0 through the standard's parser: what is read equals what was meant (against
the older dialect's reader and by hand), what certbench cannot verify is refused by name,
and the solver interface's assignment format reads back exactly and refuses garbage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.contract import Property
from bench.properties import read_vnnlib_cases, vnnlib_text
from bench.properties.assignment import AssignmentError, assignment_text, parse_assignment
from bench.properties.cases import VnnlibError
from bench.properties.standard import is_standard, query_text, read_query

HEAD = "(vnnlib-version <2.0>)\n"


def _same(a: Property, b: Property) -> None:
    assert torch.equal(a.lo, b.lo) and torch.equal(a.hi, b.hi)
    assert len(a.groups) == len(b.groups)
    for (m1, d1), (m2, d2) in zip(a.groups, b.groups):
        assert torch.equal(m1, m2) and torch.equal(d1, d2)


def _robustness(seed: int = 0) -> Property:
    x = torch.from_numpy(np.random.default_rng(seed).uniform(size=6))
    return Property.robustness(x, 2, 0.1, 4)


def test_written_query_reads_back_exactly_and_equals_the_older_dialect():
    prop = _robustness()
    text = query_text([prop], (1, 2, 3), (1, 4))
    assert is_standard(text) and not is_standard(vnnlib_text(prop))
    query = read_query(text, "q", num_inputs=6, num_outputs=4)
    assert query.input.shape == (1, 2, 3) and query.output.shape == (1, 4)
    assert query.input.element_type == "real"
    (ours,) = query.cases
    _same(ours, prop)
    (legacy,) = read_vnnlib_cases("old", text=vnnlib_text(prop))
    _same(ours, legacy)


def test_a_union_of_boxes_reads_back_as_its_cases():
    first, second = _robustness(0), _robustness(1)
    second = Property(second.lo, second.hi, first.groups)
    cases = read_vnnlib_cases("q", text=query_text([first, second], (6,), (4,)))
    assert len(cases) == 2
    _same(cases[0], first)
    _same(cases[1], second)


def test_separate_asserts_are_conjoined_and_indices_are_row_major():
    text = HEAD + """(declare-network f
    (declare-input X real [2,2])
    (declare-output Y real [3])
)
(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0) (>= X[0,1] 0.5) (<= X[0,1] 0.75)))
(assert (and (>= X[1,0] -1.0) (< X[1,0] 1.0) (>= X[1,1] 2.0) (<= X[1,1] 2.0)))
(assert (or (> Y[2] Y[0]) (and (== Y[1] 0.5) (<= (+ (* 2.0 Y[0]) (- Y[1] 1.0)) 3.0))))
"""
    (case,) = read_vnnlib_cases("q", text=text)
    assert case.lo.tolist() == [0.0, 0.5, -1.0, 2.0]
    assert case.hi.tolist() == [1.0, 0.75, 1.0, 2.0]
    (m1, d1), (m2, d2) = case.groups
    assert m1.tolist() == [[-1.0, 0.0, 1.0]] and d1.tolist() == [0.0]
    # Y1 >= 0.5, -Y1 >= -0.5, -(2 Y0 + Y1 - 1) >= -3
    assert m2.tolist() == [[0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [-2.0, -1.0, 0.0]]
    assert d2.tolist() == [0.5, -0.5, -4.0]


NETWORK = "(declare-network f\n (declare-input X real [2])\n (declare-output Y real [2]))\n"
BOX = "(assert (and (>= X[0] 0.0) (<= X[0] 1.0) (>= X[1] 0.0) (<= X[1] 1.0)))\n"


@pytest.mark.parametrize("text, reason", [
    (NETWORK + NETWORK.replace(" f", " g").replace("X ", "U ").replace("Y ", "W ") + BOX
     + "(assert (>= Y[0] W[0]))", "verifies queries over one network"),
    ("(declare-network f\n (declare-input X real [2])\n (declare-hidden H real [2] \"h\")\n"
     " (declare-output Y real [2]))\n" + BOX + "(assert (>= Y[0] 0.0))", "hidden node 'H'"),
    ("(declare-network f\n (declare-input X real [2])\n (declare-input Z real [1])\n"
     " (declare-output Y real [2]))\n" + BOX + "(assert (>= Y[0] 0.0))", "theory SIO"),
    (NETWORK + BOX + "(assert (!= Y[0] 0.0))", "'!=' is not supported"),
    (NETWORK + BOX + "(assert (>= (* Y[0] Y[1]) 0.0))", "theory POLY"),
    (NETWORK + BOX + "(assert (>= (+ X[0] X[1]) 0.5))\n(assert (>= Y[0] 0.0))",
     "one input variable by a number"),
    (NETWORK + BOX + "(assert (>= Y[0] X[1]))", "mixes input and output"),
    (NETWORK.replace("real", "Real") + BOX + "(assert (>= Y[0] 0.0))",
     "element type the standard does not define"),
    (NETWORK + "(assert (>= Y[0] 0.0))", "input X[0] has no lower or no upper bound"),
    (NETWORK + BOX + "(assert (>= Y[0] 0.0)", "not a valid VNN-LIB 2.0 query"),
])
def test_what_certbench_cannot_verify_is_refused_by_name(text, reason):
    with pytest.raises(VnnlibError, match=reason.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
        read_vnnlib_cases("q.vnnlib", text=HEAD + text)


def test_sizes_are_checked_against_the_network():
    with pytest.raises(VnnlibError, match="input X has 2 elements but the network has 3"):
        read_vnnlib_cases("q", text=HEAD + NETWORK + BOX + "(assert (>= Y[0] 0.0))",
                          num_inputs=3)


def test_the_assignment_block_reads_back_exactly():
    query = read_query(query_text([_robustness()], (1, 6), (1, 4)), "q")
    x, y = np.random.default_rng(3).normal(size=6), np.array([0.1, -2.5e-300, 3.0, 1e300])
    text = assignment_text(query.declarations, {"X": x, "Y": y})
    assert text.splitlines()[0] == "X real [1,6]" and text.splitlines()[7] == "Y real [1,4]"
    values = parse_assignment(text.splitlines(), query.declarations)
    assert np.array_equal(values["X"], x) and np.array_equal(values["Y"], y)


@pytest.mark.parametrize("edit, reason", [
    (lambda lines: lines[:3], "no values for Y|values, expected"),
    (lambda lines: [lines[0].replace("X", "Z")] + lines[1:], "expected variable X"),
    (lambda lines: [lines[0].replace("[1,6]", "[6]")] + lines[1:], "has shape"),
    (lambda lines: lines[:2] + ["nan"] + lines[3:], "not finite"),
    (lambda lines: lines[:2] + ["0.5x"] + lines[3:], "not a number"),
    (lambda lines: lines + ["1.0"], "text after the last variable"),
    (lambda lines: ["garbage"], "expected the header"),
])
def test_a_malformed_assignment_is_refused_with_the_reason(edit, reason):
    query = read_query(query_text([_robustness()], (1, 6), (1, 4)), "q")
    lines = assignment_text(query.declarations, {"X": np.zeros(6), "Y": np.ones(4)}
                            ).splitlines()
    with pytest.raises(AssignmentError, match=reason):
        parse_assignment(edit(lines), query.declarations)
