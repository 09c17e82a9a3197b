"""``bench vnncomp`` on a self-made benchmark: exported network and properties, verdicts
checked against exact MILP, counterexamples re-checked independently."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import torch

from bench import data
from bench.properties import read_vnnlib
from bench.vnncomp.files import counterexample_name
from models import load
from tests.conftest import invoke
from verifiers.mip.sample_solves import solve_samples

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def benchmark_dir(tmp_path_factory):
    """LP-NN exported with robustness properties of 10 test images at eps 0.1."""
    folder = tmp_path_factory.mktemp("vnn")
    code, _, err = invoke(["export", "lp-nn", "--onnx", str(folder / "lp-nn.onnx"),
                           "--properties", "10", "--eps", "0.1", "--timeout", "30"])
    assert code == 0, err
    return folder


@pytest.mark.slow
def test_vnncomp_verdicts_agree_with_exact_milp(benchmark_dir, tmp_path):
    net, _ = load(str(benchmark_dir / "lp-nn.onnx"))
    images, labels = data.mnist_test(10)
    x = data.to_tensor(images, torch.float64)
    reference = [("onnx", "vnnlib", "verdict")]
    for row in csv.reader((benchmark_dir / "instances.csv").read_text().splitlines()):
        n, eps = re.match(r"lp-nn_(\d+)_eps([\d.e-]+)\.vnnlib", row[1]).groups()
        n = int(n)
        (verdict,) = solve_samples(net, x[n:n + 1], torch.tensor([int(labels[n])]),
                                   float(eps), time_limit=60.0, clip=True, cache=None)
        assert verdict.verdict != "unknown"
        reference.append((row[0], row[1], "sat" if verdict.verdict == "broken" else "unsat"))
    with open(tmp_path / "reference.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(reference)
    out = tmp_path / "out"
    code, stdout, err = invoke(["vnncomp", str(benchmark_dir / "instances.csv"), "--out",
                                str(out), "--reference", str(tmp_path / "reference.csv")])
    assert code == 0, stdout + err
    results = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert len(results) == 10 and "DISAGREES" not in stdout
    verdicts = {r["result"] for r in results}
    assert {"sat", "unsat"} <= verdicts and "error" not in verdicts
    truth = {(r[0], r[1]): r[2] for r in reference[1:]}
    for index, row in enumerate(results):       # every answer is right, or unknown
        assert row["result"] in (truth[(row["onnx"], row["vnnlib"])], "unknown")
        if row["result"] == "sat":
            name = counterexample_name(row["onnx_sha256"], row["vnnlib_sha256"], row["vnnlib"])
            text = (out / "counterexamples" / name).read_text()
            values = dict(re.findall(r"\((\w+) ([-\d.e+]+)\)", text))
            point = torch.tensor([float(values[f"X_{i}"]) for i in range(784)],
                                 dtype=torch.float64)
            prop = read_vnnlib(benchmark_dir / row["vnnlib"])
            assert ((point >= prop.lo) & (point <= prop.hi)).all()
            with torch.no_grad():
                assert bool(prop.violated_by(net.float64_copy()(point[None]))[0])
    sat = sum(r["result"] == "sat" for r in results)
    assert f"score {10 * sum(r['result'] in ('sat', 'unsat') for r in results)}" in stdout
    assert sat >= 1
    before = (out / "results.csv").read_text()
    again_code, _, again_err = invoke(["vnncomp", str(benchmark_dir / "instances.csv"),
                                       "--out", str(out)])
    assert again_code == 0 and again_err == ""                     # nothing recomputed
    assert (out / "results.csv").read_text() == before


def test_a_broken_instance_is_an_error_and_the_rest_complete(benchmark_dir, tmp_path):
    rows = (benchmark_dir / "instances.csv").read_text().splitlines()[:2]
    (tmp_path / "broken.vnnlib").write_text("(declare-const X_0 Real)\n(assert (<= X_0")
    (benchmark_dir / "broken.vnnlib").write_text("(declare-const X_0 Real)\n(assert (<= X_0")
    instances = tmp_path / "instances.csv"
    instances.write_text("\n".join([rows[0], "lp-nn.onnx,broken.vnnlib,10", rows[1]]) + "\n")
    for name in ("lp-nn.onnx", rows[0].split(",")[1], rows[1].split(",")[1]):
        (tmp_path / name).write_bytes((benchmark_dir / name).read_bytes())
    code, stdout, err = invoke(["vnncomp", str(instances), "--out", str(tmp_path / "out")])
    assert code == 0, err
    results = list(csv.DictReader((tmp_path / "out" / "results.csv").read_text().splitlines()))
    assert [r["result"] == "error" for r in results] == [False, True, False]
    assert "unbalanced" in err


def test_a_bad_instances_file_is_one_line(tmp_path):
    (tmp_path / "instances.csv").write_text("a.onnx,b.vnnlib\n")
    code, _, err = invoke(["vnncomp", str(tmp_path / "instances.csv"), "--out",
                           str(tmp_path / "out")])
    assert code == 1 and err.count("\n") == 1 and "expected onnx,vnnlib,timeout" in err


def test_an_unusable_device_is_one_line_before_any_instance(tmp_path):
    (tmp_path / "instances.csv").write_text("a.onnx,b.vnnlib,10\n")
    code, _, err = invoke(["vnncomp", str(tmp_path / "instances.csv"), "--out",
                           str(tmp_path / "out"), "--device", "tpu"])
    assert code == 1 and err.count("\n") == 1 and "device" in err
    assert not (tmp_path / "out" / "results.csv").exists()


def test_the_portfolio_decides_what_the_incomplete_verifiers_leave_open(tmp_path):
    """Tiny deep networks at radii where crown, lp and ibp all fail: branch and bound
    inside the portfolio settles each instance, in agreement with exact MILP margins."""
    from bench.contract import Property, refuted
    from bench.vnncomp.portfolio import default_verifiers, solve
    from models.onnx_import import export_onnx
    from tests.conftest import random_mlp
    from verifiers.mip.sample_solves import exact_class_margins

    verifiers = default_verifiers()
    decided_by_bab = 0
    for trial in range(4):
        net = random_mlp([6, 16, 16, 16, 3], seed=60 + trial)
        path = export_onnx(net, tmp_path / f"net{trial}.onnx", input_shape=(6,))
        x = torch.rand(1, 6, generator=torch.Generator().manual_seed(trial), dtype=torch.float64)
        y = net.float64_copy()(x).argmax(1)
        for eps in (0.05, 0.1, 0.2, 0.3, 0.5):
            prop = Property.robustness(x[0], int(y), eps, 3)
            if not any(refuted(v.bound_property(net, prop)) for v in verifiers):
                break
        worst = float(np.max(exact_class_margins(net, x, y, eps)))
        answer = solve(net, prop, 60.0, path, verifiers)
        assert answer.result == ("unsat" if worst < 0 else "sat"), (trial, worst)
        decided_by_bab += answer.message.startswith("bab")
    assert decided_by_bab > 0


def softplus_network(path) -> None:
    """4 inputs, Gemm, Softplus (no bound rule in certbench), Gemm, 2 outputs, as ONNX."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    generator = np.random.default_rng(3)
    w1 = generator.normal(size=(8, 4)).astype(np.float32)
    w2 = generator.normal(size=(2, 8)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["X", "W1"], ["H"], transB=1),
             helper.make_node("Softplus", ["H"], ["S"]),
             helper.make_node("Gemm", ["S", "W2"], ["Y"], transB=1)]
    graph = helper.make_graph(
        nodes, "softplus", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))


