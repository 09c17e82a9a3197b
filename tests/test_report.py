"""``bench report``: Table 1 beside the paper, figures, and the eps sweep of Figure 3b,
on two tiny stand-in networks named like the paper's."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch

from bench import data
from bench.contract import margins
from bench.report import PAPER_TABLE1, SWEEP_EPS, report
from models import Card, load, save
from tests.conftest import invoke, random_mlp

N = 12
EXACT_N = 6


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    folder = root / "models"
    for name, seed in (("sdp-nn", 3), ("lp-nn", 4)):
        net = random_mlp([784, 12, 10], seed, scale=0.3)
        save(net, Card(name=name, widths=net.widths, objective="random", seed=seed), folder)
    out = root / "results"
    written, violations = report(out=out, n=N, model_dir=folder, batch_size=6,
                                 progress=False, echo=lambda line: None, exact_n=EXACT_N)
    return folder, out, written, violations


def test_every_file_is_written_and_sound(reported):
    _, out, written, violations = reported
    assert violations == 0
    for name in ["leaderboard.csv", "gaps.csv", "table1.csv", "table1.md", "fig2_bounds.png",
                 "fig3a_sdp_vs_pgd.png", "fig3b_sdp_nn_attacks.png", "sweep/leaderboard.csv",
                 "ground_truth.csv", "ground_truth.md", "fig_exact.png",
                 "exact/leaderboard.csv"]:
        assert (out / name).exists(), name
    for path in out.glob("*.png"):
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300


def _bars_by_label(figure) -> dict[str, list[float]]:
    axis = figure.axes[0]
    handles, labels = axis.get_legend_handles_labels()
    return {label: [patch.get_height() for patch in handle.patches]
            for handle, label in zip(handles, labels)}


def test_the_figures_plot_the_leaderboard(reported):
    """Every bar of Figures 2 and 3a, and every point of 3b, is the leaderboard's error."""
    from bench.report import PAPER_ORDER, figure2, figure3a, figure3b
    _, out, _, _ = reported
    board = pd.read_csv(out / "leaderboard.csv")
    at = board[(board["eps"] - 0.1).abs() < 1e-12].set_index(["model", "method"])["error"]
    models = [m for m in PAPER_ORDER if m in set(board["model"])]
    for make, methods in ((figure2, ["sdp", "lp", "spectral", "frobenius", "pgd"]),
                          (figure3a, ["sdp", "pgd"])):
        bars = _bars_by_label(make(board))
        assert len(bars) == len(methods)
        for heights, method in zip(bars.values(), methods):
            assert heights == pytest.approx([100 * at[(m, method)] for m in models])
    sweep = pd.read_csv(out / "sweep" / "leaderboard.csv")
    lines = {line.get_label(): line for line in figure3b(sweep).axes[0].get_lines()}
    for method, label in (("sdp", "SDP bound"), ("pgd", "PGD"), ("cw", "CW"), ("fgsm", "FGSM")):
        rows = sweep[sweep["method"] == method].sort_values("eps")
        assert list(lines[label].get_xdata()) == pytest.approx(list(rows["eps"]))
        assert list(lines[label].get_ydata()) == pytest.approx(list(100 * rows["error"]))


def test_table1_puts_our_leaderboard_beside_the_paper(reported):
    _, out, _, _ = reported
    table = pd.read_csv(out / "table1.csv")
    board = pd.read_csv(out / "leaderboard.csv")
    unclipped = pd.read_csv(out / "lp-unclipped" / "leaderboard.csv")
    assert len(table) == len(PAPER_TABLE1) + 2
    for row in table.itertuples():
        source, measure = ((unclipped, "lp") if row.measure == "lp-unclipped"
                           else (board, row.measure))
        assert row.paper == PAPER_TABLE1[(row.network, measure)]
        ours = source[(source["model"] == row.network) & (source["method"] == measure)]
        assert row.ours == pytest.approx(float(ours["error"].iloc[0]), abs=1e-4)
        assert row.ci_low <= row.ours <= row.ci_high and row.n == N
    text = (out / "table1.md").read_text()
    assert "(paper 35%)" in text and "(paper 26%)" in text and "ball only" in text
    # the ball alone is a superset of the clipped box: never a smaller certified error
    both = table[table["measure"].isin(["lp", "lp-unclipped"])].pivot(
        index="network", columns="measure", values="ours")
    assert (both["lp-unclipped"] >= both["lp"] - 1e-12).all()


