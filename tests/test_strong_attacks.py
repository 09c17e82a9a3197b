"""APGD, Square and the ensemble: the closed-form worst case of a linear classifier,
gradient masking, and never weaker than a member."""

from __future__ import annotations

import copy

import pytest
import torch

import models
from attacks.apgd import checkpoints, dlr_loss
from attacks.apgd_ce import APGDCrossEntropy
from attacks.apgd_dlr import APGDDifferenceOfLogitsRatio
from attacks.ensemble import Ensemble
from attacks.pgd import PGD
from attacks.square import Square, image_layout, window_fraction
from bench import data
from bench.contract import margins, project
from models import MLP
from tests.conftest import random_inputs, random_mlp

EPS = 0.1


def linear_classifier(d: int = 16, offset: float = 6.0, far: float = -50.0, seed: int = 0
                      ) -> tuple[MLP, torch.Tensor, torch.Tensor]:
    """A linear classifier behind an always-active ReLU layer (inputs are >= 0):
    ``z = (u, -u, far, far)`` with ``u = a.x + offset``; and ``(a, offset)``.

    Every loss here (cross-entropy, DLR untargeted and targeted at class 1, the
    margin) is monotone in ``u`` on this network, so each attack's optimum is the
    corner of ``B_eps(x) ∩ [0, 1]^d`` that minimises ``a.x``.
    """
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, generator=g)
    net = MLP([d, d, 4])
    with torch.no_grad():
        net.linears[0].weight.copy_(torch.eye(d))
        net.linears[0].bias.zero_()
        net.linears[1].weight.copy_(torch.stack([a, -a, torch.zeros(d), torch.zeros(d)]))
        net.linears[1].bias.copy_(torch.tensor([offset, -offset, far, far]))
    return net.eval(), a, torch.tensor(offset)


def worst_margin_closed_form(a: torch.Tensor, offset: torch.Tensor, x: torch.Tensor
                             ) -> torch.Tensor:
    """``max over B_eps(x) ∩ [0, 1]^d`` of ``f_1 - f_0 = -2 (a.x' + offset)``: ``(N,)``."""
    lo, hi = (x - EPS).clamp(0, 1), (x + EPS).clamp(0, 1)
    smallest = torch.where(a > 0, lo, hi) @ a.to(x.dtype)
    return -2 * (smallest + offset)


def worst_margins(net: MLP, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return margins(net.float64_copy()(x_adv.double()), y).amax(dim=1)


ATTACKS = [APGDCrossEntropy(steps=30), APGDDifferenceOfLogitsRatio(steps=30),
           APGDDifferenceOfLogitsRatio(steps=30, targeted=False), Square(queries=1500),
           Ensemble(members="square,apgd-ce", restarts=1)]


@pytest.mark.parametrize("attack", ATTACKS, ids=repr)
def test_reaches_the_worst_case_of_a_linear_classifier(attack):
    net, a, offset = linear_classifier()
    x = 0.2 + 0.6 * torch.rand(12, 16, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(12, dtype=torch.int64)
    best = worst_margin_closed_form(a, offset, x.double())
    assert (best < 0).all(), "the test needs samples that no point breaks"
    torch.manual_seed(0)
    x_adv = attack.perturb(net, x, y, EPS)
    assert (project(x_adv, x, EPS) - x_adv).abs().max() <= 1e-7, "left the ball or the box"
    reached = worst_margins(net, x_adv, y)
    assert reached == pytest.approx(best, abs=1e-4)


class Rounded(torch.nn.Module):
    """A network that rounds its input to multiples of 1/255 (a quantisation "defence"):
    every input gradient is zero, so gradient attacks see nothing (masked)."""

    def __init__(self, inner: MLP) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 255) / 255)

    def float64_copy(self) -> "Rounded":
        return Rounded(self.inner.float64_copy())


