"""The multi-layer SDP (``sdp-deep``): soundness against exact maxima, agreement with a
primal cvxpy solve, certificates from bad multipliers, the relation to ``lp``, ``lp-exact``
and ``sdp`` on one hidden layer, and the ONNX path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.contract import Property, input_box
from tests.conftest import assert_sound, invoke, random_inputs, random_mlp
from verifiers.linear.lp import LP
from verifiers.linear.propagation import layer_params, margin_spec
from verifiers.linear.slope_optimisation import optimise_upper
from verifiers.mip.lp_exact import LPExact
from verifiers.mip.sample_solves import exact_class_margins
from verifiers.sdp.sdp import SDP
from verifiers.sdp_deep.cvxpy_primal import solve_primal
from verifiers.sdp_deep.interior_point import optimise_ipm
from verifiers.sdp_deep.relaxation import (
    GROUPS,
    SIGNED,
    Multipliers,
    build,
    certify,
    dual_value,
    linear_start,
    optimise,
    project,
)
from verifiers.sdp_deep.sdp_deep import SDPDeep, intermediate_bounds

EPS = 0.2


def _problem(widths: list[int], seed: int, count: int = 3):
    """A random network, inputs, and its relaxation with the linear start (``B = N (K-1)``
    problems: every sample's wrong classes)."""
    net = random_mlp(widths, seed=seed, scale=1.5)
    x, y = random_inputs(count, widths[0], widths[-1], seed=seed + 1)
    params = [(w.detach(), b.detach()) for w, b in layer_params(net, torch.float64)]
    lo, hi = input_box(x.double(), EPS)
    bounds = intermediate_bounds(params, lo, hi, "alpha-crown", 10)
    spec = margin_spec(y, widths[-1], torch.float64)
    alpha = optimise_upper(params, bounds, spec, lo, hi, iterations=10)
    rel, crossing = build(params, bounds, lo, hi, spec)
    start, linear = linear_start(rel, bounds, alpha, crossing), alpha.upper.reshape(-1)
    live = torch.nonzero(spec.abs().sum(-1).reshape(-1) > 0).flatten()
    exact = torch.as_tensor(exact_class_margins(net, x.double(), y, EPS)).reshape(-1)
    return (net, x, y, rel.select(live), start.select(live), linear[live], exact[live],
            (params, crossing, live))


@pytest.fixture(scope="module", params=[
    [5, 6, 6, 3], pytest.param([4, 5, 4, 4, 3], marks=pytest.mark.slow)],
    ids=["2-hidden", "3-hidden"])
def solved(request):
    *problem, layout = _problem(request.param, seed=len(request.param))
    rel, start = problem[3], problem[4]
    best = optimise(rel, start, iterations=300)
    return (*problem, best, certify(rel, best), layout)


def test_the_affine_substitution_reproduces_the_network(solved):
    """At real points of the box, ``zhat_j = A_j x + C_j c + beta_j`` for every crossing unit
    and ``g_x . x + g_c . c + g_0`` is the specification's value of the network."""
    net, x, y, rel, *_, (params, crossing, live) = solved
    g = torch.Generator().manual_seed(1)
    points = rel.lo + (rel.hi - rel.lo) * torch.rand(rel.lo.shape, generator=g,
                                                     dtype=torch.float64)
    sample = live // (net.num_classes)
    c = torch.zeros_like(rel.alive)
    expected = torch.zeros_like(rel.alive)
    z = points
    for k, (w, b) in enumerate(params[:-1]):
        zhat = z @ w.T + b
        where = crossing[k][sample]                       # (B, m_k): index in c, or -1
        for row in range(rel.size):
            units = torch.nonzero(where[row] >= 0).flatten()
            c[row, where[row, units]] = zhat[row, units].clamp(min=0)
            expected[row, where[row, units]] = zhat[row, units]
        z = zhat.clamp(min=0)
    logits = z @ params[-1][0].T + params[-1][1]
    alive = rel.alive > 0
    assert alive.any()
    assert torch.allclose(rel.preactivations(points, c)[alive], expected[alive], atol=1e-10)
    spec = margin_spec(y, net.num_classes, torch.float64).reshape(-1, net.num_classes)[live]
    objective = (rel.g_x * points).sum(-1) + (rel.g_c * c).sum(-1) + rel.g_0
    assert torch.allclose(objective, (spec * logits).sum(-1), atol=1e-10)


@pytest.fixture(scope="module")
def clarabel(solved):
    """Per problem of ``solved``: Clarabel's primal SDP value and its multipliers."""
    rel = solved[3]
    out = []
    for b in range(rel.size):
        primal, multipliers, status = solve_primal(rel.select(torch.tensor([b])),
                                                   solver="CLARABEL")
        assert status == "optimal"
        out.append((primal, multipliers))
    return out


def test_the_interior_point_solver_reaches_the_sdp_optimum(solved, clarabel):
    """The primal-dual solver's dual point, certified, is the SDP's optimum (Clarabel's
    primal value) to 1e-4, never below it, in float64; searched in float32 it still
    certifies a sound bound within 1e-2."""
    *_, rel, start, linear, exact, best, certified, _ = solved
    primal = torch.tensor([value for value, _ in clarabel], dtype=torch.float64)
    for dtype, tolerance in ((torch.float64, 1e-4), (torch.float32, 1e-2)):
        bound = certify(rel, optimise_ipm(rel, start, dtype=dtype))
        assert (bound >= primal - 1e-6 * (1 + primal.abs())).all()
        assert (bound >= exact - 1e-9).all()
        assert ((bound - primal) <= tolerance * (1 + primal.abs())).all()


def test_the_interior_point_solver_decides_a_target(solved, clarabel):
    """With a target, a problem whose SDP optimum is clearly below it is certified below
    it; one whose optimum is above can only end above it (the bound is sound)."""
    *_, rel, start, linear, exact, best, certified, _ = solved
    primal = torch.tensor([value for value, _ in clarabel], dtype=torch.float64)
    target = float(primal.median())
    bound = certify(rel, optimise_ipm(rel, start, target=target, dtype=torch.float32))
    below = primal < target - 1e-2 * (1 + abs(target))
    assert below.any() and (~below).any()
    assert (bound[below] < target).all()
    assert (bound >= primal - 1e-6 * (1 + primal.abs())).all()


def test_certified_value_is_above_the_exact_maximum_and_at_the_sdp_optimum(solved, clarabel):
    *_, rel, start, linear, exact, best, certified, _ = solved
    assert (certified >= exact - 1e-9).all()
    assert torch.isfinite(certified).all()
    # the certificate is the dual value up to rounding allowances
    value, ok = dual_value(rel, best)
    assert ok.all() and torch.allclose(certified, value, atol=1e-6)
    # the primal SDP through cvxpy (Clarabel): the certificate is above it, and close
    gaps = []
    for b, (primal, multipliers) in enumerate(clarabel):
        assert primal >= float(exact[b]) - 1e-6
        assert float(certified[b]) >= primal - 1e-6
        gaps.append((float(certified[b]) - primal) / (1 + abs(primal)))
        # cvxpy's own multipliers certify the primal value
        cvx_certified = float(certify(rel.select(torch.tensor([b])), multipliers)[0])
        assert cvx_certified >= float(exact[b]) - 1e-9
        assert abs(cvx_certified - primal) <= 1e-5 * (1 + abs(primal))
    # the first-order solve stops near the optimum, not at it (measured: mean 0.2-0.6%,
    # worst 1.5% of 1 + |value| on these networks at 300 iterations)
    assert np.mean(gaps) <= 0.01 and max(gaps) <= 0.03


def test_the_search_only_improves_on_the_linear_start(solved):
    *_, rel, start, linear, exact, best, certified, _ = solved
    started = certify(rel, start)
    assert (certified <= started + 1e-12).all()
    assert (started <= linear + 1e-3 * (1 + linear.abs())).all()
    assert (certified < linear - 1e-4).any(), "the SDP never beat the linear bound"


def test_projected_multipliers_pass_their_gradient_at_zero(solved):
    """``project`` takes the nonnegative multipliers (all but the free-sign ``quad``) to
    ``>= 0`` and passes the gradient of the identity, also at zero, where the search needs
    it to tell a multiplier that should grow from one to pin (torch 2.14's ``clamp`` gives
    0 there)."""
    *_, rel, start, linear, exact, best, certified, _ = solved
    g = torch.Generator().manual_seed(3)
    values = [torch.where(torch.rand(t.shape, generator=g, dtype=t.dtype) < 0.5,
                          torch.zeros_like(t), torch.randn(t.shape, generator=g, dtype=t.dtype))
              .requires_grad_(True) for t in best.tensors()]
    weights = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in values]
    floor = torch.zeros(rel.size, 1, dtype=torch.float64)
    out = project(rel, Multipliers(*values), floor).tensors()
    sum((w * t).sum() for w, t in zip(weights[:-1], out[:-1])).backward()
    for name, value, weight, projected in zip(GROUPS, values, weights, out):
        free = name in SIGNED
        assert torch.equal(projected, (value if free else value.clamp(min=0)) * rel.alive)
        assert torch.equal(value.grad, weight * rel.alive), name


