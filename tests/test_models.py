"""Networks: safetensors + card round trip, verification on load, the shipped NT-NN."""

from __future__ import annotations

import json

import pytest
import torch

import models
from bench import data
from bench.training.trainer import error_rate
from models import MLP, Card, ModelError
from tests.conftest import random_mlp


def test_round_trip(tmp_path):
    net = random_mlp([6, 5, 4, 3], seed=0)
    models.save(net, Card(name="deep", widths=net.widths, objective="none"), tmp_path)
    loaded, card = models.load("deep", tmp_path)
    assert card.widths == [6, 5, 4, 3] and loaded.hidden_layers == 2
    x = torch.rand(4, 6)
    assert torch.equal(loaded(x), net(x))


@pytest.fixture
def saved(tmp_path):
    net = random_mlp([6, 5, 3], seed=1)
    models.save(net, Card(name="m", widths=net.widths, objective="none"), tmp_path)
    return tmp_path


def _rewrite_card(folder, **changes):
    path = folder / "m.json"
    card = json.loads(path.read_text())
    card.update(changes)
    path.write_text(json.dumps(card))


def test_sha_mismatch_is_refused(saved):
    _rewrite_card(saved, weights_sha256="0" * 64)
    with pytest.raises(ModelError, match="does not match its card"):
        models.load("m", saved)


def test_truncated_weights_are_refused(saved):
    path = saved / "m.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelError, match="SHA-256"):
        models.load("m", saved)


def test_wrong_shapes_for_the_card_are_refused(saved):
    _rewrite_card(saved, architecture={"type": "mlp", "widths": [6, 4, 3]})
    with pytest.raises(ModelError, match="do not match the card's widths"):
        models.load("m", saved)


def test_non_finite_weights_are_refused(tmp_path):
    net = random_mlp([6, 5, 3], seed=2)
    with torch.no_grad():
        net.linears[0].weight[0, 0] = float("nan")
    models.save(net, Card(name="m", widths=net.widths, objective="none"), tmp_path)
    with pytest.raises(ModelError, match="NaN or infinite"):
        models.load("m", tmp_path)


def test_unknown_model_lists_the_available_ones(saved):
    with pytest.raises(ModelError, match="unknown model 'x'; available: m"):
        models.load("x", saved)


def test_mlp_rejects_degenerate_widths():
    with pytest.raises(ValueError):
        MLP([784])


@pytest.mark.parametrize("name", models.shipped_names())
def test_shipped_networks_match_their_cards(name):
    net, card = models.load(name)                  # checks SHA-256, shapes, finiteness
    assert net.widths == [784, 500, 10] and card.name == name
    assert card.hyperparameters.get("quick") is False
    images, labels = data.mnist_test()
    measured = error_rate(net, data.to_tensor(images), torch.from_numpy(labels))
    assert measured == pytest.approx(card.clean_test_error, abs=1e-12)


def test_nt_nn_is_accurate():
    _, card = models.load("nt-nn")
    assert card.objective == "cross-entropy" and card.clean_test_error <= 0.03


@pytest.mark.parametrize("name", models.shipped_names())
def test_shipped_networks_follow_their_recipes(name):
    """What ships is what ``python -m bench train NAME`` trains: same objective, widths,
    seed and hyper-parameters (a changed recipe fails here). The training time is the
    card's own record, reported in docs/networks-and-data.md, not something a test can check."""
    from bench.training.trainer import RECIPES
    net, card = models.load(name)
    recipe = RECIPES[name]
    assert card.objective == recipe.objective and card.seed == recipe.seed
    assert tuple(net.widths) == tuple(recipe.widths)
    expected = recipe.hyperparameters()
    assert {k: card.hyperparameters.get(k) for k in expected} == expected
