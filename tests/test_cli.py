"""The command line end to end (in this process; ``python -m bench`` itself is run as a
subprocess in ``test_hardening.py``), and one-line errors with exit code 1."""

from __future__ import annotations

import pandas as pd

from tests.conftest import invoke


def test_run_end_to_end_on_the_shipped_network(tmp_path):
    code, stdout, stderr = invoke(["run", "--verifiers", "spectral,frobenius", "--attacks",
                                   "fgsm,pgd,cw", "--models", "nt-nn", "--n", "20", "--out",
                                   str(tmp_path), "--quiet", "--set", "pgd.restarts=2"])
    assert code == 0, stderr
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert list(board["method"]) == ["cw", "fgsm", "frobenius", "pgd", "spectral"]
    assert (board["model"] == "nt-nn").all() and (board["n"] == 20).all()
    gaps = pd.read_csv(tmp_path / "gaps.csv")
    assert gaps.loc[0, "best_certified_error"] == 1.0   # vacuous, as in the paper's Figure 2
    assert "pgd" in stdout and "wrote" in stdout


def test_list_shows_plugins_and_models():
    code, stdout, _ = invoke(["list"])
    assert code == 0
    for name in ("spectral", "frobenius", "fgsm", "pgd", "cw", "nt-nn"):
        assert name in stdout
