"""Training recipes: ``--quick`` runs in seconds, lowers its loss, and writes a valid card."""

from __future__ import annotations

import pytest
import torch

import models
from bench import data
from bench.training import RECIPES, TrainingError, train
from tests.test_data import write_idx


@pytest.fixture
def idx_dir(tmp_path):
    images, labels = data.mnist_test(3000)   # stand-in training data, written as IDX files
    write_idx(tmp_path, images, labels, gz=True)
    return tmp_path


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_quick_training_writes_a_loadable_better_than_chance_network(name, idx_dir, tmp_path):
    lines: list[str] = []
    card = train(name, quick=True, data_dir=idx_dir, out_dir=tmp_path / "out", log=lines.append)
    net, loaded = models.load(name, tmp_path / "out")
    assert loaded.weights_sha256 == card.weights_sha256
    assert loaded.hyperparameters["quick"] is True
    assert 0 <= card.clean_test_error < 0.5          # ten classes: chance is 0.9
    assert any("validation error" in line for line in lines)


def test_quick_training_is_reproducible(idx_dir, tmp_path):
    a = train("nt-nn", quick=True, data_dir=idx_dir, out_dir=tmp_path / "a", log=lambda s: None)
    b = train("nt-nn", quick=True, data_dir=idx_dir, out_dir=tmp_path / "b", log=lambda s: None)
    assert a.weights_sha256 == b.weights_sha256


def test_unknown_recipe():
    with pytest.raises(TrainingError, match="trainable: nt-nn"):
        train("nope")
