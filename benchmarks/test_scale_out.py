"""Scale-out: the default grid on 1,000 images and the 45 SDP pairs of a shipped network,
in process and on 1 and 2 local Dask workers, in one run; speed-ups as ratios.

A worker here runs torch on one thread (``--worker-threads 1``), so 1 and 2 workers
use one and two cores: the ratio is the scaling of the distribution itself. The
in-process run (torch on both cores) is the baseline a user on this machine has.

Each grid run writes to a fresh folder with its own plugin caches, so nothing solved
by one configuration is reused by the next. The grid's wall time includes starting
the local cluster (what a user waits for); the pairs' time does not (the cluster is
up, and each worker has imported torch and certbench, before the clock starts).
"""

from __future__ import annotations

import time

import pytest

from bench.executors import DaskExecutor, InProcess, executor
from bench.tasks import SharedTask, reference
from tests.conftest import invoke

SECONDS: dict[str, float] = {}
GRID_N = 1000
PAIRS_NETWORK = "sdp-nn"
TARGET_SPEEDUP = 1.7


@pytest.mark.parametrize("where", ["inprocess", "local-1", "local-2"])
def test_default_grid(benchmark, report, tmp_path, where):
    """``bench run --n 1000`` (every shipped network, every default plugin)."""
    argv = ["run", "--n", str(GRID_N), "--quiet", "--out", str(tmp_path / where)]
    if where != "inprocess":
        argv += ["--executor", "local", "--workers", where.split("-")[1],
                 "--worker-threads", "1"]

    def run() -> float:
        began = time.perf_counter()
        code, _, err = invoke(argv)
        assert code == 0, err
        return time.perf_counter() - began

    benchmark.group = "scale-out-grid"
    SECONDS[f"grid {where}"] = benchmark.pedantic(run, rounds=1, iterations=1)
    _report_pair(report, "grid", f"default grid on {GRID_N} images")


@pytest.mark.parametrize("workers", [1, 2])
def test_sdp_pairs(benchmark, report, tmp_path, workers):
    """The shared pieces of ``sdp`` (one per worker) on one shipped network."""
    from verifiers.sdp.sdp import SDP

    ref, loaded = reference(PAIRS_NETWORK, None)
    verifier = SDP()
    pieces = {f"{loaded.identity}/{key}": SharedTask(ref, f"{loaded.identity}/{key}", work)
              for key, work in verifier.shared_work(loaded.net, None, None, 0.0,
                                                    workers).items()}
    assert len(pieces) == workers
    with executor("local", workers=workers, threads=1, echo=lambda line: None) as chosen:
        assert isinstance(chosen, DaskExecutor)
        chosen.client.wait_for_workers(workers)
        chosen.client.run(_warm_up)

        def solve() -> float:
            outcomes = []
            began = time.perf_counter()
            chosen.execute(pieces, [], lambda *_: None, lambda task, o: outcomes.append(o))
            seconds = time.perf_counter() - began
            assert len(outcomes) == workers and {o.status for o in outcomes} == {"ok"}
            return seconds

        benchmark.group = "scale-out-sdp-pairs"
        SECONDS[f"pairs local-{workers}"] = benchmark.pedantic(solve, rounds=1, iterations=1)
    if workers == 2:
        alone = {f"{loaded.identity}/{key}": SharedTask(ref, key, work) for key, work in
                 verifier.shared_work(loaded.net, None, None, 0.0, 1).items()}
        began = time.perf_counter()
        InProcess().execute(alone, [], lambda *_: None, lambda *_: None)
        SECONDS["pairs inprocess"] = time.perf_counter() - began
    _report_pair(report, "pairs", f"45 SDP pairs of {PAIRS_NETWORK}")


def _warm_up() -> None:
    """Import what the pieces run (torch, the SDP solver) and load the network."""
    from bench.tasks import reference as load_reference

    load_reference(PAIRS_NETWORK, None)


def _report_pair(report, kind: str, what: str) -> None:
    """Once 1 and 2 workers are measured: the speed-up, against the target."""
    one, two = SECONDS.get(f"{kind} local-1"), SECONDS.get(f"{kind} local-2")
    if one is None or two is None:
        return
    line = (f"{what}: 1 worker {one:.1f} s, 2 workers {two:.1f} s, speed-up "
            f"{one / two:.2f}x (target >= {TARGET_SPEEDUP}x)")
    inproc = SECONDS.get(f"{kind} inprocess")
    if inproc is not None:
        line += f"; in process {inproc:.1f} s ({inproc / two:.2f}x the 2-worker time)"
    report(line)
