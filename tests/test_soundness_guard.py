"""The soundness guard: an attack margin above a verifier's bound is flagged, printed,
kept out of the gap table, and fails the run; it is never averaged away."""

from __future__ import annotations

import pandas as pd
import torch

from bench.contract import margins
from bench.leaderboard import to_frame, violations
from tests.conftest import fake_method, grid_methods, invoke, run_grid


class ClaimsCleanMargin:
    """Unsound on purpose: reports the clean margin as the worst case."""

    name = "claims-clean"

    def bound(self, net, x, y, eps):
        with torch.no_grad():
            return margins(net.float64_copy()(x), y)


def test_unsound_verifier_is_flagged_not_averaged(tmp_path, model_dir):
    methods = grid_methods(verifiers=("spectral",), attacks=("pgd",)) + \
        [fake_method(ClaimsCleanMargin())]
    result = run_grid(tmp_path, model_dir, methods=methods, n=20, eps=(0.1,))
    assert len(result.violations) > 0
    assert set(result.violations["verifier"]) == {"claims-clean"}
    assert (result.violations["attack_margin"] > result.violations["verifier_bound"]).all()
    board = result.leaderboard.set_index(["model", "method"])
    assert (board.xs("claims-clean", level="method")["status"] == "unsound").all()
    assert (board.xs("spectral", level="method")["status"] == "ok").all()
    assert (result.gaps["best_verifier"] == "spectral").all()
    assert (result.gaps["unsound_verifiers"] == "claims-clean").all()
    on_disk = pd.read_csv(tmp_path / "violations.csv")
    assert len(on_disk) == len(result.violations)


def test_tolerance_is_tight():
    base = {"model": "m", "eps": 0.1, "sample": 0, "label": 0, "decided": False,
            "seconds": 0.0, "status": "ok"}
    records = [dict(base, method="v", kind="verifier", bound=1.0),
               dict(base, method="a", kind="attack", bound=1.0 + 5e-7)]
    assert violations(to_frame(records)).empty
    records[1]["bound"] = 1.0 + 1e-5
    assert len(violations(to_frame(records))) == 1


def test_cli_exits_non_zero_and_prints_the_offending_samples(plugin_site, model_dir, tmp_path,
                                                             monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_site))
    code, _, err = invoke(["run", "--verifiers", "clean-margin,spectral", "--attacks", "pgd",
                           "--model-dir", str(model_dir), "--models", "tiny-a", "--n", "10",
                           "--out", str(tmp_path), "--quiet"])
    assert code == 3
    assert "UNSOUND" in err and "clean-margin" in err
    board = pd.read_csv(tmp_path / "leaderboard.csv").set_index("method")
    assert board.loc["clean-margin", "status"] == "unsound"
