"""The command line end to end, and one-line errors with exit code 1."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest


def cli(*args: str, cwd=None):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_run_end_to_end_on_the_shipped_network(tmp_path):
    done = cli("run", "--verifiers", "spectral,frobenius", "--attacks", "fgsm,pgd,cw",
               "--n", "20", "--out", str(tmp_path), "--quiet", "--set", "pgd.restarts=2")
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


@pytest.mark.parametrize("args, message", [
    (["run", "--verifiers", "nope"], "unknown verifier 'nope'; available:"),
    (["run", "--attacks", "pgd,zap"], "unknown attack 'zap'; available:"),
    (["run", "--models", "nope"], "unknown model 'nope'; available: nt-nn"),
    (["run", "--eps", "-0.1"], "eps must be a finite number >= 0"),
    (["run", "--eps", "nan"], "eps must be a finite number >= 0"),
    (["run", "--eps", "abc"], "eps must be a number"),
    (["run", "--n", "10001"], "--n must be between 1 and 10000"),
    (["run", "--n", "0"], "expected a positive integer"),
    (["run", "--set", "pgd.restarts"], "NAME.KEY=VALUE"),
    (["run", "--attacks", "pgd", "--set", "pgd.bogus=1"], "bad options for attack 'pgd'"),
    (["train", "nope"], "unknown network 'nope'"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_1(tmp_path, args, message):
    done = cli(*args, "--out", str(tmp_path / "out")) if args[0] == "run" else cli(*args)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert not (tmp_path / "out" / "leaderboard.csv").exists()
