"""Training recipes: ``--quick`` runs in seconds, writes a valid card, and each
regulariser does its job (smaller than in the same training without it)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import models
from bench import data
from bench.training.objectives import OBJECTIVES, HingeSDP
from bench.training.trainer import RECIPES, TrainingError, train
from tests.test_data import write_idx
from verifiers.sdp.sdp import SDP


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("idx")
    images, labels = data.mnist_test(3000)   # stand-in training data, written as IDX files
    write_idx(folder, images, labels, gz=True)
    return folder


@pytest.fixture(scope="module")
def held_out():
    images, labels = data.mnist_test(10_000)
    return data.to_tensor(images[-500:]), torch.from_numpy(labels[-500:])


def quick(name, idx_dir, folder, recipe=None):
    card = train(name, quick=True, data_dir=idx_dir, out_dir=folder, log=lambda s: None,
                 recipe=recipe)
    return models.load(card.name, folder)[0], card


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_quick_training_writes_a_loadable_better_than_chance_network(name, idx_dir, tmp_path):
    net, card = quick(name, idx_dir, tmp_path)
    assert card.hyperparameters["quick"] is True and card.objective == RECIPES[name].objective
    assert 0 <= card.clean_test_error < 0.6           # ten classes: chance is 0.9


# sdp-nn's case (8 s, two SDP-regularised trainings) is slow: tests/test_sdp_regulariser.py
# checks in the default suite that that training lowers the regulariser
@pytest.mark.parametrize("name, baseline", [("fro-nn", {"lam": 0.0}), ("spe-nn", {"lam": 0.0}),
                                            ("at-nn", {"lam": 0.0}), ("lp-nn", None),
                                            pytest.param("sdp-nn", {"lam": 0.0},
                                                         marks=pytest.mark.slow)])
def test_the_regulariser_is_smaller_than_without_it(name, baseline, idx_dir, tmp_path, held_out):
    recipe = RECIPES[name]
    plain = replace(recipe, extra={**recipe.extra, **baseline}) if baseline else \
        replace(RECIPES["nt-nn"], name=name)
    regularised, _ = quick(name, idx_dir, tmp_path / "with", recipe)
    unregularised, _ = quick(name, idx_dir, tmp_path / "without", plain)
    objective = OBJECTIVES[recipe.objective]
    x, y = held_out

    def regulariser(net):
        if objective is HingeSDP:       # the regularised quantity: the SDP values themselves
            return float(SDP().pair_values(net).sum())
        torch.manual_seed(0)
        return float(objective(net, x, y, **recipe.extra)[1])
    assert regulariser(regularised) < regulariser(unregularised)


def test_quick_training_is_reproducible(idx_dir, tmp_path):
    _, a = quick("nt-nn", idx_dir, tmp_path / "a")
    _, b = quick("nt-nn", idx_dir, tmp_path / "b")
    assert a.weights_sha256 == b.weights_sha256


def test_unknown_recipe(tmp_path):
    with pytest.raises(TrainingError, match="trainable: at-nn, fc-2x256, fc-2x256-at, "
                                            "fc-4x256, .*, pgd-2x200, sdp-nn, spe-nn"):
        train("nope", out_dir=tmp_path)
