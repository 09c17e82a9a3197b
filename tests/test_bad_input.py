"""Bad input: one line on stderr, exit code 1, never a traceback, nothing written."""

from __future__ import annotations

import hashlib
import json
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import models
from models import Card
from tests.conftest import invoke, random_mlp

KNOWN = {"spectral", "frobenius", "sdp", "sdp-dual", "lp", "lp-exact", "ibp", "crown", "milp",
         "fgsm", "pgd", "cw", "milp-cex", *models.shipped_names()}


def assert_one_line_error(code: int, err: str, expected: str = "") -> None:
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and expected in lines[0]


@pytest.mark.parametrize("args, message", [
    (["run", "--verifiers", "nope"], "unknown verifier 'nope'; available:"),
    (["run", "--attacks", "pgd,zap"], "unknown attack 'zap'; available:"),
    (["run", "--models", "nope"],
     f"unknown model 'nope'; available: {', '.join(models.shipped_names())}"),
    (["run", "--eps", "-0.1"], "eps must be a finite number >= 0"),
    (["run", "--eps", "nan"], "eps must be a finite number >= 0"),
    (["run", "--eps", "abc"], "eps must be a number"),
    (["run", "--n", "10001"], "--n must be between 1 and 10000"),
    (["run", "--n", "0"], "expected a positive integer"),
    (["run", "--time-limit", "0"], "--time-limit must be positive"),
    (["run", "--set", "pgd.restarts"], "NAME.KEY=VALUE"),
    (["run", "--attacks", "pgd", "--set", "pgd.bogus=1"], "bad options for attack 'pgd'"),
    (["run", "--attacks", "pgd", "--set", "fgsm.steps=1"], "which this run does not use"),
    (["run", "--verifiers", "sdp", "--set", "sdp.backend=magic"], "backend must be one of"),
    (["train", "nope"], "unknown network 'nope'"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
])
def test_bad_arguments(tmp_path, args, message):
    out = tmp_path / "out"
    argv = args + (["--out", str(out)] if args[:1] == ["run"] else [])
    code, _, err = invoke(argv)
    assert_one_line_error(code, err, message)
    assert not out.exists()


names = st.text(alphabet=string.ascii_lowercase + "-_.", min_size=1, max_size=12) \
    .filter(lambda s: s not in KNOWN and not s.startswith("-"))
MALFORMED = {
    "--eps": st.one_of(st.floats(max_value=-1e-6).map(repr),
                       st.sampled_from(["nan", "inf", "-inf"]),
                       st.text(alphabet=string.ascii_letters, min_size=1, max_size=6)
                       .filter(lambda s: s.lower() not in ("e",))),
    "--n": st.one_of(st.integers(max_value=0), st.integers(min_value=10_001)).map(str),
    "--verifiers": names,
    "--attacks": names,
    "--models": names,
    "--time-limit": st.one_of(st.just("0"), st.floats(max_value=-1e-6).map(repr)),
    "--batch-size": st.integers(max_value=0).map(str),
    "--set": st.text(alphabet=string.ascii_lowercase + "=", min_size=1, max_size=8),
}
VALID = {"--n": "2", "--verifiers": "spectral", "--attacks": "fgsm", "--eps": "0.1"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad=st.lists(st.sampled_from(sorted(MALFORMED)), min_size=1, max_size=3, unique=True),
       data=st.data())
def test_random_malformed_arguments(bad, data):
    argv = ["run"]
    for flag, value in VALID.items():
        if flag not in bad:
            argv += [flag, value]
    for flag in bad:
        argv += [f"{flag}={data.draw(MALFORMED[flag])}"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        code, _, err = invoke(argv + ["--out", str(out), "--quiet"])
        assert_one_line_error(code, err)
        assert not out.exists(), argv


def _write_model(folder: Path) -> tuple[Path, Path]:
    net = random_mlp([784, 6, 10], seed=0)
    models.save(net, Card(name="m", widths=net.widths, objective="none"), folder)
    return folder / "m.safetensors", folder / "m.json"


def _reseal(weights: Path, card: Path) -> None:
    """Make the card's SHA-256 match the (corrupted) weights, so deeper checks are reached."""
    raw = json.loads(card.read_text())
    raw["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    card.write_text(json.dumps(raw))


CORRUPTIONS = st.sampled_from(["truncate", "random-bytes", "card-text", "card-widths",
                               "card-missing-key", "nan", "sha", "no-weights"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=CORRUPTIONS, blob=st.binary(min_size=0, max_size=300), cut=st.integers(1, 5000),
       reseal=st.booleans(), width=st.integers(1, 20))
def test_random_malformed_model_files(kind, blob, cut, reseal, width):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "models"
        weights, card = _write_model(folder)
        if kind == "truncate":
            weights.write_bytes(weights.read_bytes()[:-cut])
        elif kind == "random-bytes":
            weights.write_bytes(blob)
        elif kind == "card-text":
            card.write_bytes(blob)
        elif kind == "card-widths":
            raw = json.loads(card.read_text())
            raw["architecture"]["widths"] = [784, 6 + width, 10]
            card.write_text(json.dumps(raw))
        elif kind == "card-missing-key":
            raw = json.loads(card.read_text())
            raw.pop(sorted(["architecture", "weights_sha256", "name"])[width % 3])
            card.write_text(json.dumps(raw))
        elif kind == "nan":
            net = random_mlp([784, 6, 10], seed=0)
            net.linears[1].bias.data[width % 10] = float("nan")
            models.save(net, Card(name="m", widths=net.widths, objective="none"), folder)
        elif kind == "sha":
            raw = json.loads(card.read_text())
            raw["weights_sha256"] = hashlib.sha256(blob).hexdigest()
            card.write_text(json.dumps(raw))
        elif kind == "no-weights":
            weights.unlink()
        if reseal and kind in ("truncate", "random-bytes") and card.exists():
            _reseal(weights, card)
        out = Path(tmp) / "out"
        code, _, err = invoke(["run", "--model-dir", str(folder), "--models", "m", "--n", "2",
                               "--verifiers", "spectral", "--attacks", "fgsm", "--quiet",
                               "--out", str(out)])
        assert_one_line_error(code, err)
        assert not out.exists()


def _run_on(folder: Path, out: Path) -> tuple[int, str, str]:
    return invoke(["run", "--model-dir", str(folder), "--models", "m", "--n", "2",
                   "--verifiers", "spectral", "--attacks", "fgsm", "--quiet", "--out", str(out)])


WIDTHS = st.one_of(
    st.lists(st.integers(-10, 0), min_size=1, max_size=3).map(lambda w: [784, *w, 10]),
    st.just([784]), st.just([]), st.just("784-6-10"),
    st.floats(1.5, 600.5).filter(lambda v: v != int(v)).map(lambda v: [784, v, 10]),
    st.integers(2_000_000, 10**12).map(lambda v: [784, v, 10]),
    st.just([784, True, 10]), st.just([784, "6", 10]))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(widths=WIDTHS)
def test_malformed_card_widths_are_one_line_and_allocate_nothing(widths):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "models"
        _, card = _write_model(folder)
        raw = json.loads(card.read_text())
        raw["architecture"]["widths"] = widths
        card.write_text(json.dumps(raw))
        code, _, err = _run_on(folder, Path(tmp) / "out")
        assert_one_line_error(code, err)
        assert not (Path(tmp) / "out").exists()


@pytest.mark.parametrize("case", ["int32-weights", "three-outputs"])
def test_integer_weights_and_a_wrong_output_count_are_one_line(case, tmp_path):
    import torch
    from safetensors.torch import save_file
    folder = tmp_path / "models"
    widths = [784, 6, 3] if case == "three-outputs" else [784, 6, 10]
    net = random_mlp(widths, seed=0)
    models.save(net, Card(name="m", widths=net.widths, objective="none"), folder)
    if case == "int32-weights":
        weights = folder / "m.safetensors"
        save_file({k: v.to(torch.int32) for k, v in net.state_dict().items()}, str(weights))
        _reseal(weights, folder / "m.json")
    code, _, err = _run_on(folder, tmp_path / "out")
    assert_one_line_error(code, err, "not floating point" if case == "int32-weights"
                          else "3 outputs")
    assert not (tmp_path / "out").exists()


FIELD_VALUES = {"eps": ["abc", None, -1, float("inf"), True], "sample": ["x", -3, 1.5, None],
                "decided": ["no", 1, 0.0], "bound": ["hello", True, [1]],
                "seconds": ["s", -1.0], "label": ["7", None], "seed": [1.5, "0"],
                "config": [3, None], "model": [1], "schema": [3, "2", True, 0],
                "code": [None, 5]}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(sorted(FIELD_VALUES)), data=st.data())
def test_records_with_wrong_value_types_are_one_line(field, data, ):
    from bench.records import FIELDS
    value = data.draw(st.sampled_from(FIELD_VALUES[field]))
    good = {"model": "nt-nn", "model_sha256": "0" * 64, "method": "spectral",
            "kind": "verifier", "eps": 0.1, "sample": 0, "label": 7, "bound": 1.5,
            "decided": False, "seconds": 0.01, "status": "ok", "message": "",
            "config": "Spectral()", "version": "certbench 0.1.0", "seed": 1, "schema": 2,
            "code": "0123456789abcdef"}
    assert set(good) == set(FIELDS)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        text = json.dumps({**good, field: value}) + "\n"
        (out / "records.jsonl").write_text(json.dumps(good) + "\n" + text)
        code, _, err = invoke(["run", "--models", "nt-nn", "--n", "2", "--verifiers",
                               "spectral", "--attacks", "fgsm", "--quiet", "--out", str(out)])
        assert_one_line_error(code, err, f"{field} must be")


def test_out_naming_a_file_or_a_read_only_folder_is_one_line(tmp_path):
    import os
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, err = invoke(["run", "--models", "nt-nn", "--n", "2", "--verifiers", "spectral",
                           "--attacks", "fgsm", "--quiet", "--out", str(a_file)])
    assert_one_line_error(code, err, "not a folder")
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = invoke(["run", "--models", "nt-nn", "--n", "2", "--verifiers", "spectral",
                           "--attacks", "fgsm", "--quiet", "--out", str(locked / "out")])
    assert_one_line_error(code, err, "cannot write")