def test_a_network_without_bound_rules_is_attacked_through_onnxruntime(tmp_path):
    """An operator with no bound rule (Softplus) is not an ``error``: a reachable threshold
    is ``sat`` with a counterexample in the box that onnxruntime confirms, an unreachable
    one ``unknown`` with the operator named; never ``unsat``."""
    import onnxruntime

    softplus_network(tmp_path / "soft.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "soft.onnx"))
    grid = np.random.default_rng(0).uniform(-1, 1, size=(20000, 4)).astype(np.float32)
    reached = float(session.run(None, {"X": grid})[0][:, 0].max())
    header = "".join(f"(declare-const X_{i} Real)\n" for i in range(4)) + \
        "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n" + \
        "".join(f"(assert (>= X_{i} -1.0))\n(assert (<= X_{i} 1.0))\n" for i in range(4))
    (tmp_path / "reachable.vnnlib").write_text(header + f"(assert (>= Y_0 {reached - 0.1}))\n")
    (tmp_path / "unreachable.vnnlib").write_text(header + "(assert (>= Y_0 1000.0))\n")
    (tmp_path / "instances.csv").write_text("soft.onnx,reachable.vnnlib,4\n"
                                            "soft.onnx,unreachable.vnnlib,2\n")
    code, _, err = invoke(["vnncomp", str(tmp_path / "instances.csv"),
                           "--out", str(tmp_path / "out")])
    assert code == 0, err
    results = list(csv.DictReader((tmp_path / "out" / "results.csv").read_text().splitlines()))
    assert [r["result"] for r in results] == ["sat", "unknown"]
    assert "Softplus" in results[1]["reason"]
    written = next((tmp_path / "out" / "counterexamples").iterdir()).read_text()
    values = [float(v) for v in re.findall(r"\(X_\d+ ([-\d.e+]+)\)", written)]
    assert len(values) == 4 and all(-1 <= v <= 1 for v in values)
    y = session.run(None, {"X": np.array([values], dtype=np.float32)})[0]
    assert float(y[0, 0]) >= reached - 0.1
