"""Faults: failing plugins, time limits, kills mid-run, concurrent runs, torn files."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from bench.records import RecordsError, RecordStore
from tests.conftest import csv_without_timings, fake_method, grid_methods, invoke, run_grid


class Raises:
    name = "raises"

    def bound(self, net, x, y, eps):
        raise RuntimeError("solver exploded")


class WrongShape:
    name = "wrong-shape"

    def bound(self, net, x, y, eps):
        return torch.zeros(len(y), 3, dtype=torch.float64)


class NaNBound:
    name = "nan-bound"

    def bound(self, net, x, y, eps):
        return torch.full((len(y), net.num_classes), float("nan"), dtype=torch.float64)


class NaNAttack:
    name = "nan-attack"

    def perturb(self, net, x, y, eps):
        return torch.full_like(x, float("nan"))


class Slow:
    name = "slow"

    def bound(self, net, x, y, eps):
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline:
            pass
        raise AssertionError("the time limit did not stop this call")


def test_faulty_plugins_are_recorded_and_the_grid_completes(tmp_path, model_dir):
    methods = grid_methods(attacks=("pgd",)) + [
        fake_method(Raises()), fake_method(WrongShape()), fake_method(NaNBound()),
        fake_method(NaNAttack(), kind="attack")]
    result = run_grid(tmp_path, model_dir, methods=methods, n=10, eps=(0.1,))
    board = result.leaderboard.set_index(["model", "method"])
    for name in ("raises", "wrong-shape", "nan-bound", "nan-attack"):
        assert (board.xs(name, level="method")["status"] == "error").all(), name
    assert board.loc[("tiny-a", "raises"), "error"] == 1.0      # failed = not certified
    assert board.loc[("tiny-a", "nan-attack"), "error"] == 0.0  # failed = not broken
    assert (board.xs("spectral", level="method")["status"] == "ok").all()
    records = RecordStore(tmp_path).load()
    messages = {r["message"] for r in records.values() if r["method"] == "raises"}
    assert messages == {"RuntimeError: solver exploded"}


def test_time_limit_records_timeout_and_goes_on(tmp_path, model_dir):
    methods = grid_methods(verifiers=("spectral",), attacks=()) + [fake_method(Slow())]
    began = time.perf_counter()
    result = run_grid(tmp_path, model_dir, methods=methods, n=4, eps=(0.1,), batch_size=4,
                      time_limit=0.1, models=("tiny-a",))
    assert time.perf_counter() - began < 10
    board = result.leaderboard.set_index("method")
    assert board.loc["slow", "status"] == "timeout" and board.loc["spectral", "status"] == "ok"
    statuses = {r["status"] for r in RecordStore(tmp_path).load().values()
                if r["method"] == "slow"}
    assert statuses == {"timeout"}


def test_second_writer_is_refused(tmp_path):
    with RecordStore(tmp_path):
        with pytest.raises(RecordsError, match="another run"):
            with RecordStore(tmp_path):
                pass


def test_corrupt_or_foreign_records_are_refused(tmp_path):
    (tmp_path / "records.jsonl").write_text('{"foo": 1}\n')
    with pytest.raises(RecordsError, match="not a certbench record"):
        RecordStore(tmp_path).load()
    (tmp_path / "records.jsonl").write_text('garbage\n{"foo": 1}\n')
    with pytest.raises(RecordsError, match="corrupt"):
        RecordStore(tmp_path).load()


def test_atomic_csv_write_leaves_the_old_file_on_failure(tmp_path):
    from models.files import atomic_write
    target = tmp_path / "table.csv"
    target.write_text("old\n")

    def explode(handle):
        handle.write("half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        atomic_write(target, explode, binary=False)
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["table.csv"]


CLI_RUN = ["run", "--verifiers", "spectral,frobenius", "--attacks", "fgsm,pgd", "--models",
           "nt-nn", "--n", "48",
           "--batch-size", "10", "--eps", "0.05", "0.1", "--set", "pgd.restarts=2", "--quiet"]


def _cli(out, *extra):
    return [sys.executable, "-m", "bench", *CLI_RUN, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """The uninterrupted run both kills are compared with (in this process)."""
    clean = tmp_path_factory.mktemp("clean")
    code, _, err = invoke([*CLI_RUN, "--out", str(clean)])
    assert code == 0, err
    return clean


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_run_resumes_to_the_same_leaderboard(tmp_path, clean_run, sig):
    clean, killed = clean_run, tmp_path / "killed"
    # as from a terminal: a shell that started this suite in the background left SIGINT
    # ignored, which the child would inherit; a handled one is reset to the default at exec
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(_cli(killed), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
    finally:
        signal.signal(signal.SIGINT, previous)
    records = killed / "records.jsonl"
    wait_for = random.Random(int(sig)).randint(40, 260)        # records seen (of 384) before
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None:
        if records.exists() and records.read_bytes().count(b"\n") >= wait_for:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run finished before it could be interrupted"
    process.send_signal(sig)
    process.wait(timeout=60)
    assert process.returncode != 0
    assert not (killed / "leaderboard.csv").exists()
    code, _, err = invoke([*CLI_RUN, "--out", str(killed)])       # resumed here
    assert code == 0, err
    for a, b in zip(csv_without_timings(clean), csv_without_timings(killed)):
        pd.testing.assert_frame_equal(a, b)


class DeclaresBadly:
    """A plugin whose ``shared_work`` raises while the run is planned."""

    name = "declares-badly"

    def __repr__(self):
        return "DeclaresBadly()"

    def shared_work(self, net, x, y, eps, workers):
        raise RuntimeError("cannot split")

    def bound(self, net, x, y, eps):
        raise AssertionError("never called: its shared work failed")


def test_shared_work_that_fails_is_an_error_of_its_batches(tmp_path, model_dir):
    result = run_grid(tmp_path, model_dir, grid_methods(verifiers=("spectral",),
                                                        attacks=("fgsm",))
                      + [fake_method(DeclaresBadly())], n=8, eps=(0.1,))
    board = result.leaderboard.set_index("method")
    assert set(board.loc["declares-badly", "status"]) == {"error"}
    assert set(board.drop(index="declares-badly")["status"]) == {"ok"}
    rows = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert all("shared_work: RuntimeError: cannot split" in r["message"] for r in rows
               if r["method"] == "declares-badly")
