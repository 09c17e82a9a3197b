"""The harness: the grid, the tables, resume after an interruption, n/a plugins."""

from __future__ import annotations

import pandas as pd
import pytest

from models import Card, save
from tests.conftest import csv_without_timings, random_mlp, run_grid


def test_leaderboard_shape_and_invariant(tmp_path, model_dir):
    result = run_grid(tmp_path, model_dir)
    assert len(result.leaderboard) == 2 * 2 * 4
    assert result.violations.empty
    assert set(result.leaderboard["status"]) == {"ok"}
    assert ((result.leaderboard["error"] >= 0) & (result.leaderboard["error"] <= 1)).all()
    assert (result.leaderboard["ci_low"] <= result.leaderboard["error"]).all()
    gaps = result.gaps
    assert len(gaps) == 4
    assert (gaps["combined_certified_error"] <= gaps["best_certified_error"] + 1e-12).all()
    assert (gaps["combined_attack_error"] >= gaps["best_attack_error"] - 1e-12).all()
    assert (gaps["combined_gap"] >= -1e-12).all()  # sound: nothing is both certified and broken


def test_resumed_run_equals_uninterrupted(tmp_path, model_dir):
    clean_dir, resumed_dir = tmp_path / "clean", tmp_path / "resumed"
    run_grid(clean_dir, model_dir)
    run_grid(resumed_dir, model_dir)
    # an interruption mid-write: keep the first third of the records and a torn line
    path = resumed_dir / "records.jsonl"
    lines = path.read_bytes().split(b"\n")
    keep = len(lines) // 3
    path.write_bytes(b"\n".join(lines[:keep]) + b"\n" + lines[keep][: len(lines[keep]) // 2])
    second = run_grid(resumed_dir, model_dir)
    assert 0 < second.computed_batches
    for a, b in zip(csv_without_timings(clean_dir), csv_without_timings(resumed_dir)):
        pd.testing.assert_frame_equal(a, b)
    assert run_grid(resumed_dir, model_dir).computed_batches == 0


def test_changed_plugin_configuration_is_recomputed(tmp_path, model_dir):
    from tests.conftest import grid_methods
    run_grid(tmp_path, model_dir, n=8)
    methods = grid_methods()
    methods[-1].plugin.restarts = 3                       # pgd's configuration changes
    again = run_grid(tmp_path, model_dir, methods=methods, n=8)
    assert again.computed_batches == 2 * 2                # pgd only: two models, two eps


def test_unsupported_verifier_is_na(tmp_path):
    folder = tmp_path / "m"
    for name in ("tiny-a", "tiny-b"):
        net = random_mlp([784, 8, 8, 10], seed=0)
        save(net, Card(name=name, widths=net.widths, objective="random"), folder)
    result = run_grid(tmp_path / "out", folder, n=5, eps=(0.1,))
    statuses = result.leaderboard.set_index("method")["status"]
    assert set(statuses.loc[["spectral", "frobenius"]]) == {"n/a"}
    assert set(statuses.loc[["fgsm", "pgd"]]) == {"ok"}


def test_wilson_interval_matches_reference_values():
    """Newcombe (1998), Table I, 81/263: 0.2553 to 0.3662; and scipy's own Wilson interval."""
    from scipy.stats import binomtest

    from bench.leaderboard import wilson_interval
    low, high = wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    for successes, n in [(0, 10), (10, 10), (3, 7), (500, 1000), (1, 10000)]:
        reference = binomtest(successes, n).proportion_ci(confidence_level=0.95,
                                                          method="wilson")
        assert wilson_interval(successes, n) == pytest.approx(
            (reference.low, reference.high), abs=1e-6)


PLUGIN_SOURCE = '''
import torch

class Bump:
    name = "bump"

    def __repr__(self):
        return "Bump()"

    def bound(self, net, x, y, eps):
        return torch.full((len(y), net.num_classes), {value}, dtype=torch.float64)
'''


def test_an_edited_plugin_is_recomputed_and_an_unchanged_one_is_not(tmp_path, model_dir,
                                                                     monkeypatch):
    """The records keep a fingerprint of the plugin's source: editing the source (same
    name, configuration and version) recomputes its batches; leaving it does not."""
    import importlib
    import sys

    from bench.fingerprint import code_fingerprint
    from tests.conftest import fake_method
    package = tmp_path / "src"
    package.mkdir()
    (package / "bump_plugin.py").write_text(PLUGIN_SOURCE.format(value=1.0))
    monkeypatch.syspath_prepend(str(package))

    def run(source_value: float):
        (package / "bump_plugin.py").write_text(PLUGIN_SOURCE.format(value=source_value))
        sys.modules.pop("bump_plugin", None)
        code_fingerprint.cache_clear()
        module = importlib.import_module("bump_plugin")
        return run_grid(tmp_path / "out", model_dir, [fake_method(module.Bump())], n=8,
                        eps=(0.1,))
    first = run(1.0)
    assert first.computed_batches == 2 and set(first.leaderboard["error"]) == {1.0}
    assert run(1.0).computed_batches == 0
    edited = run(-1.0)                              # the same repr, another result
    assert edited.computed_batches == 2 and set(edited.leaderboard["error"]) == {0.0}


def test_records_of_schema_1_are_read_and_reused(tmp_path, model_dir):
    """A results folder written before records had ``schema`` and ``code`` still
    resumes: its records are read (as schema 1, no fingerprint) and not recomputed."""
    import json
    first = run_grid(tmp_path, model_dir, n=16, eps=(0.1,))
    path = tmp_path / "records.jsonl"
    old = [{k: v for k, v in json.loads(line).items() if k not in ("schema", "code")}
           for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    again = run_grid(tmp_path, model_dir, n=16, eps=(0.1,))
    assert again.computed_batches == 0 and first.computed_batches > 0
    pd.testing.assert_frame_equal(first.leaderboard.drop(columns=["seconds_per_sample"]),
                                  again.leaderboard.drop(columns=["seconds_per_sample"]))


def test_the_fingerprint_covers_the_modules_a_plugin_uses():
    import verifiers.sdp.sdp  # noqa: F401
    from bench.fingerprint import reached_modules
    reached = reached_modules("verifiers.sdp.sdp")
    assert {"verifiers.sdp.sdp", "verifiers.sdp.pair_solver", "verifiers.sdp.pairwise_bound",
            "bench.contract", "models.mlp"} <= set(reached)
    assert not any(name.split(".")[0] in ("torch", "numpy", "bench.runner")
                   for name in reached)
    assert "bench.runner" not in reached and "bench.cli" not in reached
