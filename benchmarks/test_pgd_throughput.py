"""PGD throughput on the 784-500-10 network: our Foolbox path against a plain-torch loop.

Both do the same work: random start in the ball, ``STEPS`` signed-gradient steps on
cross-entropy, projection into the ball and the box, batch of ``BATCH`` test images,
one restart. Throughput is sample-steps per second.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import models
from attacks.pgd import PGD
from bench import data

BATCH, STEPS, EPS = 1000, 40, 0.1
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def setup():
    net, _ = models.load("nt-nn")
    images, labels = data.mnist_test(BATCH)
    return net, data.to_tensor(images), torch.from_numpy(labels)


def plain_torch_pgd(net, x, y, eps=EPS, steps=STEPS, step=0.1 * EPS):
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(net(x_adv), y, reduction="sum")
        grad, = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv


def _measure(benchmark, label, fn):
    torch.manual_seed(0)
    benchmark.group = "pgd-throughput"
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    if benchmark.stats is not None:
        TIMES[label] = benchmark.stats.stats.mean
        benchmark.extra_info["sample_steps_per_second"] = BATCH * STEPS / TIMES[label]


def test_pgd_plain_torch(benchmark, setup):
    net, x, y = setup
    _measure(benchmark, "plain", lambda: plain_torch_pgd(net, x, y))


def test_pgd_foolbox_plugin(benchmark, setup, report):
    net, x, y = setup
    attack = PGD(steps=STEPS, rel_stepsize=0.1, restarts=1)
    _measure(benchmark, "ours", lambda: attack.perturb(net, x, y, EPS))
    if {"plain", "ours"} <= TIMES.keys():
        plain, ours = (BATCH * STEPS / TIMES[k] for k in ("plain", "ours"))
        report(f"PGD sample-steps/s: ours {ours:,.0f}, plain torch {plain:,.0f}, "
               f"ours/plain = {ours / plain:.2f}")
