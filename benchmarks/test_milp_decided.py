"""How many of the first 100 test images ``milp`` decides at eps = 0.1 within its
per-sample time limit (60 s), and the median seconds, for every shipped network.

The counts are a measurement (docs/paper-reproduction.md has the ground truth they feed);
the assertions check that every verdict agrees with its own interval."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from bench import data
from verifiers.mip.sample_solves import solve_samples

COUNT = 100


@pytest.mark.parametrize("name", models.shipped_names())
def test_milp_decides(benchmark, report, name):
    net, _ = models.load(name)
    images, labels = data.mnist_test(COUNT)
    x, y = data.to_tensor(images, torch.float64), torch.from_numpy(labels)

    def run():
        return solve_samples(net, x, y, 0.1, time_limit=60.0, clip=True, cache=None)

    benchmark.group = "milp-first-100"
    verdicts = benchmark.pedantic(run, rounds=1, iterations=1)
    counts = {v: sum(1 for r in verdicts if r.verdict == v)
              for v in ("certified", "broken", "unknown")}
    median = float(np.median([r.seconds for r in verdicts]))
    by_milp = sum(1 for r in verdicts if r.milps > 0)
    benchmark.extra_info.update(median_seconds=median, by_milp=by_milp, **counts)
    report(f"milp on {name}, first {COUNT} images, eps 0.1, 60 s limit: "
           f"{counts['certified'] + counts['broken']} decided ({counts['certified']} certified, "
           f"{counts['broken']} broken, {counts['unknown']} unknown), {by_milp} needed branch "
           f"and bound, median {median:.2f} s per sample")
    for r in verdicts:
        assert r.lower <= float(np.max(r.upper)) + 1e-6
        assert (r.verdict == "certified") == (float(np.max(r.upper)) < 0)
        assert (r.verdict == "broken") == (r.lower >= 0 and r.witness is not None)
