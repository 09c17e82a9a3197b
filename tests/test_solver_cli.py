"""``certbench-solver`` against the VNN-LIB standard's chapter 5 (its capabilities, result
words and assignment format as transcribed by the standard's test double), and ``bench
vnncomp`` driving it, and the test double, as external solvers: the same verdicts as the
portfolio in process, a bogus ``sat`` recorded as an error with its reason."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from onnx import load_tensor, numpy_helper

from bench.contract import Property
from bench.properties.assignment import parse_assignment
from bench.properties.standard import query_text, read_query
from bench.solver_cli import CAPABILITIES, main
from models import MLP
from models.onnx_graph import GRAPH_OPERATORS
from models.onnx_import import LIVE_OPERATORS, OPSET_VERSIONS, export_onnx
from tests.conftest import invoke

spec = pytest.importorskip("vnnlib_test_solver.spec")
supports = pytest.importorskip("vnnlib_test_solver.supports")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A network of 4 inputs and 3 classes, and its queries at a small and a large
    radius around one point (real declarations), plus a float32 one."""
    folder = tmp_path_factory.mktemp("solver")
    torch.manual_seed(0)
    net = MLP([4, 16, 16, 3])
    onnx_path = export_onnx(net, folder / "net.onnx")
    x = torch.full((4,), 0.5, dtype=torch.float64)
    with torch.no_grad():
        label = int(net.float64_copy()(x[None]).argmax())
    queries = {}
    for name, eps, kind in (("small", 0.001, "real"), ("large", 0.5, "real"),
                            ("float32", 0.5, "float32")):
        queries[name] = folder / f"{name}.vnnlib"
        queries[name].write_text(query_text([Property.robustness(x, label, eps, 3)],
                                            (1, 4), (1, 3), element_type=kind))
    return {"net": net, "onnx": onnx_path, "folder": folder, **queries}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_name_and_version_are_one_line_each(capsys):
    assert run(capsys, "--name") == (0, "certbench\n", "")
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.count("\n") == 1 and out.strip()
    code, out, err = run(capsys, "--name", "supports", "--vnnlib-versions")
    assert code == 1 and out == "" and "global options" in err


def test_every_capability_of_the_standard_is_answered_in_its_shape(capsys):
    assert list(CAPABILITIES) == list(supports.CAPABILITIES)
    theory_sets = {supports.HIDDEN_NODE: spec.HIDDEN_NODE_THEORIES,
                   supports.MULTIPLE_INPUT_OUTPUT: spec.MULTIPLE_INPUT_OUTPUT_THEORIES,
                   supports.MULTIPLE_NETWORK: spec.MULTIPLE_NETWORK_THEORIES,
                   supports.MULTIPLE_NODE_COMPARISON: spec.MULTIPLE_NODE_COMPARISON_THEORIES,
                   supports.ARITHMETIC_COMPLEXITY: spec.ARITHMETIC_COMPLEXITY_THEORIES}
    for capability in supports.CAPABILITIES:
        code, out, err = run(capsys, "supports", capability)
        assert code == 0 and err == "" and out.endswith("\n"), capability
        lines = out.splitlines()
        if capability in supports.VERSION_PAIR_CAPABILITIES:
            assert len(lines) == 2
        elif capability in supports.BOOLEAN_CAPABILITIES:
            assert lines in (["true"], ["false"])
        elif capability == supports.ELEMENT_TYPES:
            assert lines == ["real"] and set(lines) <= spec.ELEMENT_TYPES
        elif capability == supports.OPERATORS:
            assert lines == sorted({*LIVE_OPERATORS, *GRAPH_OPERATORS, "Constant", "Shape"})
            assert {"MaxPool", "Sigmoid", "Concat"} <= set(lines)
        else:
            assert lines and set(lines) <= theory_sets[capability], capability
    assert run(capsys, "supports", "--onnx-opset-versions")[1].split() == \
        [str(v) for v in OPSET_VERSIONS]
    assert run(capsys, "supports", "--vnnlib-versions")[1] == "2.0\n2.0\n"
    # the standard's second spelling of one flag, and its second name for the command
    assert run(capsys, "capabilities", "--multiple-inputs-output-theories")[1] == "SIO\n"
    code, out, _ = run(capsys, "supports", "--no-such-capability")
    assert code == 1 and out == ""


def test_the_result_words_and_the_assignment_format(capsys, small):
    net = ["--network", f"net={small['onnx']}"]
    assert run(capsys, "verify", str(small["small"]), *net, "--timeout", "30")[:2] == \
        (0, "unsat\n")
    assert run(capsys, "verify", str(small["large"]), *net, "--timeout", "0")[:2] == \
        (0, "timed-out\n")
    code, out, err = run(capsys, "verify", str(small["large"]), *net, "--timeout", "30")
    assert code == 0 and out.startswith("sat\n"), err
    query = read_query(small["large"].read_text(), "q")
    lines = out.splitlines()
    assert lines[1] == "X real [1,4]" and lines[6] == "Y real [1,3]"
    values = parse_assignment(lines[1:], query.declarations)
    (case,) = query.cases
    point = values["X"]
    assert ((case.lo.numpy() <= point) & (point <= case.hi.numpy())).all()
    session = onnxruntime.InferenceSession(str(small["onnx"]),
                                           providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"input": point[None].astype(np.float32)})[0]
    assert np.array_equal(theirs[0].astype(np.float64), values["Y"])
    assert bool(case.violated_by(torch.from_numpy(values["Y"])[None])[0])


