"""Standard solvers driven by certbench, tested against the standard's test double
(``vnnlib-test-solver``): every answer it can give and every misbehaviour it offers is
recorded with the right status and reason, a bogus ``sat`` never counts, and a hang is
stopped."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.contract import Property
from bench.properties.standard import read_query
from models import MLP
from models.onnx_import import export_onnx
from verifiers.external.external import UNSAT_BOUND, External
from verifiers.external.instances import solve_instance, write_query

SOLVER = "vnnlibTestSolver"
pytestmark = pytest.mark.skipif(shutil.which(SOLVER) is None, reason="vnnlib-test-solver "
                                "is not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    """A small network, a property it violates and a re-checked counterexample."""
    from bench.vnncomp.portfolio import solve

    folder = tmp_path_factory.mktemp("external")
    torch.manual_seed(0)
    net = MLP([4, 12, 3])
    onnx_path = export_onnx(net, folder / "net.onnx")
    x = torch.full((4,), 0.5, dtype=torch.float64)
    with torch.no_grad():
        label = int(net.float64_copy()(x[None]).argmax())
    prop = Property.robustness(x, label, 0.5, 3)
    answer = solve(net, prop, 30.0, onnx_path, complete=False)
    assert answer.result == "sat"
    return {"net": net, "onnx": onnx_path, "prop": prop, "folder": folder,
            "point": answer.counterexample[0], "outputs": answer.counterexample[1]}


def _values(values) -> str:
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


def config(folder: Path, name: str, **rule) -> str:
    """A test-solver configuration answering every query with ``rule``; returns the
    command line that uses it."""
    lines = ['[solver]', 'name = "test double"', 'version = "1"', '[[rules]]',
             'match = "*.vnnlib"']
    for key, value in rule.items():
        if key == "assignments":
            lines.append("assignments = { " + ", ".join(
                f"{k} = {_values(v)}" for k, v in value.items()) + " }")
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            lines.append(f"{key} = {value!r}".replace("'", '"'))
        else:
            lines.append(f"{key} = {value}")
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return f"{SOLVER} --config {path}"


def _ask(instance, command: str, timeout: float = 10.0, grace: float = 5.0):
    return solve_instance(command, instance["onnx"], [instance["prop"]], timeout,
                          instance["folder"], grace=grace)


@pytest.mark.parametrize("result, status", [("unsat", "unsat"), ("unknown", "unknown"),
                                            ("timed-out", "timeout")])
def test_each_plain_answer_is_recorded(instance, result, status):
    outcome = _ask(instance, config(instance["folder"], result, result=result))
    assert (outcome.status, outcome.reason, outcome.exit_code) == (status, "", 0)


def test_a_sat_with_its_assignment_is_read_exactly(instance):
    command = config(instance["folder"], "sat", result="sat", assignments={
        "X": instance["point"], "Y": instance["outputs"]})
    outcome = _ask(instance, command)
    assert outcome.status == "sat"
    assert np.array_equal(outcome.values["X"], instance["point"])


def test_the_solver_timeout_answer_and_a_hang_stopped_at_the_timeout(instance):
    command = config(instance["folder"], "slow", result="unsat", delay_seconds=30)
    honest = _ask(instance, command, timeout=1.0)         # it answers timed-out itself
    assert honest.status == "timeout" and honest.reason == "" and honest.exit_code == 0
    stopped = _ask(instance, command, timeout=0.5, grace=0.5)   # we stop it first
    assert stopped.status == "timeout" and "stopped" in stopped.reason
    assert stopped.exit_code is None             # ended by us, not by itself (no wall clock)


@pytest.mark.parametrize("rule, reason", [
    ({"result": "unsat", "raw_stdout": "proved it!\n"}, "first line of stdout is 'proved it!'"),
    ({"result": "unsat", "raw_stdout": ""}, "printed nothing on stdout"),
    ({"result": "unsat", "exit_code": 3}, "answered 'unsat' but exited with code 3"),
    ({"result": "unsat", "crash": True}, "terminated by signal SIGABRT"),
    ({"result": "sat", "raw_stdout": "sat\nX real [1,4]\n0.5\n"}, "does not parse"),
])
def test_each_misbehaviour_is_an_error_with_its_reason(instance, rule, reason):
    outcome = _ask(instance, config(instance["folder"], "bad", **rule))
    assert outcome.status == "error"
    assert reason in outcome.reason


def test_noise_on_stderr_is_ignored(instance):
    outcome = _ask(instance, config(instance["folder"], "noisy", result="unsat",
                                    stderr="progress: 50%"))
    assert outcome.status == "unsat"


def test_a_command_that_cannot_start_is_an_error(instance):
    outcome = _ask(instance, "no-such-solver-anywhere --flag")
    assert outcome.status == "error" and "cannot start" in outcome.reason


def test_the_query_is_written_once_with_the_files_shapes(instance):
    path, declarations = write_query([instance["prop"]], instance["onnx"], instance["folder"])
    assert write_query([instance["prop"]], instance["onnx"], instance["folder"])[0] == path
    query = read_query(path.read_text(), str(path))
    assert query.declarations == declarations
    assert query.input.shape == (1, 4) and query.output.shape == (1, 3)
    assert query.network == "net"


def test_the_plugin_bounds_from_verdicts_and_never_trusts_a_bogus_sat(instance):
    net, x = instance["net"], instance["prop"]
    folder = instance["folder"]
    samples = torch.full((2, 4), 0.5, dtype=torch.float64)
    labels = torch.tensor([0, 1])
    unsat = External(command=config(folder, "p_unsat", result="unsat"), timeout=5)
    upper = unsat.bound(net, samples, labels, 0.1)
    assert upper[0, 0] == -float("inf") and upper[0, 1] == UNSAT_BOUND < 0
    assert upper[1, 1] == -float("inf") and upper[1, 2] == UNSAT_BOUND
    bogus = External(command=config(folder, "p_bogus", result="sat", assignments={
        "X": [0.5, 0.5, 0.5, 0.5], "Y": [0.0, 0.0, 0.0]}), timeout=5)
    upper = bogus.bound(net, samples[:1], torch.tensor([int(x.groups[0][0][0].argmin())]),
                        0.001)
    assert torch.isinf(upper).all()
    (row,) = bogus.statistics()
    assert row["status"] == "error" and "does not violate" in row["reason"]
    outside = External(command=config(folder, "p_out", result="sat", assignments={
        "X": [2.0, 0.5, 0.5, 0.5], "Y": [0.0, 0.0, 0.0]}), timeout=5)
    assert all(torch.isinf(u).all() for u in outside.bound_property(net, instance["prop"]))
    (row,) = outside.statistics()
    assert row["status"] == "error" and "outside the input box" in row["reason"]


def test_the_plugin_refuses_a_double_command_and_supports_nothing_without_one(tmp_path):
    unconfigured = External()
    assert not unconfigured.supports(MLP([4, 3]))
    with pytest.raises(ValueError, match="external has no solver"):
        unconfigured.bound_property(MLP([4, 3]), Property.robustness(
            torch.zeros(4, dtype=torch.float64), 0, 0.1, 3))
    toml = tmp_path / "s.toml"
    toml.write_text('command = "x"\n')
    with pytest.raises(ValueError, match="one of command or toml, not both"):
        External(command="x", toml=str(toml))
    assert External(toml=str(toml)).supports(MLP([4, 3]))
    toml.write_text('timeout = 5\n')
    with pytest.raises(ValueError, match="no command"):
        External(toml=str(toml))
