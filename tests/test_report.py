"""``bench report``: Table 1 beside the paper, figures, and the eps sweep of Figure 3b,
on two tiny stand-in networks named like the paper's."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch

from bench import data
from bench.contract import margins
from bench.report import PAPER_TABLE1, SWEEP_EPS, report
from models import Card, load, save
from tests.conftest import random_mlp, run_cli

N = 12


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    folder = root / "models"
    for name, seed in (("sdp-nn", 3), ("lp-nn", 4)):
        net = random_mlp([784, 12, 10], seed, scale=0.3)
        save(net, Card(name=name, widths=net.widths, objective="random", seed=seed), folder)
    out = root / "results"
    written, violations = report(out=out, n=N, model_dir=folder, batch_size=6,
                                 progress=False, echo=lambda line: None)
    return folder, out, written, violations


def test_every_file_is_written_and_sound(reported):
    _, out, written, violations = reported
    assert violations == 0
    for name in ["leaderboard.csv", "gaps.csv", "table1.csv", "table1.md", "fig2_bounds.png",
                 "fig3a_sdp_vs_pgd.png", "fig3b_sdp_nn_attacks.png", "sweep/leaderboard.csv"]:
        assert (out / name).exists(), name
    for path in out.glob("*.png"):
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
        assert image[..., :3].std() > 0.05                  # not a blank canvas


def test_table1_puts_our_leaderboard_beside_the_paper(reported):
    _, out, _, _ = reported
    table = pd.read_csv(out / "table1.csv")
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(table) == len(PAPER_TABLE1)
    for row in table.itertuples():
        assert row.paper == PAPER_TABLE1[(row.network, row.measure)]
        ours = board[(board["model"] == row.network) & (board["method"] == row.measure)]
        assert row.ours == pytest.approx(float(ours["error"].iloc[0]), abs=1e-4)
        assert row.ci_low <= row.ours <= row.ci_high and row.n == N
    text = (out / "table1.md").read_text()
    assert "(paper 35%)" in text and "(paper 26%)" in text


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
    result = run_cli("report", "--model-dir", str(folder), "--n", str(N), "--out", str(out),
                     "--batch-size", "6", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "| SDP-NN |" in result.stdout
    assert (out / "records.jsonl").read_text() == before     # everything reused
    bad = run_cli("report", "--n", "0", "--out", str(tmp_path / "x"))
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert not (tmp_path / "x").exists()
