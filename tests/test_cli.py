"""The command line end to end, and one-line errors with exit code 1."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd


def cli(*args: str, cwd=None):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_run_end_to_end_on_the_shipped_network(tmp_path):
    done = cli("run", "--verifiers", "spectral,frobenius", "--attacks", "fgsm,pgd,cw",
               "--models", "nt-nn", "--n", "20", "--out", str(tmp_path), "--quiet",
               "--set", "pgd.restarts=2")
    assert done.returncode == 0, done.stderr
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert list(board["method"]) == ["cw", "fgsm", "frobenius", "pgd", "spectral"]
    assert (board["model"] == "nt-nn").all() and (board["n"] == 20).all()
    gaps = pd.read_csv(tmp_path / "gaps.csv")
    assert gaps.loc[0, "best_certified_error"] == 1.0   # vacuous, as in the paper's Figure 2
    assert "pgd" in done.stdout and "wrote" in done.stdout


def test_list_shows_plugins_and_models():
    done = cli("list")
    assert done.returncode == 0
    for name in ("spectral", "frobenius", "fgsm", "pgd", "cw", "nt-nn"):
        assert name in done.stdout
