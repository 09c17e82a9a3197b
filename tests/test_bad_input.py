"""Bad input: one line on stderr, exit code 1, never a traceback, nothing written."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import models
from bench.cli import main
from models import Card
from tests.conftest import random_mlp

KNOWN = {"spectral", "frobenius", "sdp", "sdp-dual", "lp", "lp-exact", "ibp", "crown", "milp",
         "fgsm", "pgd", "cw", "milp-cex", *models.shipped_names()}


def invoke(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


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
    "--eps": st.one_of(st.floats(max_value=-1e-6).map(repr), st.sampled_from(["nan", "inf", "-inf"]),
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
