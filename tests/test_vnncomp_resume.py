"""``bench vnncomp`` trusts nothing it reads back, and ``bench export`` checks before it
writes: hand-edited verdicts, changed files, reordered instances, reference words,
commas in names, error rows, bad folders (issue 38). A tiny network and properties whose
instances solve in milliseconds; the portfolio itself is tested in test_vnncomp.py."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.contract import Property
from bench.properties import write_vnnlib
from bench.vnncomp.competition import run
from bench.vnncomp.files import counterexample_name, read_counterexample
from models.onnx_import import export_onnx
from tests.conftest import invoke, random_mlp

pytest.importorskip("onnxruntime")

INPUTS, CLASSES = 4, 3


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    """A 4-8-3 network as ONNX and six robustness properties: three radii large enough
    that an attack breaks them (sat), three small enough that a bound proves them (unsat)."""
    folder = tmp_path_factory.mktemp("tiny")
    net = random_mlp([INPUTS, 8, CLASSES], seed=0)
    export_onnx(net, folder / "net.onnx")
    generator = torch.Generator().manual_seed(0)
    rows = []
    for n in range(6):
        x = torch.rand(INPUTS, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            label = int(net.float64_copy()(x[None]).argmax())
        eps = 1.0 if n % 2 else 0.001
        write_vnnlib(Property.robustness(x, label, eps, CLASSES), folder / f"p{n}.vnnlib")
        rows.append(f"net.onnx,p{n}.vnnlib,10")
    (folder / "instances.csv").write_text("\n".join(rows) + "\n")
    return folder


def results(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "results.csv").read_text().splitlines()))


def write_rows(out: Path, rows: list[dict[str, str]]) -> None:
    """``results.csv`` rewritten by hand (as a user's editor would: the same columns)."""
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def verdicts(rows: list[dict]) -> dict[tuple[str, str], str]:
    return {(row["onnx"], row["vnnlib"]): row["result"] for row in rows}


def quiet_run(instances: Path, out: Path) -> list[dict]:
    lines: list[str] = []
    return run(instances, out, echo=lines.append)


@pytest.fixture(scope="module")
def fresh_out(bench_dir, tmp_path_factory) -> Path:
    """The folder a fresh run of the six instances wrote."""
    out = tmp_path_factory.mktemp("fresh") / "out"
    quiet_run(bench_dir / "instances.csv", out)
    return out


@pytest.fixture(scope="module")
def fresh(fresh_out) -> dict[tuple[str, str], str]:
    answers = verdicts(results(fresh_out))
    assert set(answers.values()) == {"sat", "unsat"}, answers
    return answers


def copy_of(bench_dir: Path, folder: Path) -> Path:
    shutil.copytree(bench_dir, folder, dirs_exist_ok=True)
    return folder / "instances.csv"


def sat_has_its_checked_counterexample(out: Path, folder: Path) -> None:
    """Every ``sat`` row has its counterexample file, inside the box and violating."""
    from bench.properties import read_vnnlib
    from models import load

    net, _ = load(str(folder / "net.onnx"))
    for row in results(out):
        if row["result"] != "sat":
            continue
        name = counterexample_name(row["onnx_sha256"], row["vnnlib_sha256"], row["vnnlib"])
        point = read_counterexample(out / "counterexamples" / name, INPUTS)
        assert point is not None, row
        prop = read_vnnlib(folder / row["vnnlib"])
        x = torch.from_numpy(point)
        assert bool(((x >= prop.lo) & (x <= prop.hi)).all())
        with torch.no_grad():
            assert bool(prop.violated_by(net.float64_copy()(x[None]))[0])


def test_a_hand_edited_verdict_is_solved_again(bench_dir, fresh, tmp_path):
    instances = copy_of(bench_dir, tmp_path)
    out = tmp_path / "out"
    quiet_run(instances, out)
    rows = results(out)
    flipped = {"sat": "unsat", "unsat": "sat"}
    write_rows(out, [{**row, "result": flipped[row["result"]]} for row in rows])
    lines: list[str] = []
    again = run(instances, out, echo=lines.append)
    assert len([line for line in lines if "net.onnx" in line]) == 6   # all solved again
    assert verdicts(again) == fresh
    sat_has_its_checked_counterexample(out, tmp_path)


def test_a_changed_network_or_property_is_noticed(bench_dir, fresh, tmp_path):
    instances = copy_of(bench_dir, tmp_path)
    out = tmp_path / "out"
    quiet_run(instances, out)
    other = random_mlp([INPUTS, 8, CLASSES], seed=11)
    export_onnx(other, tmp_path / "net.onnx")                       # same name, new bytes
    (tmp_path / "p0.vnnlib").write_text((tmp_path / "p1.vnnlib").read_text())
    lines: list[str] = []
    again = run(instances, out, echo=lines.append)
    assert not any(line.startswith("resuming") for line in lines)   # nothing kept
    assert len([line for line in lines if "net.onnx" in line]) == 6   # all solved again
    assert {r["onnx_sha256"] for r in again} == {
        hashlib.sha256((tmp_path / "net.onnx").read_bytes()).hexdigest()}
    sat_has_its_checked_counterexample(out, tmp_path)


def test_counterexamples_follow_the_instance_not_its_row(bench_dir, fresh, tmp_path):
    instances = copy_of(bench_dir, tmp_path)
    out = tmp_path / "out"
    quiet_run(instances, out)
    rows = instances.read_text().splitlines()
    instances.write_text("\n".join(rows[::-1]) + "\n")              # every row moves
    lines: list[str] = []
    again = run(instances, out, echo=lines.append)
    assert lines == []                                              # all kept, re-checked
    assert verdicts(again) == fresh
    sat_has_its_checked_counterexample(out, tmp_path)


def test_a_counterexample_that_does_not_check_is_solved_again(bench_dir, fresh, tmp_path):
    instances = copy_of(bench_dir, tmp_path)
    out = tmp_path / "out"
    quiet_run(instances, out)
    sat = next(row for row in results(out) if row["result"] == "sat")
    name = counterexample_name(sat["onnx_sha256"], sat["vnnlib_sha256"], sat["vnnlib"])
    from bench.properties import read_vnnlib
    from models import load

    net, _ = load(str(tmp_path / "net.onnx"))
    prop = read_vnnlib(tmp_path / sat["vnnlib"])
    points = prop.lo + (prop.hi - prop.lo) * torch.rand(256, INPUTS, dtype=torch.float64)
    with torch.no_grad():
        safe = points[~prop.violated_by(net.float64_copy()(points))][0]
    for text in ("(" + "\n".join(f"(X_{i} {float(v)!r})" for i, v in enumerate(safe)) + ")\n",
                 "((X_0 0.5))\n", "not a counterexample"):
        (out / "counterexamples" / name).write_text(text)
        lines: list[str] = []
        again = run(instances, out, echo=lines.append)
        assert any(sat["vnnlib"] in line for line in lines)         # solved again
        assert verdicts(again) == fresh
        sat_has_its_checked_counterexample(out, tmp_path)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 5),
                                st.sampled_from(["sat", "unsat", "timeout", "unknown", "error",
                                                 "SAT", "garbage", ""]),
                                st.booleans()), max_size=6),
       order=st.permutations(range(6)), drop_counterexamples=st.booleans())
