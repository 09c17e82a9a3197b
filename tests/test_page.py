"""``index.html``: one self-contained page per results folder whose tables equal the
CSVs, cell for cell, with the figures embedded (``bench/page.py``)."""

from __future__ import annotations

import csv
import re

import numpy as np

from bench.page import page_tables, write_page
from bench.vnncomp.cactus import cactus_plot, solved_times
from tests.conftest import invoke


def csv_rows(path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_the_page_tables_equal_the_csvs_and_the_figures_are_embedded(tmp_path):
    rows = [["model", "method", "error"], ["net, v2", "<b>sdp</b>", "0.25"],
            ["a&b", "lp", "1e-05"]]
    with open(tmp_path / "leaderboard.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    (tmp_path / "gaps.csv").write_text("model,gap\nnet,0.1\n")
    cactus_plot({"ours": [{"result": "sat", "run_time": "0.5"},
                          {"result": "unknown", "run_time": "9"}]},
                tmp_path / "cactus.png")
    page = write_page(tmp_path, title="a <test>", settings=[("n", "3")])
    text = page.read_text()
    tables = page_tables(text)
    assert tables["leaderboard.csv"] == rows
    assert tables["gaps.csv"] == csv_rows(tmp_path / "gaps.csv")
    assert "<b>sdp</b>" not in text and "&lt;b&gt;sdp&lt;/b&gt;" in text      # escaped
    assert 'src="data:image/png;base64,' in text
    assert not re.search(r'(src|href)="(https?:)?//', text)           # nothing fetched
    assert '<a href="leaderboard.csv">' in text


def test_bench_run_writes_the_page_of_its_folder(tmp_path, model_dir):
    out = tmp_path / "out"
    code, stdout, err = invoke(["run", "--model-dir", str(model_dir), "--models", "tiny-a",
                                "--verifiers", "ibp,crown", "--attacks", "fgsm", "--n", "4",
                                "--out", str(out), "--quiet"])
    assert code == 0, err
    tables = page_tables((out / "index.html").read_text())
    for name in ("leaderboard.csv", "gaps.csv"):
        assert tables[name] == csv_rows(out / name)
    assert "index.html" in stdout


def test_the_cactus_plot_draws_the_decided_instances_sorted():
    rows = [{"result": r, "run_time": t} for r, t in
            [("sat", "3.0"), ("unsat", "1.5"), ("timeout", "60"), ("unsat", "0.2")]]
    assert solved_times(rows) == [0.2, 1.5, 3.0]
    assert np.all(np.diff(solved_times(rows)) >= 0)


def test_the_per_sample_figure_plots_the_per_sample_table(tmp_path, model_dir):
    """``bench run`` writes ``per_sample.csv`` and ``per_sample.png``; the points drawn
    are the table's rows, and no attack margin exceeds its certified bound."""
    import pandas as pd

    from bench.leaderboard import per_sample, to_frame
    from bench.report import figure_per_sample
    from tests.conftest import run_grid

    result = run_grid(tmp_path / "out", model_dir, n=6, eps=(0.05,), models=("tiny-a",))
    table = per_sample(to_frame(result.records))
    assert (table["attack_margin"] <= table["certified_bound"] + 1e-6).all()
    figure = figure_per_sample(table)
    drawn = figure.axes[0].collections[0].get_offsets()
    assert np.allclose(drawn, table[["attack_margin", "certified_bound"]].to_numpy())
    out = tmp_path / "run"
    code, _, err = invoke(["run", "--model-dir", str(model_dir), "--models", "tiny-a",
                           "--verifiers", "ibp,crown", "--attacks", "fgsm,pgd", "--n", "5",
                           "--out", str(out), "--quiet"])
    assert code == 0, err
    written = pd.read_csv(out / "per_sample.csv")
    assert len(written) == 5 and (out / "per_sample.png").exists()
    assert (written["attack_margin"] <= written["certified_bound"] + 1e-6).all()
