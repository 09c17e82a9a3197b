"""Frobenius and spectral bounds (paper eq. 17, 18): closed form, order, soundness."""

import math

import numpy as np
import pytest
import torch

from tests.conftest import assert_sound, random_inputs, random_mlp
from verifiers.norm.frobenius import Frobenius
from verifiers.norm.spectral import Spectral

EPS = 0.1


def test_matches_numpy_closed_form():
    net = random_mlp([12, 8, 3], seed=0)
    x, y = random_inputs(5, 12, 3, seed=1)
    w = net.linears[0].weight.detach().double().numpy()
    v = net.linears[1].weight.detach().double().numpy()
    with torch.no_grad():
        logits = net.float64_copy()(x.double()).numpy()
    norms = {"spectral": np.linalg.svd(w, compute_uv=False)[0],
             "frobenius": np.sqrt((w ** 2).sum())}
    for verifier in (Spectral(), Frobenius()):
        out = verifier.bound(net, x.double(), y, EPS).numpy()
        assert out.dtype == np.float64
        for n in range(5):
            for j in range(3):
                if j == y[n]:
                    assert out[n, j] == -np.inf
                    continue
                expected = logits[n, j] - logits[n, y[n]] + EPS * math.sqrt(12) * \
                    norms[verifier.name] * np.linalg.norm(v[j] - v[y[n]])
                assert out[n, j] == pytest.approx(expected, rel=1e-12)


def test_spectral_is_never_looser_than_frobenius():
    net = random_mlp([784, 50, 10], seed=2)
    x, y = random_inputs(30, 784, 10, seed=3)
    s = Spectral().bound(net, x.double(), y, EPS)
    f = Frobenius().bound(net, x.double(), y, EPS)
    finite = torch.isfinite(s)
    assert (s[finite] <= f[finite] + 1e-9).all()


@pytest.mark.parametrize("verifier", [Spectral(), Frobenius()], ids=lambda v: v.name)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sound_against_sampling_and_pgd(verifier, seed):
    d, k = 16, 4
    net = random_mlp([d, 12, k], seed=seed, scale=2.0)
    x, y = random_inputs(25, d, k, seed=seed + 100)
    eps = 0.15
    assert_sound(verifier.bound(net, x.double(), y, eps), net, x, y, eps, seed=seed)


def test_supports_only_one_hidden_layer():
    for widths in ([5, 3], [5, 4, 4, 3]):
        net = random_mlp(widths, seed=0)
        assert not Spectral().supports(net)
        assert not Frobenius().supports(net)
    assert Spectral().supports(random_mlp([5, 4, 3], seed=0))
