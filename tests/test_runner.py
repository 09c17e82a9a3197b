"""The harness: records, resume, faults, the soundness guard, determinism."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from bench.records import RecordsError, RecordStore
from bench.registry import PluginInfo, select
from bench.runner import Method, Runner, RunSpec

TIMING = ["seconds_per_sample"]


def make_methods(verifiers=("spectral", "frobenius"), attacks=("fgsm", "pgd")):
    options = {"pgd": {"steps": 5, "restarts": 2}}
    infos = select("verifier", list(verifiers)) + select("attack", list(attacks))
    return [Method(info, info.create(options.get(info.name))) for info in infos]


def run(out, model_dir, methods=None, n=30, eps=(0.05, 0.1), batch_size=8):
    spec = RunSpec(models=["tiny-a", "tiny-b"], methods=methods or make_methods(),
                   eps=list(eps), n=n, out=out, batch_size=batch_size, model_dir=model_dir,
                   progress=False)
    return Runner(spec, echo=lambda line: None).run()


def csv_without_timings(folder):
    board = pd.read_csv(folder / "leaderboard.csv").drop(columns=TIMING)
    return board, pd.read_csv(folder / "gaps.csv")


def test_leaderboard_shape_and_invariant(tmp_path, model_dir):
    result = run(tmp_path, model_dir)
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
    run(clean_dir, model_dir)
    run(resumed_dir, model_dir)
    # simulate a kill mid-run: keep the first third of the records and a torn line
    path = resumed_dir / "records.jsonl"
    lines = path.read_bytes().split(b"\n")
    keep = len(lines) // 3
    path.write_bytes(b"\n".join(lines[:keep]) + b"\n" + lines[keep][: len(lines[keep]) // 2])
    second = run(resumed_dir, model_dir)
    assert 0 < second.computed_batches
    for a, b in zip(csv_without_timings(clean_dir), csv_without_timings(resumed_dir)):
        pd.testing.assert_frame_equal(a, b)
    third = run(resumed_dir, model_dir)
    assert third.computed_batches == 0


def test_same_seed_gives_identical_csv(tmp_path, model_dir):
    run(tmp_path / "a", model_dir)
    run(tmp_path / "b", model_dir)
    for a, b in zip(csv_without_timings(tmp_path / "a"), csv_without_timings(tmp_path / "b")):
        pd.testing.assert_frame_equal(a, b)


class Raises:
    name = "raises"

    def bound(self, net, x, y, eps):
        raise RuntimeError("solver exploded")


class WrongShape:
    name = "wrong-shape"

    def bound(self, net, x, y, eps):
        return torch.zeros(len(y), 3, dtype=torch.float64)


class Unsound:
    """Claims the clean margin is the worst case: broken by any decent attack."""

    name = "unsound"

    def bound(self, net, x, y, eps):
        from bench.contract import margins
        with torch.no_grad():
            return margins(net.float64_copy()(x), y)


def fake(plugin) -> Method:
    info = PluginInfo(plugin.name, "verifier", None, "tests", "0")  # type: ignore[arg-type]
    return Method(info, plugin)


def test_faulty_plugins_are_recorded_and_the_grid_completes(tmp_path, model_dir):
    methods = make_methods(attacks=("pgd",)) + [fake(Raises()), fake(WrongShape())]
    result = run(tmp_path, model_dir, methods=methods, n=10, eps=(0.1,))
    board = result.leaderboard.set_index(["model", "method"])
    assert board.loc[("tiny-a", "raises"), "status"] == "error"
    assert board.loc[("tiny-a", "raises"), "error"] == 1.0  # failed = not certified
    assert board.loc[("tiny-b", "wrong-shape"), "status"] == "error"
    assert board.loc[("tiny-a", "spectral"), "status"] == "ok"
    records = RecordStore(tmp_path).load()
    messages = {r["message"] for r in records.values() if r["method"] == "raises"}
    assert messages == {"RuntimeError: solver exploded"}


def test_unsound_verifier_is_flagged_not_averaged(tmp_path, model_dir):
    methods = make_methods(verifiers=("spectral",), attacks=("pgd",)) + [fake(Unsound())]
    result = run(tmp_path, model_dir, methods=methods, n=20, eps=(0.1,))
    assert len(result.violations) > 0
    assert set(result.violations["verifier"]) == {"unsound"}
    board = result.leaderboard.set_index(["model", "method"])
    assert (board.xs("unsound", level="method")["status"] == "unsound").all()
    assert (board.xs("spectral", level="method")["status"] == "ok").all()
    assert (result.gaps["best_verifier"] == "spectral").all()
    assert (result.gaps["unsound_verifiers"] == "unsound").all()


def test_unsupported_verifier_is_na(tmp_path):
    from models import Card, save
    from tests.conftest import random_mlp
    folder = tmp_path / "m"
    for name in ("tiny-a", "tiny-b"):
        net = random_mlp([784, 8, 8, 10], seed=0)
        save(net, Card(name=name, widths=net.widths, objective="random"), folder)
    result = run(tmp_path / "out", folder, n=5, eps=(0.1,))
    statuses = result.leaderboard.set_index("method")["status"]
    assert set(statuses.loc[["spectral", "frobenius"]]) == {"n/a"}
    assert set(statuses.loc[["fgsm", "pgd"]]) == {"ok"}


def test_second_writer_is_refused(tmp_path):
    with RecordStore(tmp_path):
        with pytest.raises(RecordsError, match="another run"):
            with RecordStore(tmp_path):
                pass


def test_corrupt_records_are_refused(tmp_path):
    (tmp_path / "records.jsonl").write_text('{"foo": 1}\n')
    with pytest.raises(RecordsError, match="not a certbench record"):
        RecordStore(tmp_path).load()
    (tmp_path / "records.jsonl").write_text('garbage\n{"foo": 1}\n')
    with pytest.raises(RecordsError, match="corrupt"):
        RecordStore(tmp_path).load()
