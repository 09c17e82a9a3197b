"""The SDP-NN regulariser (eq. 15): structured products, warm-started LOBPCG, the
envelope-theorem gradient, and the trained dual vectors as a certificate."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from bench.training.objectives import HingeSDP
from bench.training.sdp_regulariser import (
    dual_objective,
    structured_operator,
    top_eigenpairs,
    top_eigenvalue_of_fixed_vector,
)
from tests.conftest import random_inputs, random_mlp
from verifiers.sdp.pair_solver import (
    certified_value,
    dense_matrix,
    dual_key,
    mixing_dual,
    mixing_rounds,
    pair_block,
    primal_objective,
    solve_pair,
)
from verifiers.sdp.sdp import SDP
from verifiers.sdp.sdp_dual import SDPDual


def instance(seed: int, d: int = 12, m: int = 7, pairs: int = 3):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(m, d, generator=g, dtype=torch.float64)
    v = torch.randn(pairs, m, generator=g, dtype=torch.float64)
    c = torch.rand(pairs, 1 + d + m, generator=g, dtype=torch.float64)
    return weight, v, c


def dense(weight: torch.Tensor, v: torch.Tensor, c: torch.Tensor) -> np.ndarray:
    """``M(W, v) - diag(c)`` formed densely from the verifiers' own ``pair_block``."""
    return dense_matrix(pair_block(weight.numpy(), v.numpy())) - np.diag(c.numpy())


