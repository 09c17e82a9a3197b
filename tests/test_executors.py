"""The Dask executors: the same records as in process, worker kills, hard time limits."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import csv_without_timings, fake_method, grid_methods, invoke, run_grid

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """Two local worker processes with nannies, as ``--executor local --workers 2`` (the
    tests give torch one thread per task, as that command does on two cores)."""
    from bench.executors import local_cluster
    local, client = local_cluster(2, dashboard=False)
    try:
        yield client
    finally:
        client.close()
        local.close()


def dask_grid(client, out, model_dir, methods, **options):
    from bench.executors import DaskExecutor
    from bench.runner import Runner, RunSpec
    spec = RunSpec(models=["tiny-a", "tiny-b"], methods=methods, eps=[0.1],
                   n=options.get("n", 24), out=out, batch_size=options.get("batch_size", 8),
                   model_dir=model_dir,
                   progress=False, time_limit=options.get("time_limit"),
                   executor=DaskExecutor(client, threads=1))
    return Runner(spec, echo=lambda line: None).run()


def records_without_timings(folder: Path) -> pd.DataFrame:
    """The records, sorted, ``seconds`` dropped."""
    rows = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    frame = pd.DataFrame(rows).drop(columns=["seconds"])
    return frame.sort_values(["model", "method", "eps", "sample"]).reset_index(drop=True)


def assert_same_records(first: Path, second: Path) -> None:
    """Equal records but for timings; bounds to 1e-12 relative (a worker runs torch and
    HiGHS on one thread, this process on two: sums may round differently)."""
    ours, theirs = records_without_timings(first), records_without_timings(second)
    pd.testing.assert_frame_equal(ours.drop(columns=["bound"]), theirs.drop(columns=["bound"]))
    pd.testing.assert_series_equal(ours["bound"], theirs["bound"], rtol=1e-12, atol=1e-12)


def shared_methods():
    """Plugins with shared work: SDP pair groups, and one MILP piece per batch that
    ``milp`` and ``milp-cex`` share; beside a plain verifier and attack."""
    from bench.registry import select
    from bench.runner import Method
    chosen = grid_methods(verifiers=("spectral",), attacks=("pgd",))
    for kind, name, options in [("verifier", "sdp", {}),
                                ("verifier", "milp", {"time_limit": 20.0}),
                                ("attack", "milp-cex", {"time_limit": 20.0})]:
        (info,) = select(kind, [name])
        chosen.append(Method(info, info.create(options)))
    return chosen


def test_dask_gives_the_records_of_an_in_process_run(tmp_path, model_dir, cluster,
                                                    monkeypatch):
    """Every record (timings aside) and both CSVs equal; each shared piece ran once. One
    batch in flight per worker: never more than two are running or waiting, and the
    pieces later batches take as inputs outlive the batches before them."""
    from bench import executors
    monkeypatch.setattr(executors, "BATCHES_IN_FLIGHT", 1)
    submitted, most = [], [0]
    plain_submit = executors.DaskExecutor._submit

    def counting_submit(self, function, task, name, *inputs):
        future = plain_submit(self, function, task, name, *inputs)
        if "-batch-" in name:
            most[0] = max(most[0], 1 + sum(not f.done() for f in submitted))
            submitted.append(future)
        return future

    monkeypatch.setattr(executors.DaskExecutor, "_submit", counting_submit)
    inproc = run_grid(tmp_path / "inprocess", model_dir, shared_methods(), n=12,
                      eps=(0.1,), batch_size=6)
    on_dask = dask_grid(cluster, tmp_path / "dask", model_dir, shared_methods(), n=12,
                        batch_size=6)
    assert len(submitted) == 2 * 2 * 5 and 1 <= most[0] <= 2
    assert_same_records(tmp_path / "inprocess", tmp_path / "dask")
    for ours, theirs in zip(csv_without_timings(tmp_path / "inprocess"),
                            csv_without_timings(tmp_path / "dask")):
        pd.testing.assert_frame_equal(ours, theirs)
    assert on_dask.computed_batches == inproc.computed_batches == 2 * 2 * 5
    stats = on_dask.solver_stats
    milp = stats[stats["method"] == "milp"]
    assert len(milp) == 2 * 12 and not milp.duplicated(["model", "sample"]).any()
    assert len(stats[stats["method"] == "sdp"]) == 2 * 45


class Sleepy:
    """A verifier that takes a while per batch (so a worker can be killed mid-task)."""

    name = "sleepy"

    def __repr__(self) -> str:
        return "Sleepy()"

    def bound(self, net, x, y, eps):
        time.sleep(0.25)
        return torch.full((len(y), net.num_classes), 1.0, dtype=torch.float64)


def test_a_worker_killed_mid_run_has_its_tasks_retried(tmp_path, model_dir, cluster):
    """SIGKILL one worker while the grid runs: the scheduler retries its task on the
    other (the nanny restarts it), and the CSVs equal an uninterrupted run's."""
    methods = lambda: grid_methods(verifiers=("spectral",), attacks=("pgd",)) + [  # noqa: E731
        fake_method(Sleepy())]
    run_grid(tmp_path / "clean", model_dir, methods(), n=24, eps=(0.1,), batch_size=8)
    pids = list(cluster.run(os.getpid).values())
    killed = []

    def kill_when_busy() -> None:
        records = tmp_path / "killed" / "records.jsonl"
        deadline = time.time() + 60
        while time.time() < deadline:
            if records.exists() and records.read_text().count("\n") >= 8:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.02)
    watcher = threading.Thread(target=kill_when_busy, daemon=True)
    watcher.start()
    dask_grid(cluster, tmp_path / "killed", model_dir, methods())
    watcher.join()
    assert killed, "the run ended before a worker could be killed"
    for clean, after in zip(csv_without_timings(tmp_path / "clean"),
                            csv_without_timings(tmp_path / "killed")):
        pd.testing.assert_frame_equal(clean, after)
    assert_same_records(tmp_path / "clean", tmp_path / "killed")


