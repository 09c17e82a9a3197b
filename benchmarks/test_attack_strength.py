"""Attack strength and speed, in one run.

* ``apgd-ce`` (ours) against torchattacks 3.5.1's ``APGD`` (the port of the reference
  code) on the first 1,000 test images of AT-NN at eps = 0.1, both with 100 steps and
  one run: success rate (judged as the harness judges: projected into the ball and
  the box, float64 margins) and samples per second. torchattacks pins
  ``requests~=2.25.1`` and pulls torchvision (which replaces torch with a CUDA
  build), so it is not a dependency of certbench; install it without them to run
  this comparison: ``pip install --no-deps torchattacks==3.5.1``.
* ``ensemble`` on the first 500 test images of every shipped network at eps = 0.1,
  beside the figures an independent PGD (cross-entropy and margin losses, 10 restarts
  of 100 steps, decaying step) reached on the same images (quoted from issue 14).

    OMP_NUM_THREADS=2 python -m pytest benchmarks/test_attack_strength.py --benchmark-enable
"""

from __future__ import annotations

import time

import pytest
import torch

import models
from attacks.apgd_ce import APGDCrossEntropy
from attacks.ensemble import Ensemble
from bench import data
from bench.contract import margins, project

EPS = 0.1
COUNT_APGD = 1000
COUNT_ENSEMBLE = 500
INDEPENDENT_PGD = {"sdp-nn": 0.196, "fro-nn": 0.616, "spe-nn": 0.438, "at-nn": 0.214,
                   "lp-nn": 0.192}


def _images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = data.mnist_test(count)
    return data.to_tensor(images, torch.float32), torch.from_numpy(labels)


def success_rate(net, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """The harness's verdict: fraction whose projected point has a margin >= 0."""
    with torch.no_grad():
        worst = margins(net.float64_copy()(project(x_adv, x, EPS).double()), y).amax(dim=1)
    return float((worst >= 0).double().mean())


def _torchattacks_apgd(net, x, y):
    """torchattacks expects images ``(N, C, H, W)``: the network gets a flattening front."""
    torchattacks = pytest.importorskip("torchattacks")
    model = torch.nn.Sequential(torch.nn.Flatten(), net).eval()
    attack = torchattacks.APGD(model, norm="Linf", eps=EPS, steps=100, n_restarts=1, loss="ce",
                               seed=0)
    return attack(x.view(-1, 1, 28, 28), y).reshape(len(x), -1)


def _ours(net, x, y):
    return APGDCrossEntropy(steps=100, restarts=1).perturb(net, x, y, EPS)


def _timed(run, net, x, y) -> tuple[torch.Tensor, float]:
    torch.manual_seed(0)
    start = time.perf_counter()
    x_adv = run(net, x, y)
    return x_adv.detach().float(), COUNT_APGD / (time.perf_counter() - start)


def test_apgd_ce_on_at_nn(benchmark, report):
    """Ours against torchattacks in one run (docs/attacks.md quotes 19.5% at 408
    samples/s against 19.1% at 282): ours breaks at least 18.5%, and where torchattacks
    is installed, at least as much as it less one point, and at least as fast."""
    net, _ = models.load("at-nn")
    x, y = _images(COUNT_APGD)
    benchmark.group = "apgd-ce-at-nn"
    x_adv, speed = benchmark.pedantic(_timed, args=(_ours, net, x, y), rounds=1, iterations=1)
    rate = success_rate(net, x_adv, x, y)
    benchmark.extra_info.update(success_rate=rate, samples_per_second=speed)
    report(f"APGD-CE (certbench) on AT-NN, first {COUNT_APGD} images, eps {EPS}: "
           f"{100 * rate:.1f}% broken, {speed:.1f} samples/s")
    assert rate >= 0.185
    try:
        import torchattacks  # noqa: F401
    except ImportError:
        report("APGD-CE: torchattacks not installed (pip install --no-deps "
               "torchattacks==3.5.1), no comparison")
        return
    their_adv, their_speed = _timed(_torchattacks_apgd, net, x, y)
    theirs = success_rate(net, their_adv, x, y)
    report(f"APGD-CE certbench / torchattacks: success {100 * rate:.1f}% / "
           f"{100 * theirs:.1f}%, speed ratio {speed / their_speed:.2f}x")
    assert rate >= theirs - 0.01 and speed >= their_speed


@pytest.mark.parametrize("name", models.shipped_names())
def test_ensemble_first_500(benchmark, report, name):
    net, _ = models.load(name)
    x, y = _images(COUNT_ENSEMBLE)
    torch.manual_seed(0)
    benchmark.group = "ensemble-first-500"
    x_adv = benchmark.pedantic(Ensemble().perturb, args=(net, x, y, EPS), rounds=1,
                               iterations=1)
    rate = success_rate(net, x_adv, x, y)
    reference = INDEPENDENT_PGD.get(name)
    benchmark.extra_info.update(success_rate=rate, independent_pgd=reference)
    versus = "" if reference is None else f" (independent PGD: {100 * reference:.1f}%)"
    report(f"ensemble on {name}, first {COUNT_ENSEMBLE} images, eps {EPS}: "
           f"{100 * rate:.1f}% broken{versus}")
    if reference is not None:
        assert rate >= reference, f"ensemble weaker than the independent PGD on {name}"