def test_sweep_starts_at_the_clean_error_and_the_bound_grows_with_eps(reported):
    folder, out, _, _ = reported
    sweep = pd.read_csv(out / "sweep" / "leaderboard.csv")
    assert sorted(sweep["eps"].unique()) == pytest.approx(SWEEP_EPS)
    net, _ = load("sdp-nn", folder)
    images, labels = data.mnist_test(N)
    with torch.no_grad():
        clean = float((margins(net(data.to_tensor(images)), torch.from_numpy(labels))
                       .amax(dim=1) >= 0).double().mean())
    at_zero = sweep[sweep["eps"] == 0].set_index("method")["error"]
    for method in ["sdp", "pgd", "cw", "fgsm"]:
        assert at_zero[method] == pytest.approx(clean)
    bound = sweep[sweep["method"] == "sdp"].sort_values("eps")["error"].to_numpy()
    assert (np.diff(bound) >= 0).all()
    for method in ["pgd", "cw", "fgsm"]:
        attack = sweep[sweep["method"] == method].sort_values("eps")["error"].to_numpy()
        assert (attack <= bound + 1e-12).all()


def test_report_cli_resumes_and_rejects_bad_input(reported, tmp_path):
    folder, out, _, _ = reported
    before = (out / "records.jsonl").read_text()
    code, stdout, stderr = invoke(["report", "--model-dir", str(folder), "--n", str(N),
                                   "--out", str(out), "--batch-size", "6", "--quiet",
                                   "--exact-n", str(EXACT_N)])
    assert code == 0, stderr
    assert "| SDP-NN |" in stdout
    assert (out / "records.jsonl").read_text() == before     # everything reused
    code, _, stderr = invoke(["report", "--n", "0", "--out", str(tmp_path / "x")])
    assert code == 1 and stderr.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_ground_truth_puts_every_method_beside_the_exact_verdicts(reported):
    """``ground_truth.csv`` recomputed from the exact run's records, sample by sample."""
    _, out, written, _ = reported
    assert {"ground_truth", "fig_exact"} <= set(written)
    table = pd.read_csv(out / "ground_truth.csv")
    records = [json.loads(line) for line in
               (out / "exact" / "records.jsonl").read_text().splitlines()]
    assert {"milp", "bab", "milp-cex", "apgd-ce", "apgd-dlr", "square", "ensemble",
            "pgd", "crown"} <= set(table["method"])
    for model, rows in table.groupby("model"):
        mine = [r for r in records if r["model"] == model]
        def success(methods):
            return {r["sample"] for r in mine if r["method"] in methods and r["decided"]
                    and r["status"] == "ok"}
        certified = success({"milp", "bab"})
        broken = success({r["method"] for r in mine if r["kind"] == "attack"})
        assert not certified & broken, "a complete verifier certified a broken sample"
        decided = certified | broken
        assert (rows["n_decided"] == len(decided)).all() and (rows["n"] == EXACT_N).all()
        assert rows["exact_error"].iloc[0] == pytest.approx(len(broken) / len(decided))
        for row in rows.itertuples():
            hit = success({row.method}) & decided
            share = len(hit) / len(decided)
            if row.kind == "verifier":
                assert row.error_on_decided == pytest.approx(1 - share)
                assert row.looseness >= -1e-12
            else:
                assert row.error_on_decided == pytest.approx(share)
                assert row.weakness >= -1e-12
    text = (out / "ground_truth.md").read_text()
    assert "undecided" in text and "| ensemble | attack |" in text
