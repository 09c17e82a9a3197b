"""Golden values of bounds on the shipped networks (first four test images, eps = 0.1).

They pin the numbers the leaderboard reports: a change to a verifier, the data or a
shipped network that moves any of them fails here. Regenerate only on purpose.
The SDP value is pinned to the solver's certified gap (1e-5), the rest to rounding.
"""

from __future__ import annotations

import pytest
import torch

import models
from bench import data
from bench.registry import select
from verifiers.sdp.pair_solver import certified_value, dual_key, pair_block, solve_pair

# max_j U_j for the first four test images
GOLDEN = {
    ("nt-nn", "spectral"): [350.7637366, 342.0539901, 350.5275644, 356.4953181],
    ("nt-nn", "lp"): [100.3144398, 68.73667332, 121.8599247, 74.89017617],
    ("fro-nn", "lp"): [-0.399256261, 0.268137472, -0.2096375883, -0.9367307288],
    ("spe-nn", "spectral"): [1.005776462, 1.86419949, 1.706517534, 0.6480679119],
    ("at-nn", "ibp"): [10.61256531, 8.184280825, 18.16471223, 10.81608469],
    ("sdp-nn", "crown"): [-0.4448005269, 0.4490538833, -0.1431371726, -0.5287086217],
    ("sdp-nn", "frobenius"): [31.23205389, 28.94657066, 29.97147222, 29.06618761],
    ("lp-nn", "lp"): [-3.904385437, -0.4466788437, -2.890002465, -5.256010736],
}


def first_four():
    images, labels = data.mnist_test(4)
    return data.to_tensor(images, torch.float64), torch.from_numpy(labels)


@pytest.mark.parametrize("model, verifier", sorted(GOLDEN))
def test_bound_matches_its_golden_value(model, verifier):
    net, _ = models.load(model)
    x, y = first_four()
    (info,) = select("verifier", [verifier])
    got = info.create().bound(net, x, y, 0.1).amax(dim=1)
    assert got.tolist() == pytest.approx(GOLDEN[(model, verifier)], rel=1e-7, abs=1e-8)


def one_hidden_layer(name: str):
    net, _ = models.load(name)
    return (net, net.linears[0].weight.detach().double().numpy(),
            net.linears[1].weight.detach().double().numpy())


def test_sdp_value_of_nt_nn_pair_0_1():
    _, w, v = one_hidden_layer("nt-nn")
    assert solve_pair(w, v[1] - v[0]).certified == pytest.approx(
        6424.005814328612, rel=2e-5)


@pytest.mark.parametrize("pair, value", [((4, 9), 18.278707291170576),
                                         ((3, 5), 23.969726978652417)])
def test_sdp_nn_trained_dual_certificate(pair, value):
    """The certificate of eq. 16 from SDP-NN's stored dual vector (one eigenvalue)."""
    net, w, v = one_hidden_layer("sdp-nn")
    i, j = pair
    c = net.certificates[dual_key(i, j)].numpy()
    assert certified_value(pair_block(w, v[j] - v[i]), c)[0] == pytest.approx(value, rel=1e-9)