@pytest.mark.parametrize("seed", range(3))
def test_structured_product_equals_the_dense_matrix(seed):
    weight, v, c = instance(seed)
    block = torch.randn(len(v), c.shape[1], 4, dtype=torch.float64)
    product = structured_operator(weight, v, c)(block)
    for p in range(len(v)):
        np.testing.assert_allclose(product[p].numpy(), dense(weight, v[p], c[p]) @ block[p].numpy(),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_lobpcg_finds_the_top_eigenvalue_and_never_exceeds_it(seed):
    weight, v, c = instance(seed, d=30, m=20)
    start = torch.randn(len(v), c.shape[1], 4, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(seed))
    operator = structured_operator(weight, v, c)
    exact = [scipy.linalg.eigvalsh(dense(weight, v[p], c[p]))[-1] for p in range(len(v))]
    few, _ = top_eigenpairs(operator, start, 2)
    many, vectors = top_eigenpairs(operator, start, 60)
    assert (few[:, 0].numpy() <= np.array(exact) + 1e-9).all()     # Rayleigh quotients
    np.testing.assert_allclose(many[:, 0].numpy(), exact, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(torch.linalg.norm(vectors[:, :, 0], dim=1).numpy(), 1.0)


def test_envelope_gradient_equals_the_eigenvalue_gradient():
    """With the exact top eigenvector held fixed, autograd of ``u^T (M - diag c) u``
    equals the gradient of ``lambda_max`` computed by differentiating a dense eigh."""
    weight, v, c = instance(7, d=10, m=6, pairs=1)
    weight.requires_grad_(True), v.requires_grad_(True), c.requires_grad_(True)
    d, m = weight.shape[1], weight.shape[0]
    # dense M from torch ops so that autograd reaches W, v, c
    a = weight.T * v[0][None, :]
    full = torch.zeros(1 + d + m, 1 + d + m, dtype=torch.float64)
    full = full.index_put((torch.arange(1, 1 + d), torch.zeros(d, dtype=torch.long)), a.sum(1))
    rows = torch.arange(1, 1 + d).repeat_interleave(m)
    cols = (1 + d + torch.arange(m)).repeat(d)
    full = full.index_put((rows, cols), a.reshape(-1))
    full = full + full.T - torch.diag(c[0])
    values, vectors = torch.linalg.eigh(full)
    reference = torch.autograd.grad(values[-1], (weight, v, c))
    u = vectors[:, -1].detach()[None, :]
    ours = torch.autograd.grad(top_eigenvalue_of_fixed_vector(weight, v, c, u).sum(),
                               (weight, v, c))
    for got, want in zip(ours, reference):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_dual_objective_with_the_top_eigenvector_is_the_eq_14_certificate():
    weight, v, c = instance(3, d=15, m=9, pairs=2)
    for p in range(len(v)):
        matrix = dense(weight, v[p], c[p])
        values, vectors = np.linalg.eigh(matrix)
        u = torch.from_numpy(vectors[:, -1])[None, :]
        got = float(dual_objective(weight, v[p:p + 1], c[p:p + 1], u)[0])
        want = len(matrix) * max(values[-1], 0) + np.maximum(c[p].numpy(), 0).sum()
        assert got == pytest.approx(want, rel=1e-10)


def random_factors(pairs: int, rank: int, d: int, m: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    side_t = torch.randn(pairs, rank, d, generator=g, dtype=torch.float64)
    side_s = torch.randn(pairs, rank, m + 1, generator=g, dtype=torch.float64)
    return side_t, side_s / side_s.norm(dim=1, keepdim=True)


def test_mixing_rounds_climb_to_the_sdp_value_and_certify_it():
    weight, v, _ = instance(5, d=14, m=8, pairs=2)
    side_t, side_s = random_factors(2, 8, 14, 8, seed=0)
    values = []
    for _ in range(60):
        side_t, side_s, _ = mixing_rounds(weight, v, side_s, 5)
        values.append(primal_objective(weight, v, side_t, side_s))
    values = torch.stack(values)
    assert (values.diff(dim=0) >= -1e-9).all()                       # monotone ascent
    c = mixing_dual(weight, v, side_t, side_s)
    for p in range(2):
        block = pair_block(weight.numpy(), v[p].numpy())
        exact = solve_pair(weight, v[p], target_gap=1e-9, max_iters=20000).certified
        assert float(values[-1, p]) <= exact * (1 + 1e-9)             # a feasible primal
        assert float(values[-1, p]) == pytest.approx(exact, rel=1e-6)
        assert certified_value(block, c[p].numpy())[0] == pytest.approx(exact, rel=1e-4)


def test_primal_gradient_is_the_derivative_of_the_sdp_value():
    """Danskin: at the maximiser, d<M(W), P*>/dW = dSDP(M(W))/dW (central differences)."""
    weight, v, _ = instance(11, d=6, m=4, pairs=1)
    side_t, side_s, _ = mixing_rounds(weight, v, random_factors(1, 6, 6, 4, seed=1)[1], 4000)
    w = weight.clone().requires_grad_(True)
    grad, = torch.autograd.grad(primal_objective(w, v, side_t, side_s).sum(), w)

    def sdp(matrix: torch.Tensor) -> float:
        return solve_pair(matrix, v[0], target_gap=1e-11, max_iters=100000, rank=6,
                          dtype=torch.float64).certified
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        direction = torch.randn(weight.shape, generator=g, dtype=torch.float64)
        h = 1e-4
        numeric = (sdp(weight + h * direction) - sdp(weight - h * direction)) / (2 * h)
        assert float((grad * direction).sum()) == pytest.approx(numeric, rel=1e-3, abs=1e-6)


def train_tiny(regulariser: str):
    net = random_mlp([20, 16, 3], seed=1)
    net.train()
    x, y = random_inputs(256, 20, 3, seed=2)
    objective = HingeSDP(net, lam=0.01, eps=0.1, regulariser=regulariser, rank=6)
    optimizer = torch.optim.Adam([*net.parameters(), *objective.parameters()], lr=1e-3)
    history = []
    for step in range(600):
        idx = torch.arange(step % 4 * 64, step % 4 * 64 + 64)
        loss, reg = objective(net, x[idx], y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(reg))
    objective.finish(net)
    return net.eval(), history


@pytest.fixture(scope="module", params=["dual", "primal"])
def trained(request):
    """A 20-16-3 network trained 600 steps with the SDP-NN objective, each regulariser."""
    return request.param, *train_tiny(request.param)


def test_training_lowers_the_regulariser_and_the_true_sdp(trained):
    _, net, history = trained
    assert np.mean(history[-20:]) < 0.7 * np.mean(history[:20])
    untrained = random_mlp([20, 16, 3], seed=1)
    assert SDP().pair_values(net).sum() < 0.7 * SDP().pair_values(untrained).sum()


def test_saved_dual_vectors_certify(trained):
    """Every saved ``c`` gives an upper bound on SDP(M) (eq. 16); the primal mode's mixing
    duals are close to the optimum (paper Figure 4b), the dual mode's within a few x."""
    regulariser, net, _ = trained
    assert {dual_key(i, j) for i in range(3) for j in range(i + 1, 3)} <= \
        set(net.certificates)
    exact, dual = SDP().pair_values(net), SDPDual().pair_values(net)
    upper = np.triu_indices(3, 1)
    assert (dual[upper] >= exact[upper] * (1 - 1e-5)).all()
    assert (dual[upper] <= (1.05 if regulariser == "primal" else 5) * exact[upper]).all()