class Stuck:
    """A verifier stuck in one call that no signal interrupts (as a long C call)."""

    name = "stuck"

    def __repr__(self) -> str:
        return "Stuck()"

    def bound(self, net, x, y, eps):
        lock = threading.Lock()
        lock.acquire()
        lock.acquire(timeout=60)                 # blocks in C for a minute
        raise AssertionError("the executor did not stop this call")


def test_a_task_past_its_limit_is_recorded_as_timeout_and_the_rest_completes(
        tmp_path, model_dir, cluster):
    """Each stuck batch's worker is stopped at the limit (0.05 s x 8 samples) and the
    batch recorded as ``timeout``, without running again; every other cell is ``ok``.
    (Had the executor not stopped it, the stuck call would end after a minute with an
    AssertionError, recorded as ``error``, not ``timeout``.)"""
    result = dask_grid(cluster, tmp_path / "out", model_dir,
                       grid_methods(verifiers=("spectral",), attacks=("pgd",))
                       + [fake_method(Stuck())], n=8, time_limit=0.05)
    board = result.leaderboard.set_index(["model", "method"])
    assert set(board.loc[(slice(None), "stuck"), "status"]) == {"timeout"}
    others = board.drop(index="stuck", level="method")
    assert set(others["status"]) == {"ok"}
    rows = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text()
            .splitlines()]
    stuck = [r for r in rows if r["method"] == "stuck"]
    assert len(stuck) == 2 * 8 and {r["status"] for r in stuck} == {"timeout"}
    assert all("time limit of 0.4 s" in r["message"] for r in stuck)


def test_executor_options_are_checked(tmp_path):
    for argv, message in [(["--workers", "2"], "--workers is for --executor local"),
                          (["--executor", "dask"], "needs --scheduler"),
                          (["--scheduler", "tcp://x:1"], "--scheduler is for --executor dask")]:
        code, _, err = invoke(["run", "--models", "nt-nn", "--n", "2", "--verifiers",
                               "spectral", "--attacks", "fgsm", "--quiet", "--out",
                               str(tmp_path / "out"), *argv])
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_default_grid_on_two_local_workers_equals_in_process(tmp_path):
    """The default grid (every shipped network, every default plugin) on 200 images:
    ``--executor local --workers 2`` writes the CSVs and records of ``inprocess``."""
    common = ["run", "--n", "200", "--quiet"]
    code, _, err = invoke([*common, "--out", str(tmp_path / "inprocess")])
    assert code == 0, err
    code, _, err = invoke([*common, "--out", str(tmp_path / "local"), "--executor", "local",
                           "--workers", "2"])
    assert code == 0, err
    for ours, theirs in zip(csv_without_timings(tmp_path / "inprocess"),
                            csv_without_timings(tmp_path / "local")):
        pd.testing.assert_frame_equal(ours, theirs)
    assert_same_records(tmp_path / "inprocess", tmp_path / "local")


def test_vnncomp_instances_on_dask_answer_as_in_process(tmp_path, cluster):
    """``bench vnncomp`` with instances on the workers: the same answers as in process,
    a broken instance is ``error`` and the rest complete."""
    from bench.executors import DaskExecutor
    from bench.vnncomp.competition import run
    code, _, err = invoke(["export", "lp-nn", "--onnx", str(tmp_path / "lp-nn.onnx"),
                           "--properties", "1", "--eps", "0.1", "--timeout", "30"])
    assert code == 0, err
    (tmp_path / "broken.vnnlib").write_text("(declare-const X_0 Real)\n(assert (<= X_0")
    with open(tmp_path / "instances.csv", "a") as handle:
        handle.write("lp-nn.onnx,broken.vnnlib,30\n")
    quiet = lambda line: None  # noqa: E731
    inproc = run(tmp_path / "instances.csv", tmp_path / "inprocess", echo=quiet)
    on_dask = run(tmp_path / "instances.csv", tmp_path / "dask", echo=quiet,
                  executor=DaskExecutor(cluster, threads=1))
    assert [r["result"] for r in on_dask] == [r["result"] for r in inproc]
    assert inproc[-1]["result"] == "error" and "error" not in [r["result"] for r in inproc[:-1]]
    assert (tmp_path / "dask" / "results.csv").read_text().count("\n") == 3


def test_the_default_path_starts_no_cluster_and_no_process(tmp_path, model_dir, monkeypatch):
    """No ``--executor``: the grid runs in this process; any attempt to start a Dask
    client, cluster or child process fails the run."""
    import multiprocessing
    before = set(multiprocessing.active_children())      # the module's cluster, if up

    def refuse(*args, **kwargs):
        raise AssertionError("the in-process path started something")
    monkeypatch.setattr(distributed.Client, "__init__", refuse)
    monkeypatch.setattr(distributed.LocalCluster, "__init__", refuse)
    monkeypatch.setattr(multiprocessing.Process, "start", refuse)
    code, _, err = invoke(["run", "--model-dir", str(model_dir), "--models", "tiny-a",
                           "--n", "6", "--verifiers", "sdp,milp", "--attacks", "pgd,milp-cex",
                           "--quiet", "--out", str(tmp_path / "out")])
    assert code == 0, err
    assert set(multiprocessing.active_children()) <= before
