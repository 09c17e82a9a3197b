"""No code runs from data: weights only from safetensors, MNIST only through the
restricted unpickler, plugins only from installed entry points."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

import models
from bench import data
from bench.data import DataError
from bench.registry import RegistryError, select
from models import Card, ModelError
from tests.conftest import random_mlp

MARKER = "certbench-pwned"


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = pickle.dumps((RunsCode(),), protocol=2)
    with pytest.raises(DataError, match="refusing to unpickle posix.system"):
        data.restricted_loads(payload)
    assert not (tmp_path / MARKER).exists()
    for builtin in (eval, exec, getattr):
        crafted = pickle.dumps((builtin,), protocol=2)
        with pytest.raises(DataError, match="refusing"):
            data.restricted_loads(crafted)


def test_restricted_unpickler_rebuilds_numpy_arrays():
    import numpy as np
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64))
    loaded = data.restricted_loads(pickle.dumps(arrays, protocol=2))
    assert all(np.array_equal(a, b) for a, b in zip(arrays, loaded))


def test_a_torch_pickle_in_place_of_safetensors_is_refused(tmp_path, monkeypatch):
    """torch.save writes a pickle; the loader never unpickles, so it is just invalid."""
    monkeypatch.chdir(tmp_path)
    net = random_mlp([6, 5, 3], seed=0)
    models.save(net, Card(name="m", widths=net.widths, objective="none"), tmp_path)
    torch.save({"x": RunsCode()}, tmp_path / "m.safetensors")
    import hashlib
    import json
    card = json.loads((tmp_path / "m.json").read_text())
    card["weights_sha256"] = hashlib.sha256((tmp_path / "m.safetensors").read_bytes()).hexdigest()
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="not a valid safetensors file"):
        models.load("m", tmp_path)
    assert not (tmp_path / MARKER).exists()


def test_plugins_come_only_from_entry_points():
    with pytest.raises(RegistryError, match="unknown verifier"):
        select("verifier", ["os:system"])
    with pytest.raises(RegistryError, match="unknown attack"):
        select("attack", ["verifiers.norm.spectral:Spectral"])
