"""A linear classifier: ``worst(x, j) = f_j(x) - f_y(x) + eps * ||W_j - W_y||_1`` exactly
(when the ball lies inside the box), and the attacks plus the harness attain it."""

import pytest
import torch

from attacks.fgsm import FGSM
from attacks.pgd import PGD
from bench.contract import margins, project
from tests.conftest import random_inputs, random_mlp

EPS = 0.05


def closed_form(net, x, y, eps):
    """``U[n, j] = f_j(x) - f_y(x) + eps ||W_j - W_y||_1``, float64, ``(N, K)``."""
    w = net.linears[0].weight.detach().double()
    with torch.no_grad():
        clean = margins(net.float64_copy()(x.double()), y)
    l1 = (w[:, None, :] - w[None, :, :]).abs().sum(-1)        # (K, K)
    return clean + eps * l1[y]


def attained(net, x, x_adv, y, eps):
    with torch.no_grad():
        return margins(net.float64_copy()(project(x_adv.double(), x.double(), eps)), y)


def test_binary_fgsm_attains_the_exact_worst_case():
    net = random_mlp([40, 2], seed=3)
    x, y = random_inputs(64, 40, 2, seed=4, margin=EPS)   # the ball lies inside [0, 1]^d
    exact = closed_form(net, x, y, EPS).amax(dim=1)
    reached = attained(net, x, FGSM().perturb(net, x, y, EPS), y, EPS).amax(dim=1)
    assert torch.allclose(reached, exact, atol=1e-5)


def test_sign_step_towards_each_class_attains_each_column():
    net = random_mlp([30, 5], seed=5)
    x, y = random_inputs(20, 30, 5, seed=6, margin=EPS)
    exact = closed_form(net, x, y, EPS)
    w = net.linears[0].weight.detach().double()
    for j in range(5):
        x_adv = x.double() + EPS * torch.sign(w[j] - w[y])
        reached = attained(net, x, x_adv, y, EPS)[:, j]
        keep = y != j
        assert torch.allclose(reached[keep], exact[keep, j], atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_pgd_never_exceeds_the_exact_value(seed):
    net = random_mlp([30, 4], seed=seed)
    x, y = random_inputs(32, 30, 4, seed=seed + 10, margin=EPS)
    exact = closed_form(net, x, y, EPS).amax(dim=1)
    torch.manual_seed(0)
    reached = attained(net, x, PGD(steps=30, restarts=2).perturb(net, x, y, EPS), y, EPS).amax(1)
    assert (reached <= exact + 1e-9).all()


def test_binary_pgd_walks_to_the_best_corner():
    # with two classes the cross-entropy gradient is a positive multiple of W_j - W_y,
    # so 30 signed steps of eps/10 from any start in the ball end on the optimal corner
    net = random_mlp([30, 2], seed=7)
    x, y = random_inputs(32, 30, 2, seed=8, margin=EPS)
    exact = closed_form(net, x, y, EPS).amax(dim=1)
    torch.manual_seed(0)
    reached = attained(net, x, PGD(steps=30, restarts=1).perturb(net, x, y, EPS), y, EPS).amax(1)
    assert torch.allclose(reached, exact, atol=1e-5)
