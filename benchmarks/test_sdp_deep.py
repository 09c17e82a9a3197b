"""``sdp-deep`` on a foreign network (the NeurIPS 2018 setting): certified error beside
``lp``, ``crown``, ``alpha-crown``, the ``ensemble`` attack and MILP's exact error, with
seconds per sample.

Network: ``pgd-2x200`` (784-200-200-10, PGD adversarial training at eps 0.1, trained for
no certificate; trained into ``$CERTBENCH_DEEPNETS`` or ``~/.cache/certbench/deepnets``
on first use, about 13 minutes on two cores). Images: the first ``BENCH_IMAGES``
(default 100) test images at eps ``BENCH_EPS`` (default 0.1). ``sdp-deep`` runs one
sample at a time with its defaults (the interior-point backend deciding ``max <= 0``;
``BENCH_SDP_BACKEND`` and ``BENCH_SDP_ITERATIONS`` override them); MILP
(HiGHS) gets ``BENCH_MILP_LIMIT`` seconds per sample (default 5). Where MILP stays
undecided, the exact error is bracketed: a sample is non-robust if ``ensemble`` (AutoAttack
style, its defaults) or MILP breaks it, and robust if any verifier or MILP certifies it.
Per-sample rows go to ``$BENCH_OUT`` (default ``sdp_deep_pgd.csv`` in the working folder)
as they are produced.

Soundness is checked on the way: no verifier may certify a sample MILP or the attack
breaks, and ``sdp-deep`` is never above ``lp`` with the same bounds.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import torch

from attacks.ensemble import Ensemble
from bench import data
from bench.contract import margins
from bench.training.trainer import train
from models import load
from verifiers.linear.alpha_crown import AlphaCrown
from verifiers.linear.crown import Crown
from verifiers.linear.lp import LP
from verifiers.mip.sample_solves import solve_samples
from verifiers.sdp_deep.sdp_deep import SDPDeep

NETWORK = "pgd-2x200"


def _network():
    folder = Path(os.environ.get("CERTBENCH_DEEPNETS",
                                 Path.home() / ".cache" / "certbench" / "deepnets"))
    if not (folder / f"{NETWORK}.safetensors").exists():
        train(NETWORK, out_dir=folder)
    return load(NETWORK, folder)[0]


def test_sdp_deep_on_a_pgd_trained_network(benchmark, report):
    count = int(os.environ.get("BENCH_IMAGES", "100"))
    iterations = int(os.environ["BENCH_SDP_ITERATIONS"]) \
        if os.environ.get("BENCH_SDP_ITERATIONS") else None
    backend = os.environ.get("BENCH_SDP_BACKEND", "ipm")
    limit = float(os.environ.get("BENCH_MILP_LIMIT", "5"))
    eps = float(os.environ.get("BENCH_EPS", "0.1"))
    out = Path(os.environ.get("BENCH_OUT", "sdp_deep_pgd.csv"))
    net = _network()
    images, labels = data.mnist_test(count)
    x, y = data.to_tensor(images, torch.float64), torch.from_numpy(labels)
    linear = {}
    seconds = {}
    for verifier in (LP(), Crown(), AlphaCrown()):
        began = time.perf_counter()
        linear[verifier.name] = verifier.bound(net, x, y, eps).detach()
        seconds[verifier.name] = (time.perf_counter() - began) / count

    deep = SDPDeep(backend=backend, iterations=iterations, chunk=1)
    rows = []

    def run_sdp() -> torch.Tensor:
        bounds = []
        with out.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sample", "label", "lp", "crown", "alpha_crown", "sdp_deep",
                             "sdp_seconds"])
            for n in range(count):
                began = time.perf_counter()
                upper = deep.bound(net, x[n:n + 1], y[n:n + 1], eps)
                spent = time.perf_counter() - began
                bounds.append(upper)
                row = [n, int(y[n])] + [float(linear[k][n].amax()) for k in
                                        ("lp", "crown", "alpha-crown")] \
                    + [float(upper[0].amax()), spent]
                rows.append(row)
                writer.writerow(row)
                handle.flush()
        return torch.cat(bounds)

    benchmark.group = "sdp-deep"
    sdp = benchmark.pedantic(run_sdp, rounds=1, iterations=1)
    seconds["sdp-deep"] = benchmark.stats.stats.mean / count

    began = time.perf_counter()
    verdicts = solve_samples(net, x, y, eps, time_limit=limit, clip=True, cache=None)
    seconds["milp"] = (time.perf_counter() - began) / count
    broken = torch.tensor([v.verdict == "broken" for v in verdicts])
    decided = torch.tensor([v.verdict in ("broken", "certified") for v in verdicts])
    began = time.perf_counter()
    points = Ensemble().perturb(net, x.float(), y, eps)
    seconds["ensemble"] = (time.perf_counter() - began) / count
    with torch.no_grad():
        attacked = margins(net.float64_copy()(points.double()), y).amax(dim=1) >= 0
    non_robust = broken | attacked
    robust = decided & ~broken
    for bound in (*linear.values(), sdp):
        robust |= bound.amax(dim=1) < 0
    assert not (robust & non_robust).any(), "a sample is both certified and broken"
    exact_low, exact_high = float(non_robust.double().mean()), float((~robust).double().mean())

    finite = torch.isfinite(linear["lp"])
    assert (sdp[finite] <= linear["lp"][finite] + 1e-9).all()
    errors = {name: float((bound.amax(dim=1) >= 0).double().mean())
              for name, bound in {**linear, "sdp-deep": sdp}.items()}
    for name, bound in {**linear, "sdp-deep": sdp}.items():
        assert not ((bound.amax(dim=1) < 0) & non_robust).any(), \
            f"{name} certified a broken sample"
    improved = float((sdp.amax(dim=1) < linear["lp"].amax(dim=1) - 1e-9).double().mean())
    margin_gain = float((linear["lp"].amax(dim=1) - sdp.amax(dim=1)).mean())
    benchmark.extra_info.update(**{f"{k}_error": v for k, v in errors.items()},
                                **{f"{k}_s": v for k, v in seconds.items()},
                                milp_broken=int(broken.sum()), milp_decided=int(decided.sum()),
                                attack_broken=int(attacked.sum()),
                                exact_error_low=exact_low, exact_error_high=exact_high,
                                sdp_improved_fraction=improved, mean_gain=margin_gain)
    report(f"sdp-deep on {NETWORK}, first {count} images, eps {eps}: certified error "
           + ", ".join(f"{k} {v:.2f}" for k, v in errors.items())
           + f"; MILP ({limit:.0f} s) decided {int(decided.sum())}, broke {int(broken.sum())};"
           f" ensemble broke {int(attacked.sum())}; exact error in [{exact_low:.2f}, "
           f"{exact_high:.2f}]; sdp-deep {seconds['sdp-deep']:.1f} s per sample ({deep!r}), "
           f"below lp on {100 * improved:.0f}% of samples by {margin_gain:.3f} on average")
