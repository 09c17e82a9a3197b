"""The sign convention and the projection every plugin relies on."""

import torch

from bench.contract import margins, pair_difference_norms, project


def test_margins_are_wrong_minus_true_with_minus_inf_on_the_label():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 4.0]])
    y = torch.tensor([1, 0])
    out = margins(logits, y)
    assert out[0].tolist() == [-2.0, float("-inf"), -1.0]
    assert out[1].tolist() == [float("-inf"), -1.5, 3.5]


def test_project_lands_in_ball_and_box():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(50, 30, generator=g)
    x_adv = x + 3 * torch.randn(50, 30, generator=g)
    p = project(x_adv, x, 0.1)
    assert (p - x).abs().max() <= 0.1 + 1e-7
    assert p.min() >= 0 and p.max() <= 1
    inside = project(p, x, 0.1)
    assert torch.equal(inside, p)  # idempotent


def test_pair_difference_norms_matches_loop():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(4, 7, generator=g, dtype=torch.float64)
    out = pair_difference_norms(v)
    for i in range(4):
        for j in range(4):
            assert torch.isclose(out[i, j], torch.linalg.norm(v[i] - v[j]), atol=1e-12)
