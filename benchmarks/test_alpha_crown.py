"""alpha-CROWN against CROWN and against the exact LP it approaches (one hidden layer):
certified error and seconds per sample on the first 100 test images of every shipped
network at eps 0.1, and the mean bound gap to the exact LP."""

from __future__ import annotations

import time

import pytest
import torch

import models
from bench import data
from verifiers.linear.alpha_crown import AlphaCrown
from verifiers.linear.crown import Crown
from verifiers.mip.lp_exact import LPExact

COUNT = 100
EPS = 0.1


def _timed(verifier, net, x, y) -> tuple[torch.Tensor, float]:
    began = time.perf_counter()
    upper = verifier.bound(net, x, y, EPS)
    return upper, (time.perf_counter() - began) / len(y)


@pytest.mark.parametrize("name", models.shipped_names())
def test_alpha_crown_against_crown_and_the_exact_lp(benchmark, report, name):
    net, _ = models.load(name)
    images, labels = data.mnist_test(COUNT)
    x, y = data.to_tensor(images, torch.float64), torch.from_numpy(labels)
    crown, crown_s = _timed(Crown(), net, x, y)
    exact, exact_s = _timed(LPExact(), net, x, y)

    benchmark.group = "alpha-crown"
    alpha = benchmark.pedantic(lambda: AlphaCrown().bound(net, x, y, EPS), rounds=1,
                               iterations=1)
    alpha_s = benchmark.stats.stats.mean / COUNT
    finite = torch.isfinite(crown)
    assert (alpha[finite] <= crown[finite]).all()
    assert (alpha[finite] >= exact[finite] - 1e-6).all()
    errors = {k: float((u.amax(dim=1) >= 0).double().mean())
              for k, u in (("crown", crown), ("alpha", alpha), ("lp_exact", exact))}
    closed = float(((crown - alpha)[finite]).sum() / ((crown - exact)[finite]).sum())
    benchmark.extra_info.update(**{f"{k}_error": v for k, v in errors.items()},
                                crown_s=crown_s, alpha_s=alpha_s, lp_exact_s=exact_s,
                                gap_closed=closed)
    report(f"alpha-crown on {name}: certified error crown {errors['crown']:.2f} / "
           f"alpha {errors['alpha']:.2f} / exact LP {errors['lp_exact']:.2f}; it closes "
           f"{100 * closed:.0f}% of CROWN's gap to the exact LP at {alpha_s * 1e3:.1f} ms "
           f"per sample (CROWN {crown_s * 1e3:.2f} ms, exact LP {exact_s:.2f} s)")