def test_the_search_raises_multipliers_started_at_zero(solved):
    """From the optimum with its linear multipliers (``pos``, ``pre``, ``up``) set to zero,
    the search raises at least half of those the optimum has positive (a multiplier at
    zero given a zero gradient stays there: none grew on torch 2.14 before ``project``
    passed the gradient), and never ends above the start."""
    *_, rel, start, linear, exact, best, certified, _ = solved
    dropped = Multipliers(torch.zeros_like(best.pos), torch.zeros_like(best.pre),
                          torch.zeros_like(best.up), best.quad, best.box, best.box_in)
    again = optimise(rel, dropped, iterations=60)
    before = torch.cat([best.pos, best.pre, best.up], dim=1) > 1e-6
    after = torch.cat([again.pos, again.pre, again.up], dim=1) > 0
    assert int(before.sum()) > 0
    assert (after & before).sum() >= before.sum() // 2
    assert (certify(rel, again) <= certify(rel, dropped) + 1e-9).all()


def test_bad_multipliers_still_certify_a_looser_bound(solved):
    *_, rel, start, linear, exact, best, certified, _ = solved
    g = torch.Generator().manual_seed(0)
    for scale in (0.1, 1.0, 10.0):
        noisy = Multipliers(*[t * torch.exp(scale * torch.randn(t.shape, generator=g,
                                                                dtype=torch.float64))
                              + (scale * torch.randn(t.shape, generator=g, dtype=torch.float64)
                                 if name == "quad" else 0.0)
                              for name, t in zip(("pos", "pre", "up", "quad", "box", "box_in"),
                                                 best.tensors())])
        bad = certify(rel, noisy)
        assert (bad >= exact - 1e-9).all()
        assert (bad >= certified - 1e-6 * (1 + certified.abs())).all()
    # nothing at all (zero multipliers, sign-violating ones): still sound, or +inf
    zero = Multipliers(*[torch.zeros_like(t) for t in best.tensors()])
    negative = Multipliers(*[-t - 1 for t in best.tensors()])
    for wild in (zero, negative):
        assert (certify(rel, wild) >= exact - 1e-9).all()


