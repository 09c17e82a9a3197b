"""LP-style verifiers: soundness at depth 1-3, lp-exact <= lp, cvxpy cross-check,
exactness on stable networks, differentiability."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.contract import margins
from tests.conftest import assert_sound, random_inputs, random_mlp
from verifiers.linear.crown import Crown
from verifiers.linear.ibp import IBP
from verifiers.linear.lp import LP
from verifiers.linear.propagation import input_box, margin_upper_bounds, wong_kolter_slope
from verifiers.mip.lp_exact import LPExact
from verifiers.mip.relu_program import sample_batch

VERIFIERS = [LP(), LPExact(), IBP(), Crown()]
DEPTHS = {1: [10, 8, 3], 2: [10, 8, 6, 3], 3: [10, 6, 6, 5, 3]}


@pytest.mark.parametrize("depth", sorted(DEPTHS))
@pytest.mark.parametrize("verifier", VERIFIERS, ids=lambda v: v.name)
def test_sound_against_sampling_and_pgd(verifier, depth):
    net = random_mlp(DEPTHS[depth], seed=depth, scale=1.5)
    x, y = random_inputs(12, 10, 3, seed=depth + 20)
    with torch.no_grad():
        upper = verifier.bound(net, x.double(), y, 0.1)
    assert_sound(upper, net, x, y, 0.1, seed=3)


@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_exact_lp_is_never_above_the_dual_bounds(depth):
    net = random_mlp(DEPTHS[depth], seed=depth + 5, scale=1.5)
    x, y = random_inputs(10, 10, 3, seed=depth + 30)
    with torch.no_grad():
        exact = LPExact().bound(net, x.double(), y, 0.1)
        lp = LP().bound(net, x.double(), y, 0.1)
        crown = Crown().bound(net, x.double(), y, 0.1)
    finite = torch.isfinite(exact)
    assert (exact[finite] <= lp[finite] + 1e-7).all()
    assert (exact[finite] <= crown[finite] + 1e-7).all()
    assert (exact[finite] < lp[finite] - 1e-6).any()        # the LP optimum is strictly tighter


def cvxpy_triangle_lp(params, bounds, lo, hi, c):
    """The same triangle LP written independently in cvxpy (pre-activations substituted)."""
    import cvxpy as cp
    x = cp.Variable(lo.shape[0])
    constraints, prev = [x >= lo, x <= hi], x
    for k, (w, b) in enumerate(params[:-1]):
        lower, upper = bounds[k]
        z = cp.Variable(w.shape[0])
        pre = w @ prev + b
        for i in range(w.shape[0]):
            if lower[i] >= 0:
                constraints.append(z[i] == pre[i])
            elif upper[i] <= 0:
                constraints.append(z[i] == 0)
            else:
                slope = upper[i] / (upper[i] - lower[i])
                constraints += [z[i] >= 0, z[i] >= pre[i], z[i] <= slope * (pre[i] - lower[i])]
        prev = z
    w, b = params[-1]
    problem = cp.Problem(cp.Maximize(c @ (w @ prev + b)), constraints)
    problem.solve(solver="CLARABEL")
    return problem.value


@pytest.mark.parametrize("depth", [1, 2])
def test_exact_lp_agrees_with_cvxpy(depth):
    net = random_mlp(DEPTHS[depth], seed=depth + 9, scale=1.5)
    x, y = random_inputs(4, 10, 3, seed=depth + 40)
    with torch.no_grad():
        exact = LPExact().bound(net, x.double(), y, 0.1)
    batch = sample_batch(net, x, 0.1, clip=True)      # the same intermediate bounds
    np_params, bounds, lo, hi = batch.np_params, batch.bounds, batch.lo, batch.hi
    for n in range(4):
        for j in range(3):
            if j == int(y[n]):
                continue
            c = np.zeros(3)
            c[j], c[int(y[n])] = 1.0, -1.0
            reference = cvxpy_triangle_lp(np_params, [(l[n].numpy(), u[n].numpy())
                                                      for l, u in bounds],
                                          lo[n].numpy(), hi[n].numpy(), c)
            assert float(exact[n, j]) == pytest.approx(reference, abs=1e-6, rel=1e-6)


def stable_network():
    """One hidden layer whose units are all stable in the ball: large +/- biases."""
    net = random_mlp([12, 9, 4], seed=13)
    with torch.no_grad():
        signs = torch.tensor([1.0, -1.0] * 4 + [1.0])
        net.linears[0].bias.copy_(5.0 * signs)
    return net, (signs > 0).double()


def test_stable_network_bounds_are_the_exact_linear_bound():
    net, active = stable_network()
    eps = 0.05
    x, y = random_inputs(10, 12, 4, seed=14, margin=eps)      # the ball lies inside [0, 1]^d
    w = net.linears[0].weight.detach().double()
    v = net.linears[1].weight.detach().double()
    effective = v @ (active[:, None] * w)                      # (K, d): the linear map in the ball
    with torch.no_grad():
        clean = margins(net.float64_copy()(x.double()), y)
    exact = clean + eps * (effective[:, None, :] - effective[None, :, :]).abs().sum(-1)[y]
    for verifier in (LP(), LPExact(), Crown()):
        with torch.no_grad():
            got = verifier.bound(net, x.double(), y, eps)
        assert torch.allclose(got, exact, atol=1e-9, rtol=1e-9), verifier.name
    with torch.no_grad():   # intervals lose the correlations even when every unit is stable
        assert (IBP().bound(net, x.double(), y, eps) >= exact - 1e-9).all()


def _lp_of(x, y, weights):
    """The lp bound as a function of the weight tensors ``(W_0, b_0, W_1, b_1, ...)``."""
    from verifiers.linear.propagation import (
        backward_upper,
        finish_margins,
        linear_layer_bounds,
        margin_spec,
    )
    params = [(weights[i], weights[i + 1]) for i in range(0, len(weights), 2)]
    lo, hi = input_box(x, 0.2)
    bounds = linear_layer_bounds(params, lo, hi, wong_kolter_slope)
    spec = margin_spec(y, params[-1][0].shape[0], x.dtype)
    upper = finish_margins(backward_upper(params, bounds, spec, lo, hi, wong_kolter_slope), y)
    return upper[torch.isfinite(upper)]


@pytest.mark.parametrize("widths", [[5, 4, 3], [5, 4, 4, 3]])
def test_lp_gradient_through_the_weights(widths):
    net = random_mlp(widths, seed=15).double()
    x, y = random_inputs(3, 5, 3, seed=16)
    x = x.double()
    upper = margin_upper_bounds(net, x, y, 0.2, wong_kolter_slope)
    upper[torch.isfinite(upper)].sum().backward()
    for p in net.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    weights = tuple(p.detach().clone().requires_grad_(True) for p in net.parameters())
    assert torch.autograd.gradcheck(lambda *w: _lp_of(x, y, w), weights)


def test_relu_relaxation_lines_enclose_relu_and_touch_it_at_the_ends():
    """``relaxation``: per unit, ``alpha z <= relu(z) <= s z + offset`` on ``[l, u]``; the
    upper line is the chord (equal at ``l`` and ``u``), stable units are exact."""
    from verifiers.linear.propagation import crown_slope, relaxation, wong_kolter_slope
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 400, generator=g, dtype=torch.float64)
    lower, upper = torch.minimum(a, b), torch.maximum(a, b)
    z = lower + (upper - lower) * torch.rand(50, 400, generator=g, dtype=torch.float64)
    for rule in (wong_kolter_slope, crown_slope):
        s, offset, alpha = relaxation(lower[None], upper[None], rule)
        relu = z.clamp(min=0)
        assert (alpha * z <= relu + 1e-12).all() and (relu <= s * z + offset + 1e-12).all()
        assert ((alpha >= 0) & (alpha <= 1)).all()
        crossing = (lower < 0) & (upper > 0)
        chord_at = lambda t: (s * t + offset)[0]                            # noqa: E731
        assert torch.allclose(chord_at(upper)[crossing], upper[crossing])
        assert torch.allclose(chord_at(lower)[crossing], torch.zeros(int(crossing.sum()),
                                                                     dtype=torch.float64))
        active, dead = lower >= 0, upper <= 0
        assert (s[0][active] == 1).all() and (alpha[0][active] == 1).all()
        assert (offset[0][active | dead] == 0).all() and (s[0][dead] == 0).all()
        assert (alpha[0][dead] == 0).all()
