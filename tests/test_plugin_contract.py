"""Every discovered plugin honours the contract of bench/contract.py."""

from __future__ import annotations

import pytest
import torch

from bench.contract import Attack, Verifier, margins, project, supports
from bench.registry import discover
from tests.conftest import random_inputs, random_mlp

VERIFIERS = sorted(discover("verifier").values(), key=lambda i: i.name)
ATTACKS = sorted(discover("attack").values(), key=lambda i: i.name)
EPS = 0.1


@pytest.fixture(scope="module")
def net_and_data():
    net = random_mlp([36, 10, 5], seed=11, scale=2.0)
    x, y = random_inputs(16, 36, 5, seed=12)
    return net, x, y


@pytest.mark.parametrize("info", VERIFIERS, ids=lambda i: i.name)
def test_verifier_contract(info, net_and_data):
    net, x, y = net_and_data
    plugin = info.create()
    assert isinstance(plugin, Verifier) and plugin.name == info.name
    assert repr(plugin).startswith(type(plugin).__name__ + "(")
    if not supports(plugin, net):
        pytest.skip(f"{info.name} does not support this network (one hidden layer; or it "
                    "needs configuring, as external)")
    upper = plugin.bound(net, x.double(), y, EPS)
    assert upper.shape == (16, 5) and upper.dtype == torch.float64
    assert torch.isneginf(upper.gather(1, y.view(-1, 1))).all()
    off = upper.scatter(1, y.view(-1, 1), 0.0)
    assert torch.isfinite(off).all()
    with torch.no_grad():  # a sound bound is above the clean margin (x is in the ball)
        clean = margins(net.float64_copy()(x.double()), y)
    assert (clean <= upper + 1e-9).all()
    again = plugin.bound(net, x.double(), y, EPS)
    assert torch.equal(upper, again)
    from_float32 = plugin.bound(net, x[:4], y[:4], EPS)  # float64 out whatever comes in
    assert from_float32.dtype == torch.float64 and from_float32.shape == (4, 5)


@pytest.mark.parametrize("info", ATTACKS, ids=lambda i: i.name)
def test_attack_contract(info, net_and_data):
    net, x, y = net_and_data
    plugin = info.create()
    assert isinstance(plugin, Attack) and plugin.name == info.name
    assert repr(plugin).startswith(type(plugin).__name__ + "(")
    torch.manual_seed(5)
    x_adv = plugin.perturb(net, x, y, EPS)
    assert x_adv.shape == x.shape and torch.isfinite(x_adv).all()
    torch.manual_seed(5)
    assert torch.equal(x_adv, plugin.perturb(net, x, y, EPS)), "not deterministic under a seed"
    assert (project(x_adv, x, EPS) - x_adv).abs().max() <= 1e-6, "left the ball or the box"
