"""Verifiers on general linear specifications (VNNLIB's form): sound by sampling, and
equal to the margin bounds on robustness properties."""

from __future__ import annotations

import pytest
import torch

from bench.contract import Property, refuted
from tests.conftest import random_inputs, random_mlp
from verifiers.linear.crown import Crown
from verifiers.linear.ibp import IBP
from verifiers.linear.lp import LP

VERIFIERS = [LP(), Crown(), IBP()]


def random_property(seed: int, d: int, k: int) -> Property:
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(d, generator=g, dtype=torch.float64) * 0.8
    hi = lo + 0.2 * torch.rand(d, generator=g, dtype=torch.float64)
    groups = tuple((torch.randn(int(torch.randint(1, 4, (1,), generator=g)), k, generator=g,
                                dtype=torch.float64),
                    torch.randn(1, generator=g, dtype=torch.float64).expand(1).clone())
                   for _ in range(3))
    groups = tuple((m, torch.randn(len(m), generator=g, dtype=torch.float64)) for m, _ in groups)
    return Property(lo, hi, groups)


@pytest.mark.parametrize("verifier", VERIFIERS, ids=lambda v: v.name)
@pytest.mark.parametrize("widths", [[6, 8, 4], [6, 8, 8, 4], [6, 7, 7, 7, 3]],
                         ids=["depth1", "depth2", "depth3"])
def test_row_bounds_are_above_every_sampled_value(verifier, widths):
    net = random_mlp(widths, seed=len(widths), scale=1.5)
    net64 = net.float64_copy()
    for seed in range(4):
        prop = random_property(seed, widths[0], widths[-1])
        uppers = verifier.bound_property(net, prop)
        g = torch.Generator().manual_seed(seed)
        corners = torch.randint(0, 2, (2000, widths[0]), generator=g).double()
        inside = torch.rand(2000, widths[0], generator=g, dtype=torch.float64)
        points = prop.lo + (prop.hi - prop.lo) * torch.cat([corners, inside])
        with torch.no_grad():
            outputs = net64(points)
        for (matrix, offset), upper in zip(prop.groups, uppers):
            assert upper.dtype == torch.float64 and upper.shape == offset.shape
            seen = (outputs @ matrix.T - offset).amax(dim=0)
            assert (seen <= upper + 1e-9).all()
        if refuted(uppers):                       # a proof: no sampled point is unsafe
            assert not prop.violated_by(outputs).any()


@pytest.mark.parametrize("verifier", VERIFIERS, ids=lambda v: v.name)
def test_a_robustness_property_gives_the_margin_bounds(verifier):
    net = random_mlp([12, 10, 10, 5], seed=3)
    x, y = random_inputs(4, 12, 5, seed=4)
    margins_bound = verifier.bound(net, x.double(), y, 0.05)
    for n in range(4):
        prop = Property.robustness(x[n], int(y[n]), 0.05, 5)
        uppers = torch.cat(verifier.bound_property(net, prop))
        others = [j for j in range(5) if j != int(y[n])]
        assert torch.allclose(uppers, margins_bound[n, others], rtol=1e-12, atol=1e-12)
