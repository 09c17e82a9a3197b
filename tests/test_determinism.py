"""The same command with the same seed gives identical CSVs (timings aside); the seed matters."""

from __future__ import annotations

import pandas as pd

from bench.records import RecordStore
from tests.conftest import csv_without_timings, run_grid


def test_same_seed_gives_identical_csv(tmp_path, model_dir):
    run_grid(tmp_path / "a", model_dir)
    run_grid(tmp_path / "b", model_dir)
    for a, b in zip(csv_without_timings(tmp_path / "a"), csv_without_timings(tmp_path / "b")):
        pd.testing.assert_frame_equal(a, b)


def test_batch_size_does_not_change_deterministic_methods(tmp_path, model_dir):
    run_grid(tmp_path / "a", model_dir, batch_size=8)
    run_grid(tmp_path / "b", model_dir, batch_size=5)
    a, b = RecordStore(tmp_path / "a").load(), RecordStore(tmp_path / "b").load()
    for key, record in a.items():
        if record["method"] in ("spectral", "frobenius", "fgsm"):
            assert abs(record["bound"] - b[key]["bound"]) <= 1e-9 * max(1, abs(record["bound"]))


def test_another_seed_changes_the_random_restarts(tmp_path, model_dir):
    run_grid(tmp_path / "a", model_dir, seed=0)
    run_grid(tmp_path / "b", model_dir, seed=1)
    a, b = RecordStore(tmp_path / "a").load(), RecordStore(tmp_path / "b").load()
    assert any(a[k]["bound"] != b[k]["bound"] for k in a if k[1] == "pgd")
