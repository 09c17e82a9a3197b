"""Throughput of the bound-propagation verifiers on the 784-500-10 network, all ten classes.

``lp``, ``ibp`` and ``crown`` on a batch of 1,000 test images (samples per second,
target for ``lp``: >= 1,000/s on two cores); ``lp-exact`` in seconds per sample.
"""

from __future__ import annotations

import pytest
import torch

import models
from bench import data
from verifiers.linear.crown import Crown
from verifiers.linear.ibp import IBP
from verifiers.linear.lp import LP
from verifiers.mip.lp_exact import LPExact

BATCH = 1000


@pytest.fixture(scope="module")
def setup():
    net, _ = models.load("nt-nn")
    images, labels = data.mnist_test(BATCH)
    return net, data.to_tensor(images, torch.float64), torch.from_numpy(labels)


@pytest.mark.parametrize("verifier", [LP(), IBP(), Crown()], ids=lambda v: v.name)
def test_samples_per_second(benchmark, setup, report, verifier):
    net, x, y = setup
    benchmark.group = "bound-propagation-784-500-10"

    def run():
        with torch.no_grad():
            return verifier.bound(net, x, y, 0.1)

    upper = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert upper.shape == (BATCH, 10)
    if benchmark.stats is not None:
        rate = BATCH / benchmark.stats.stats.mean
        benchmark.extra_info["samples_per_second"] = rate
        report(f"{verifier.name}: {rate:,.0f} samples/s (batch {BATCH}, 10 classes, float64)")


def test_lp_exact_seconds_per_sample(benchmark, setup, report):
    """Measures only: seconds per sample of ``lp-exact`` (docs/verifiers.md: about 1 s);
    its bounds are checked against ``lp`` and brute force in tests/test_lp_family.py."""
    net, x, y = setup
    count = 5
    benchmark.group = "lp-exact-784-500-10"
    benchmark.pedantic(lambda: LPExact().bound(net, x[:count], y[:count], 0.1), rounds=1)
    if benchmark.stats is not None:
        per_sample = benchmark.stats.stats.mean / count
        benchmark.extra_info["seconds_per_sample"] = per_sample
        report(f"lp-exact: {per_sample:.2f} s per sample (9 LPs each, HiGHS, warm-started)")