@pytest.mark.slow
def test_the_plugin_is_sound_against_sampling_pgd_and_milp():
    net = random_mlp([8, 10, 8, 4], seed=5, scale=1.5)
    x, y = random_inputs(6, 8, 4, seed=6)
    exact = torch.as_tensor(exact_class_margins(net, x.double(), y, 0.1))
    finite = torch.isfinite(exact)
    for verifier in (SDPDeep(), SDPDeep(decide=False), SDPDeep(backend="lbfgs")):
        upper = verifier.bound(net, x, y, 0.1)
        assert_sound(upper, net, x, y, 0.1, atol=1e-9)
        assert (upper[finite] >= exact[finite] - 1e-9).all()
        assert torch.isneginf(upper.gather(1, y[:, None])).all()


def test_one_hidden_layer_relations_to_lp_lp_exact_and_sdp():
    """Provable: sdp-deep <= lp-exact (its feasible points lie in the triangle LP with the
    same, exact, first-layer bounds) <= lp; and every bound is above the exact maximum.
    ``sdp`` (ICLR) is a different relaxation: only its soundness is asserted here."""
    net = random_mlp([6, 10, 4], seed=11, scale=1.5)
    x, y = random_inputs(8, 6, 4, seed=12)
    deep = SDPDeep(decide=False, precision="float64").bound(net, x, y, 0.15)
    lp = LP().bound(net, x.double(), y, 0.15)
    lp_exact = LPExact().bound(net, x.double(), y, 0.15)
    exact = torch.as_tensor(exact_class_margins(net, x.double(), y, 0.15))
    iclr = SDP().bound(net, x.double(), y, 0.15)
    wrong = torch.isfinite(exact)
    assert (deep[wrong] <= lp[wrong] + 1e-9).all()
    # the SDP's optimum is <= the exact LP; the solve stops near it (1e-3 allowance)
    assert (deep[wrong] <= lp_exact[wrong] + 1e-3 * (1 + lp_exact[wrong].abs())).all()
    for bound in (deep, lp_exact, iclr):
        assert (bound[wrong] >= exact[wrong] - 1e-9).all()
    assert (deep[wrong] < lp_exact[wrong] - 1e-4).any()