def test_square_breaks_a_network_with_masked_gradients_where_pgd_does_not():
    net = Rounded(models.load("nt-nn")[0])
    images, labels = data.mnist_test(40)
    x, y = data.to_tensor(images, torch.float32), torch.from_numpy(labels)
    eps = 0.1
    torch.manual_seed(0)
    by_pgd = worst_margins(net, project(PGD(steps=20, restarts=1).perturb(net, x, y, eps),
                                        x, eps), y)
    torch.manual_seed(0)
    by_square = worst_margins(net, project(Square(queries=300).perturb(net, x, y, eps),
                                           x, eps), y)
    broken_pgd, broken_square = int((by_pgd >= 0).sum()), int((by_square >= 0).sum())
    assert broken_pgd <= 2 and broken_square >= 10, (broken_pgd, broken_square)
    gradient = torch.zeros_like(x).requires_grad_(True)
    net(x + gradient).sum().backward()
    assert gradient.grad.abs().max() == 0, "the network was meant to mask its gradients"


def test_ensemble_is_never_weaker_than_a_member_on_any_sample():
    """Deterministic members (FGSM, CW from ``x``) give each sample the same point alone
    and inside the ensemble, so the comparison is per sample and exact."""
    net = random_mlp([20, 16, 5], seed=7, scale=1.5)
    x, y = random_inputs(64, 20, 5, seed=8)
    ensemble = Ensemble(members="fgsm,cw", restarts=1)
    together = worst_margins(net, project(ensemble.perturb(net, x, y, EPS), x, EPS), y)
    for member in ensemble._members:
        alone = worst_margins(net, project(member.perturb(net, x, y, EPS), x, EPS), y)
        assert ((together >= alone - 1e-12) | (together >= 0)).all(), member
    assert (together >= 0).sum() > 0


def test_apgd_leaves_the_network_and_inputs_untouched():
    net = random_mlp([20, 16, 5], seed=7)
    before = copy.deepcopy(net.state_dict())
    x, y = random_inputs(8, 20, 5, seed=8)
    x0 = x.clone()
    APGDDifferenceOfLogitsRatio(steps=5).perturb(net, x, y, EPS)
    assert torch.equal(x, x0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_apgd_checkpoints_follow_the_paper():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
    assert checkpoints(100)[:6] == [22, 41, 57, 70, 80, 87]
    assert checkpoints(100)[-1] <= 100


def test_dlr_is_invariant_to_shift_and_scale_of_the_logits():
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(2))
    y = torch.arange(6)
    target = (y + 1) % 10
    for t in (None, target):
        assert dlr_loss(3 * logits + 7, y, t) == pytest.approx(dlr_loss(logits, y, t), rel=1e-5)


def test_square_schedule_and_layout():
    assert window_fraction(0.8, 0, 5000) == 0.8
    assert window_fraction(0.8, 4999, 5000) == pytest.approx(0.8 / 512)
    assert image_layout(784, "auto") == (1, 28, 28)
    assert image_layout(3072, "auto") == (3, 32, 32)
    assert image_layout(5, "auto") == (1, 1, 5)
    with pytest.raises(ValueError, match="does not describe"):
        image_layout(784, "1,28,27")


@pytest.mark.parametrize("options, message", [({"members": ""}, "at least one"),
                                              ({"members": "pgd,pgd"}, "distinct"),
                                              ({"members": "ensemble"}, "distinct"),
                                              ({"members": "nope"}, "unknown"),
                                              ({"restarts": 0}, "restarts must be")])
def test_ensemble_rejects_bad_members(options, message):
    with pytest.raises(ValueError, match=message):
        Ensemble(**options)


def test_ensemble_gives_its_restarts_to_every_member_that_has_them():
    ensemble = Ensemble(members="apgd-dlr,square", restarts=3)
    assert [member.restarts for member in ensemble._members] == [3, 3]
    assert "restarts=3" in repr(ensemble) and Ensemble().restarts == 5