def test_a_resumed_run_answers_as_a_fresh_one(bench_dir, fresh, fresh_out, tmp_path_factory,
                                              edits, order, drop_counterexamples):
    """Whatever was done to ``results.csv`` (verdicts changed, digests garbled),
    to the counterexamples and to the order of the instances, a resumed run's answers
    equal a fresh run's, and no ``sat`` stands without its re-checked counterexample.
    (Each example starts from a copy of the fresh run's folder, for the same files.)"""
    folder = tmp_path_factory.mktemp("resume")
    instances = copy_of(bench_dir, folder)
    out = folder / "out"
    shutil.copytree(fresh_out, out)
    rows = results(out)
    for index, word, garble in edits:
        rows[index]["result"] = word
        if garble:
            rows[index]["vnnlib_sha256"] = "0" * 64
    write_rows(out, rows)
    if drop_counterexamples:
        shutil.rmtree(out / "counterexamples", ignore_errors=True)
    lines = instances.read_text().splitlines()
    instances.write_text("\n".join(lines[i] for i in order) + "\n")
    assert verdicts(quiet_run(instances, out)) == fresh
    sat_has_its_checked_counterexample(out, folder)


def test_a_comma_in_a_file_name_round_trips(bench_dir, fresh, tmp_path):
    copy_of(bench_dir, tmp_path)
    (tmp_path / "p,0.vnnlib").write_text((tmp_path / "p0.vnnlib").read_text())
    instances = tmp_path / "commas.csv"
    instances.write_text('net.onnx,"p,0.vnnlib",10\n')
    out = tmp_path / "out"
    first = quiet_run(instances, out)
    rows = results(out)
    assert [row["vnnlib"] for row in rows] == ["p,0.vnnlib"]
    assert rows[0]["result"] == fresh[("net.onnx", "p0.vnnlib")] == first[0]["result"]
    lines: list[str] = []
    run(instances, out, echo=lines.append)
    assert lines == []                                              # resumed, not re-solved