@pytest.mark.slow
def test_the_cvxpy_backend_certifies_through_the_plugin():
    net = random_mlp([4, 5, 4, 3], seed=2, scale=1.5)
    x, y = random_inputs(2, 4, 3, seed=3)
    native = SDPDeep(decide=False, precision="float64").bound(net, x, y, EPS)
    first_order = SDPDeep(backend="lbfgs", iterations=300).bound(net, x, y, EPS)
    cvx = SDPDeep(backend="cvxpy", solver="CLARABEL").bound(net, x, y, EPS)
    exact = torch.as_tensor(exact_class_margins(net, x.double(), y, EPS))
    wrong = torch.isfinite(exact)
    assert (cvx[wrong] >= exact[wrong] - 1e-9).all()
    for mine, tolerance in ((native, 1e-3), (first_order, 0.03)):   # both certify the SDP
        assert (mine[wrong] >= cvx[wrong] - 1e-6).all()
        assert torch.allclose(mine[wrong], cvx[wrong], atol=tolerance)


def test_general_properties_and_their_groups():
    net = random_mlp([5, 6, 5, 3], seed=7, scale=1.5)
    x, y = random_inputs(1, 5, 3, seed=8)
    prop = Property.robustness(x[0], int(y[0]), 0.1, 3)
    per_group = SDPDeep(decide=False).bound_property(net, prop)
    margins_ = SDPDeep(decide=False).bound(net, x, y, 0.1)[0]
    others = [j for j in range(3) if j != int(y[0])]
    assert torch.allclose(torch.cat(per_group), margins_[others], atol=1e-6)


def test_options_and_repr():
    with pytest.raises(ValueError, match="backend"):
        SDPDeep(backend="mosek-native")
    with pytest.raises(ValueError, match="intermediate"):
        SDPDeep(intermediate="lp")
    with pytest.raises(ValueError, match="precision"):
        SDPDeep(precision="float16")
    assert SDPDeep().iterations == 40 and SDPDeep(backend="lbfgs").iterations == 200
    text = repr(SDPDeep())
    assert "triangle" in text and "alpha-crown" in text


def test_sdp_deep_runs_on_an_onnx_network(tmp_path):
    from models.onnx_import import export_onnx
    net = random_mlp([784, 8, 6, 10], seed=4, scale=0.6)
    path = export_onnx(net, tmp_path / "small.onnx", input_shape=(1, 28, 28))
    out = tmp_path / "out"
    code, _, _ = invoke(["run", "--models", str(path), "--verifiers", "sdp-deep,lp", "--attacks",
                         "fgsm", "--eps", "0.02", "--n", "3", "--out", str(out),
                         "--set", "sdp-deep.iterations=30"])
    assert code == 0
    import pandas as pd
    board = pd.read_csv(out / "leaderboard.csv")
    rows = board.set_index("method")
    assert "sdp-deep" in rows.index and rows.loc["sdp-deep", "status"] != "n/a"
    assert rows.loc["sdp-deep", "mean_bound"] <= rows.loc["lp", "mean_bound"] + 1e-9
