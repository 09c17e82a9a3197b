"""A self-made VNN-COMP-style benchmark for the complete verifiers, in one run.

Networks: 784-256x{2,4,6}-10 trained here normally and adversarially (recipes
``fc-Dx256`` and ``fc-Dx256-at``; trained into ``$CERTBENCH_DEEPNETS`` or
``~/.cache/certbench/deepnets`` on first use, about ten minutes on two cores).
Properties: robustness of test images drawn at random (seed 2021, as the competition's
generators draw them) at eps 0.03 and 0.05, written as ONNX + VNNLIB + instances.csv
with ``bench export``'s code; timeouts 120 s (2 layers) and 300 s (4 and 6 layers).

Per instance, in one run: ``crown`` (refuted or not), ``milp`` (HiGHS on the big-M
encoding) and ``bench vnncomp``'s portfolio (attack, ibp/crown/lp, then ``bab``),
each under the instance's timeout. Figures: decided counts, median seconds, nodes.
Every pair of decisive verdicts must agree and every ``sat`` is re-checked, so an
incorrect verdict fails the benchmark.

Scale with the environment: ``BENCH_PROPERTIES`` (default 30 per radius),
``BENCH_TIMEOUT_SCALE`` (default 1.0), ``BENCH_NETWORKS`` (comma-separated recipe names),
``BENCH_RADII`` (comma-separated, default 0.03,0.05). Shipped networks may be named too
(the open-world issue's benchmark: ``BENCH_NETWORKS=lp-nn,sdp-nn,fc-2x256``,
``BENCH_RADII=0.02,0.05``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.contract import refuted
from bench.data import mnist_test
from bench.properties import read_vnnlib
from bench.training.trainer import train
from bench.vnncomp.competition import draw_images, read_instances, run, write_instances
from models import load, shipped_names
from models.onnx_import import export_onnx
from verifiers.linear.crown import Crown
from verifiers.mip.sample_solves import solve_samples

NETWORKS = [f"fc-{d}x256{s}" for s in ("", "-at") for d in (2, 4, 6)]
RADII = [0.03, 0.05]
DRAW_SEED = 2021


def _setting() -> tuple[list[str], int, float, list[float]]:
    names, radii = os.environ.get("BENCH_NETWORKS"), os.environ.get("BENCH_RADII")
    return ([n.strip() for n in names.split(",")] if names else NETWORKS,
            int(os.environ.get("BENCH_PROPERTIES", "30")),
            float(os.environ.get("BENCH_TIMEOUT_SCALE", "1.0")),
            [float(r) for r in radii.split(",")] if radii else RADII)


def _network(name: str):
    """A shipped network by name, or a ``fc-*`` recipe (trained on first use)."""
    if name in shipped_names():
        return load(name)
    folder = Path(os.environ.get("CERTBENCH_DEEPNETS",
                                 Path.home() / ".cache" / "certbench" / "deepnets"))
    if not (folder / f"{name}.safetensors").exists():
        train(name, out_dir=folder)
    return load(name, folder)


def _milp_verdict(net, prop, label: int, eps: float, limit: float
                  ) -> tuple[str, float, int]:
    """``milp`` on a robustness property, recovering the image as the box's centre where
    the box is not clipped (the exported properties are ``clip(x ± eps, 0, 1)``)."""
    x = torch.where(prop.lo <= 0, prop.hi - eps, torch.where(prop.hi >= 1, prop.lo + eps,
                                                             (prop.lo + prop.hi) / 2))
    began = time.perf_counter()
    verdict = solve_samples(net, x[None], torch.tensor([label]), eps, time_limit=limit,
                            clip=True, cache=None)[0]
    answer = {"certified": "unsat", "broken": "sat"}.get(verdict.verdict, "unknown")
    return answer, time.perf_counter() - began, verdict.nodes


@pytest.mark.parametrize("name", _setting()[0])
def test_complete_verifiers_decide(benchmark, report, tmp_path, name):
    _, count, scale, radii = _setting()
    net, card = _network(name)
    timeout = (120.0 if net.hidden_layers <= 2 else 300.0) * scale
    onnx = export_onnx(net, tmp_path / f"{name}.onnx", input_shape=(1, 28, 28))
    indices = draw_images(count, DRAW_SEED)
    write_instances(net, name, onnx, indices, radii, timeout)
    instances = read_instances(tmp_path / "instances.csv")

    def portfolio():
        return run(tmp_path / "instances.csv", tmp_path / "out", echo=lambda line: None)

    benchmark.group = "complete-verifiers"
    rows = benchmark.pedantic(portfolio, rounds=1, iterations=1)
    labels = mnist_test()[1]
    crown, milp, disagreements = [], [], []
    for item, row in zip(instances, rows):
        prop = read_vnnlib(tmp_path / item.vnnlib, num_inputs=784, num_outputs=10)
        index = int(item.vnnlib.rsplit("_", 2)[-2])
        eps = float(item.vnnlib.rsplit("eps", 1)[1].removesuffix(".vnnlib"))
        began = time.perf_counter()
        unsat = refuted(Crown().bound_property(net, prop))
        crown.append(("unsat" if unsat else "unknown", time.perf_counter() - began, 0))
        milp.append(_milp_verdict(net, prop, int(labels[index]), eps, item.timeout))
        verdicts = {v for v in (row["result"], crown[-1][0], milp[-1][0]) if v in ("sat", "unsat")}
        if len(verdicts) > 1:
            disagreements.append(f"{item.vnnlib}: bab {row['result']}, crown {crown[-1][0]}, "
                                 f"milp {milp[-1][0]}")

    def summary(results: list[tuple[str, float, int]]) -> tuple[int, int, float, float]:
        decided = [(t, n) for v, t, n in results if v in ("sat", "unsat")]
        return (sum(r[0] == "unsat" for r in results), sum(r[0] == "sat" for r in results),
                float(np.median([t for t, _ in decided])) if decided else float("nan"),
                float(np.median([n for _, n in decided])) if decided else float("nan"))

    portfolio_results = [(r["result"], float(r["run_time"]), int(r.get("nodes", 0)))
                         for r in rows]
    figures = {"bab": summary(portfolio_results), "milp": summary(milp),
               "crown": summary(crown)}
    benchmark.extra_info.update({f"{k}_{part}": v for k, (u, s, m, n) in figures.items()
                                 for part, v in (("unsat", u), ("sat", s), ("median_s", m),
                                                 ("median_nodes", n))})
    benchmark.extra_info["instances"] = len(rows)
    benchmark.extra_info["disagreements"] = disagreements
    text = "; ".join(f"{k} {u + s} decided ({u} unsat, {s} sat, median {m:.1f} s, "
                     f"{n:.0f} nodes)" for k, (u, s, m, n) in figures.items())
    report(f"{name} ({card.clean_test_error:.3f} clean error), {len(rows)} instances, "
           f"timeout {timeout:.0f} s: {text}")
    assert not disagreements, disagreements
