"""VNNLIB properties: the reader on hand-written files, malformed files, round trips."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.contract import Property
from bench.properties import VnnlibError, read_vnnlib, vnnlib_text, write_vnnlib

ROBUSTNESS = """; a VNN-COMP style local robustness property, label 1
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const X_2 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (<= X_0 0.5))  (assert (>= X_0 0.25))
(assert (<= X_1 1.0))
(assert (>= X_1 0.0))
(assert (and (<= X_2 0.125) (>= X_2 -0.125)))
(assert (or
    (and (>= Y_0 Y_1))
    (and (>= Y_2 Y_1))
))
"""


def test_a_robustness_property_reads_as_a_box_and_one_group_per_wrong_class():
    prop = read_vnnlib("robust.vnnlib", text=ROBUSTNESS, num_inputs=3, num_outputs=3)
    assert prop.lo.tolist() == [0.25, 0.0, -0.125] and prop.hi.tolist() == [0.5, 1.0, 0.125]
    rows = sorted((m.tolist(), d.tolist()) for m, d in prop.groups)
    assert rows == [([[0.0, -1.0, 1.0]], [0.0]), ([[1.0, -1.0, 0.0]], [0.0])]
    same = Property.robustness(torch.tensor([0.375, 0.5, 0.0]), 1, 0.125, 3, clip=False)
    assert sorted((m.tolist(), d.tolist()) for m, d in same.groups) == rows
    outputs = torch.tensor([[0.0, 1.0, 0.5], [2.0, 1.0, 0.0], [0.0, 1.0, 1.0]],
                           dtype=torch.float64)
    assert prop.violated_by(outputs).tolist() == [False, True, True]   # a tie counts


def test_a_general_disjunctive_linear_specification():
    """Conjunctions inside a disjunction, linear terms with constants, a top-level
    conjunction with the disjunction (distributed into DNF), strict comparisons."""
    text = """(declare-const X_0 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (>= X_0 -1)) (assert (<= X_0 1))
(assert (or (and (> (+ Y_0 (* 2 Y_1)) 3.5) (<= Y_1 (- Y_0 1)))
            (< (* -1 Y_0) 0.25)))
(assert (>= Y_1 -10))
"""
    prop = read_vnnlib("general.vnnlib", text=text)
    assert len(prop.groups) == 2
    first, second = ((m.tolist(), d.tolist()) for m, d in prop.groups)
    assert first == ([[1.0, 2.0], [1.0, -1.0], [0.0, 1.0]], [3.5, 1.0, -10.0])
    assert second == ([[1.0, 0.0], [0.0, 1.0]], [-0.25, -10.0])
    y = torch.tensor([[4.0, 1.0], [0.0, 0.0], [-1.0, -20.0]], dtype=torch.float64)
    assert prop.violated_by(y).tolist() == [True, True, False]


@pytest.mark.parametrize("text, message", [
    ("(declare-const X_0 Real)\n(assert (<= X_0 1)", "unbalanced '('"),
    ("(declare-const X_0 Real))", "unbalanced ')'"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 Z_3))",
     ":3: unknown symbol 'Z_3'"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 0))\n"
     "(assert (>= X_0 1))\n(assert (>= Y_0 0))", "lower bound 1.0 above its upper bound 0.0"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n"
     "(assert (>= Y_0 0))", "X_0 has no lower or no upper bound"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n"
     "(assert (>= X_0 0))\n(assert (>= (* Y_0 Y_0) 0))", "not linear"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n"
     "(assert (>= X_0 0))\n(assert (>= Y_0 X_0))", "mixes input and output variables"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n"
     "(assert (>= X_0 0))\n(check-sat)", "unsupported command 'check-sat'"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n"
     "(assert (>= X_0 0))", "no output constraint"),
    ("(declare-const X_0 Int)", "expected (declare-const NAME Real)"),
    # a constant that is no number a verifier could use: named with its line
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n"
     "(assert (>= X_0 0))\n(assert (>= Y_0 nan))", ":5: 'nan' is not a finite number"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 nan))\n"
     "(assert (>= X_0 0))\n(assert (>= Y_0 0))", ":3: 'nan' is not a finite number"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n"
     "(assert (>= X_0 0))\n(assert (>= Y_0 (* -inf X_0)))", ":5: '-inf' is not a finite"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n"
     "(assert (>= X_0 0))\n(assert (or))", ":5: 'or' with nothing to combine"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n"
     "(assert (>= X_0 0))\n(assert (and))", ":5: 'and' with nothing to combine"),
])
def test_malformed_files_are_one_line_errors_naming_the_line(text, message):
    with pytest.raises(VnnlibError) as caught:
        read_vnnlib("bad.vnnlib", text=text)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_variable_count_must_match_the_network():
    with pytest.raises(VnnlibError, match="declares 3 inputs but the network has 784"):
        read_vnnlib("robust.vnnlib", text=ROBUSTNESS, num_inputs=784)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), inputs=st.integers(1, 6), outputs=st.integers(1, 4),
       groups=st.integers(1, 4), rows=st.integers(1, 3))
def test_write_then_read_gives_the_same_property(tmp_path_factory, seed, inputs, outputs,
                                                   groups, rows):
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(inputs, generator=g, dtype=torch.float64)
    hi = lo + torch.rand(inputs, generator=g, dtype=torch.float64)
    spec = tuple((torch.randn(rows, outputs, generator=g, dtype=torch.float64),
                  torch.randn(rows, generator=g, dtype=torch.float64)) for _ in range(groups))
    prop = Property(lo, hi, spec)
    path = write_vnnlib(prop, tmp_path_factory.mktemp("v") / "p.vnnlib")
    again = read_vnnlib(path, num_inputs=inputs, num_outputs=outputs)
    assert torch.equal(again.lo, lo) and torch.equal(again.hi, hi)
    for (m1, d1), (m2, d2) in zip(again.groups, spec):
        assert torch.equal(m1, m2) and torch.equal(d1, d2)
    assert vnnlib_text(again) == vnnlib_text(prop)