def test_error_rows_are_retried(bench_dir, tmp_path):
    instances = copy_of(bench_dir, tmp_path)
    good = (tmp_path / "p0.vnnlib").read_text()
    (tmp_path / "p0.vnnlib").write_text("(declare-const X_0 Real)\n(assert (<= X_0")
    out = tmp_path / "out"
    assert quiet_run(instances, out)[0]["result"] == "error"
    (tmp_path / "p0.vnnlib").write_text(good)
    assert quiet_run(instances, out)[0]["result"] != "error"


@pytest.mark.parametrize("content, words", [
    (b"onnx,vnnlib\nnet.onnx,p0.vnnlib\n", "not a results file"),
    (b"\x89PNG\x00\xff\xfe binary", "cannot read"),
])
def test_a_results_file_that_is_not_ours_is_one_line(bench_dir, tmp_path, content, words):
    instances = copy_of(bench_dir, tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.csv").write_bytes(content)
    code, _, err = invoke(["vnncomp", str(instances), "--out", str(tmp_path / "out")])
    assert code == 1 and err.count("\n") == 1 and words in err
    assert (tmp_path / "out" / "results.csv").read_bytes() == content
    assert not (tmp_path / "out" / "counterexamples").exists()


def test_out_naming_a_file_is_one_line(bench_dir, tmp_path):
    instances = copy_of(bench_dir, tmp_path)
    (tmp_path / "taken").write_text("mine")
    code, _, err = invoke(["vnncomp", str(instances), "--out", str(tmp_path / "taken")])
    assert code == 1 and err.count("\n") == 1 and "is a file" in err
    assert (tmp_path / "taken").read_text() == "mine"


@pytest.mark.parametrize("reference, fine", [
    ("onnx,vnnlib,verdict\nnet.onnx,p0.vnnlib,{p0}\nnet.onnx,p1.vnnlib,{p1}\n", True),
    ("onnx,vnnlib,verdict\nnet.onnx,p0.vnnlib,maybe\n", "verdict must be one of"),
    ("onnx,vnnlib,verdict\nnet.onnx,p0.vnnlib,sat\nnet.onnx,p0.vnnlib,sat\n",
     "has a verdict already"),
    ("onnx,vnnlib,verdict\nnet.onnx,p0.vnnlib\n", "verdict must be one of"),
    ("onnx,vnnlib\nnet.onnx,p0.vnnlib\n", "needs columns"),
])
def test_reference_words_and_bad_rows(bench_dir, fresh, tmp_path, reference, fine):
    """``SAT``/``Violated``/``holds`` are the competition's words; anything else, a row
    without a verdict or a repeated row is one line, before any instance is solved."""
    instances = copy_of(bench_dir, tmp_path)
    instances.write_text("net.onnx,p0.vnnlib,10\nnet.onnx,p1.vnnlib,10\n")
    words = {"sat": "Violated", "unsat": "HOLDS"}
    text = reference.format(p0=words[fresh[("net.onnx", "p0.vnnlib")]],
                            p1=fresh[("net.onnx", "p1.vnnlib")].upper())
    (tmp_path / "reference.csv").write_text(text)
    code, stdout, err = invoke(["vnncomp", str(instances), "--out", str(tmp_path / "out"),
                                "--reference", str(tmp_path / "reference.csv")])
    if fine is True:
        assert code == 0, err
        assert "score 20" in stdout
        from bench.page import page_tables
        page = page_tables((tmp_path / "out" / "index.html").read_text())
        with open(tmp_path / "out" / "results.csv", newline="") as handle:
            assert page["results.csv"] == list(csv.reader(handle))
        assert (tmp_path / "out" / "cactus.png").stat().st_size > 1000
    else:
        assert code == 1 and err.count("\n") == 1 and fine in err
        assert not (tmp_path / "out").exists()


def test_a_missing_reference_is_reported_before_the_run(bench_dir, tmp_path):
    instances = copy_of(bench_dir, tmp_path)
    code, _, err = invoke(["vnncomp", str(instances), "--out", str(tmp_path / "out"),
                           "--reference", str(tmp_path / "nope.csv")])
    assert code == 1 and err.count("\n") == 1 and "nope.csv" in err
    assert not (tmp_path / "out").exists()


def test_a_malformed_scheduler_address_is_one_line(tmp_path):
    code, _, err = invoke(["run", "--models", "nt-nn", "--n", "2", "--verifiers", "ibp",
                           "--attacks", "fgsm", "--executor", "dask", "--scheduler",
                           "bogus:://x", "--out", str(tmp_path / "out")])
    assert code == 1 and err.count("\n") == 1 and "no Dask scheduler" in err


def test_more_workers_than_cores_are_capped_with_a_warning(monkeypatch, capsys):
    import argparse
    import os

    import bench.cli as cli
    import bench.executors as executors

    seen = {}
    monkeypatch.setattr(executors, "executor", lambda kind, **kw: seen.update(kw) or kind)
    args = argparse.Namespace(executor="local", workers=100, scheduler=None,
                              worker_threads=None)
    cli._executor(args)
    assert seen["workers"] == (os.cpu_count() or 1)
    assert "warning: --workers 100 is more than" in capsys.readouterr().err


def test_negative_labels_are_refused(tmp_path):
    np.savez(tmp_path / "set.npz", images=np.zeros((3, 784), dtype=np.uint8),
             labels=np.array([1, -2, 3]))
    code, _, err = invoke(["run", "--models", "nt-nn", "--dataset", str(tmp_path / "set.npz"),
                           "--verifiers", "ibp", "--attacks", "fgsm",
                           "--out", str(tmp_path / "out")])
    assert code == 1 and err.count("\n") == 1 and "label 1 is -2" in err
    assert not (tmp_path / "out").exists()


# --- bench export: every argument checked before anything is written ---------------

def export(tmp_path: Path, *extra: str) -> tuple[int, str]:
    code, _, err = invoke(["export", "nt-nn", *extra])
    return code, err


def test_export_refuses_a_folder_and_leaves_no_temp_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir").mkdir()
    code, err = export(tmp_path, "--onnx", str(tmp_path / "dir"))
    assert code == 1 and err.count("\n") == 1 and "is a folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]


def test_export_never_overwrites_without_force(tmp_path):
    (tmp_path / "results.csv").write_text("precious")
    code, err = export(tmp_path, "--onnx", str(tmp_path / "results.csv"), "--properties", "1")
    assert code == 1 and "exists; pass --force" in err
    assert (tmp_path / "results.csv").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]
    (tmp_path / "instances.csv").write_text("mine")
    code, err = export(tmp_path, "--onnx", str(tmp_path / "n.onnx"), "--properties", "1")
    assert code == 1 and "instances.csv exists" in err
    assert not (tmp_path / "n.onnx").exists()
    code, err = export(tmp_path, "--onnx", str(tmp_path / "n.onnx"), "--properties", "1",
                       "--force")
    assert code == 0, err
    assert (tmp_path / "instances.csv").read_text() != "mine"


