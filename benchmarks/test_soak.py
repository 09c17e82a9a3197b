"""Soak: back-to-back runs of the default grid keep memory flat and results identical.

``CERTBENCH_SOAK_RUNS`` runs (default 20) of every default verifier and attack on the
shipped networks, first 200 test images, each into a fresh folder, in one process,
after one warm-up run (lazy imports and first-use allocations; its peak is reported
too). Peak resident set size after the last run must be within 10% of that after the
first measured run, and every run's CSVs must equal the warm-up's (timings aside).
"""

from __future__ import annotations

import os
import resource

import pandas as pd

from bench.registry import select
from bench.runner import Method, Runner, RunSpec
from models import shipped_names
from tests.conftest import csv_without_timings

RUNS = int(os.environ.get("CERTBENCH_SOAK_RUNS", "20"))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def test_soak_default_grid(benchmark, tmp_path, report):
    peaks, currents = [], []

    def one_run(index: int) -> None:
        infos = select("verifier", None) + select("attack", None)
        spec = RunSpec(models=shipped_names(), methods=[Method(i, i.create()) for i in infos],
                       eps=[0.1], n=200, out=tmp_path / f"run{index}", progress=False)
        Runner(spec, echo=lambda line: None).run()
        peaks.append(peak_rss_mib())
        currents.append(current_rss_mib())

    one_run(0)                                   # warm-up
    counter = iter(range(1, RUNS + 1))
    benchmark.group = "soak"
    benchmark.pedantic(lambda: one_run(next(counter)), rounds=RUNS, iterations=1)
    first = csv_without_timings(tmp_path / "run0")
    for index in range(1, RUNS + 1):
        for a, b in zip(first, csv_without_timings(tmp_path / f"run{index}")):
            pd.testing.assert_frame_equal(a, b)
    growth = (peaks[-1] - peaks[1]) / peaks[1]
    benchmark.extra_info.update(peak_rss_mib=peaks, current_rss_mib=currents, growth=growth)
    report(f"soak: {RUNS} runs of the default grid on 200 samples after a warm-up; peak RSS "
           f"{peaks[0]:.0f} MiB after the warm-up, {peaks[1]:.0f} -> {peaks[-1]:.0f} MiB over "
           f"the measured runs ({growth:+.1%}); current RSS {currents[1]:.0f} -> "
           f"{currents[-1]:.0f} MiB; CSVs identical")
    assert growth < 0.10