def test_serialised_assignments_are_onnx_tensors(capsys, small, tmp_path):
    code, out, _ = run(capsys, "verify", str(small["large"]), "--network",
                       f"net={small['onnx']}", "--serialise-assignments", str(tmp_path / "a"))
    assert (code, out) == (0, "sat\n")
    x = numpy_helper.to_array(load_tensor(str(tmp_path / "a" / "X.pb")))
    y = numpy_helper.to_array(load_tensor(str(tmp_path / "a" / "Y.pb")))
    assert x.shape == (1, 4) and y.shape == (1, 3)


@pytest.mark.parametrize("arguments, reason", [
    ([], "no model file for network 'net'"),
    (["--network", "other=x.onnx"], "does not declare"),
    (["--network", "net=a.onnx", "--network", "net=b.onnx"], "maps 'net' twice"),
    (["--network", "net"], "NAME=FILE"),
])
def test_a_network_mapping_that_does_not_fit_is_refused(capsys, small, arguments, reason):
    code, out, err = run(capsys, "verify", str(small["small"]), *arguments)
    assert (code, out) == (1, "") and reason in err and err.count("\n") == 1


def test_a_query_asking_for_sound_float32_analysis_is_refused(capsys, small):
    code, out, err = run(capsys, "verify", str(small["float32"]), "--network",
                         f"net={small['onnx']}")
    assert (code, out) == (1, "") and "declared float32" in err and "real" in err


def test_an_older_dialect_file_is_refused(capsys, small, tmp_path):
    from bench.properties import vnnlib_text

    old = tmp_path / "old.vnnlib"
    old.write_text(vnnlib_text(read_query(small["small"].read_text(), "q").cases[0]))
    code, out, err = run(capsys, "verify", str(old), "--network", f"net={small['onnx']}")
    assert (code, out) == (1, "") and "not a VNN-LIB 2.0 query" in err


@pytest.fixture(scope="module")
def instances(small):
    """instances.csv of the small network: properties at several radii and centres, both
    verdicts among them (the portfolio decides each in well under a second)."""
    folder = small["folder"]
    rows = []
    rng = np.random.default_rng(1)
    for index, eps in enumerate((0.002, 0.3, 0.6)):
        x = torch.from_numpy(rng.uniform(0.3, 0.7, size=4))
        with torch.no_grad():
            label = int(small["net"].float64_copy()(x[None]).argmax())
        name = f"p{index}.vnnlib"
        (folder / name).write_text(query_text([Property.robustness(x, label, eps, 3)],
                                              (1, 4), (1, 3)))
        rows.append(f"net.onnx,{name},20")
    (folder / "instances.csv").write_text("\n".join(rows) + "\n")
    return folder / "instances.csv"


@pytest.mark.skipif(shutil.which("certbench-solver") is None
                    or shutil.which("vnnlibTestSolver") is None,
                    reason="needs the installed certbench-solver and vnnlib-test-solver "
                    "(pip install -e '.[test]')")
def test_bench_vnncomp_drives_certbench_and_the_test_double_as_standard_solvers(
        instances, tmp_path):
    assert subprocess.run(["certbench-solver", "--name"], capture_output=True, text=True,
                          check=True).stdout == "certbench\n"
    bogus = tmp_path / "bogus.toml"
    bogus.write_text('[solver]\nname = "liar"\nversion = "0"\n[[rules]]\nmatch = "*.vnnlib"\n'
                     'result = "sat"\nassignments = { X = [9.0, 9.0, 9.0, 9.0], '
                     'Y = [0.0, 0.0, 0.0] }\n')
    out = tmp_path / "out"
    code, stdout, err = invoke(["vnncomp", str(instances), "--out", str(out),
                                "--external", "ours=certbench-solver",
                                "--external", f"liar=vnnlibTestSolver --config {bogus}"])
    assert code == 0, stdout + err

    def results(folder: Path) -> list[dict]:
        return list(csv.DictReader((folder / "results.csv").read_text().splitlines()))

    portfolio, ours, liar = (results(out), results(out / "solvers" / "ours"),
                             results(out / "solvers" / "liar"))
    assert [r["result"] for r in ours] == [r["result"] for r in portfolio]
    assert {"sat", "unsat"} <= {r["result"] for r in portfolio}
    assert all(r["result"] == "error" and "outside every input box" in r["reason"]
               for r in liar)
    for row in ours:                      # its sat points went through the same re-check
        if row["result"] == "sat":
            assert list((out / "solvers" / "ours" / "counterexamples").glob("*"))
    table = list(csv.DictReader((out / "solvers.csv").read_text().splitlines()))
    assert [r["ours result"] for r in table] == [r["result"] for r in ours]
    assert [r["portfolio result"] for r in table] == [r["result"] for r in portfolio]
    assert (out / "cactus.png").exists() and "solvers.csv" in (out / "index.html").read_text()