@pytest.mark.parametrize("extra, words", [
    (["--properties", "100000"], "--properties must be between 1 and 10000"),
    (["--properties", "2", "--draw-seed", "-5"], "expected an integer >= 0"),
    (["--draw-seed", "3"], "--draw-seed draws the images of --properties"),
    (["--properties", "1", "--timeout", "1e300"], "--timeout must be above 0"),
])
def test_export_checks_its_arguments_before_writing(tmp_path, extra, words):
    code, err = export(tmp_path, "--onnx", str(tmp_path / "n.onnx"), *extra)
    assert code in (1, 2) and words in err
    assert list(tmp_path.iterdir()) == []


def test_export_counts_a_repeated_radius_once(tmp_path):
    code, err = export(tmp_path, "--onnx", str(tmp_path / "n.onnx"), "--properties", "2",
                       "--eps", "0", "0")
    assert code == 0, err
    rows = (tmp_path / "instances.csv").read_text().splitlines()
    assert len(rows) == len(set(rows)) == 2


def test_an_instance_timeout_beyond_the_alarm_is_refused(bench_dir, tmp_path):
    instances = copy_of(bench_dir, tmp_path)
    instances.write_text("net.onnx,p0.vnnlib,1e300\n")
    code, _, err = invoke(["vnncomp", str(instances), "--out", str(tmp_path / "out")])
    assert code == 1 and err.count("\n") == 1 and "timeout must be above 0" in err
