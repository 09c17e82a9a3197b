"""alpha-CROWN and branch and bound: sound, never looser than CROWN, exact on tiny nets.

Ground truth is the exact worst margin by MILP (``exact_class_margins``) and, for a
general specification, enumeration of the activation patterns' LPs is replaced by dense
sampling plus the MILP of each row.
"""

from __future__ import annotations

import pytest
import torch

from bench.contract import Property, margins
from tests.conftest import random_inputs, random_mlp, sample_ball
from verifiers.bab.bab import BranchAndBound
from verifiers.bab.bounding import linear_leaf
from verifiers.bab.options import SearchOptions
from verifiers.bab.search import decide
from verifiers.linear.alpha_crown import AlphaCrown
from verifiers.linear.crown import Crown
from verifiers.linear.propagation import layer_params
from verifiers.mip.lp_exact import LPExact
from verifiers.mip.sample_solves import exact_class_margins


@pytest.mark.parametrize("widths", [[8, 16, 16, 4], [8, 12, 12, 12, 12, 4]])
def test_alpha_crown_is_between_the_true_maximum_and_crown(widths):
    net = random_mlp(widths, seed=3, scale=1.5)
    x, y = random_inputs(6, widths[0], widths[-1], seed=4)
    eps = 0.15
    alpha = AlphaCrown().bound(net, x, y, eps)
    crown = Crown().bound(net, x, y, eps)
    finite = torch.isfinite(crown)
    assert (alpha[finite] <= crown[finite]).all()                  # never looser
    assert (alpha[finite] < crown[finite] - 1e-3).any()              # and tighter somewhere
    exact = torch.as_tensor(exact_class_margins(net, x, y, eps))
    assert (exact[finite] <= alpha[finite] + 1e-9).all()             # sound
    points = sample_ball(x, eps, 200, seed=5)
    with torch.no_grad():
        sampled = margins(net.float64_copy()(points.reshape(-1, widths[0]).double()),
                          y.repeat(200)).reshape(200, len(y), -1).amax(0)
    assert (sampled[finite] <= alpha[finite] + 1e-9).all()


def test_alpha_crown_reaches_the_exact_lp_on_one_hidden_layer():
    """With one hidden layer the intermediate bounds are exact intervals, so the best
    slopes give the LP relaxation's optimum; many steps get there from above."""
    net = random_mlp([20, 40, 5], seed=0, scale=1.0)
    x, y = random_inputs(4, 20, 5, seed=1)
    alpha = AlphaCrown(iterations=100).bound(net, x, y, 0.1)
    exact_lp = LPExact().bound(net, x, y, 0.1)
    finite = torch.isfinite(exact_lp)
    assert (alpha[finite] >= exact_lp[finite] - 1e-7).all()
    assert (alpha[finite] - exact_lp[finite]).max() < 2e-3


def _crown_problems(count: int, eps: float, rows: int):
    """``count`` boxes of radius ``eps`` on a 6-12-12-3 network (float64), their CROWN
    intermediate bounds and ``(count, rows, 3)`` random specification rows."""
    from verifiers.linear.propagation import input_box
    from verifiers.linear.slope_optimisation import optimised_layer_bounds
    net = random_mlp([6, 12, 12, 3], seed=11, scale=1.2).double()
    x, _ = random_inputs(count, 6, 3, seed=12)
    lo, hi = input_box(x.double(), eps, True)
    params = layer_params(net, torch.float64)
    with torch.no_grad():
        bounds = optimised_layer_bounds(params, lo, hi, iterations=0)
    spec = torch.randn(count, rows, 3, generator=torch.Generator().manual_seed(13),
                       dtype=torch.float64)
    return net, params, lo, hi, bounds, spec


def test_projected_variables_take_clamp_s_values_and_pass_the_gradient_at_the_bounds():
    """The optimisers' clamp: exactly ``clamp``'s values (also outside the range), and
    the gradient of the identity, at the bounds included (torch 2.14's ``clamp`` gives
    zero there, which froze every slope started at 0 or 1 and multiplier at 0)."""
    from verifiers.linear.propagation import projected
    values = torch.tensor([-0.7, 0.0, 1e-30, 0.3, 1.0, 1.0 + 2e-16, 2.5],
                          dtype=torch.float64, requires_grad=True)
    for low, high in ((0.0, 1.0), (0.0, None)):
        out = projected(values, low, high)
        assert torch.equal(out.detach(), values.detach().clamp(low, high))
        grad, = torch.autograd.grad(out.sum(), values)
        assert torch.equal(grad, torch.ones_like(grad))


def test_split_multipliers_leave_zero_and_tighten_the_bound():
    """beta-CROWN from multipliers 0 (its start in every new split): the search moves
    them, the bound drops below the one without multipliers, and stays above every
    sampled point of the split subdomain."""
    from verifiers.linear.slope_optimisation import optimise_upper
    net, params, lo, hi, bounds, spec = _crown_problems(8, 0.3, 1)
    # split the first crossing unit of layer 1 of each sample: zhat >= 0
    crossing = (bounds[1][0] < 0) & (bounds[1][1] > 0)
    assert crossing.any(dim=1).all()
    unit = crossing.to(torch.int64).argmax(dim=1)
    sigmas = [torch.zeros_like(bounds[0][0]), torch.zeros_like(bounds[1][0])]
    sigmas[1][torch.arange(8), unit] = 1.0
    split = [bounds[0], (torch.where(sigmas[1] > 0, bounds[1][0].clamp(min=0), bounds[1][0]),
                         bounds[1][1])]
    plain = optimise_upper(params, split, spec, lo, hi, iterations=20)
    with_beta = optimise_upper(params, split, spec, lo, hi, iterations=20, sigmas=sigmas)
    assert max(float(b.max()) for b in with_beta.betas) > 0
    assert (with_beta.upper <= plain.upper + 1e-9).all()
    assert (with_beta.upper < plain.upper - 1e-4).any()
    points = lo + (hi - lo) * torch.rand(4000, *lo.shape, generator=torch.Generator()
                                         .manual_seed(14), dtype=torch.float64)
    with torch.no_grad():
        flat = points.reshape(-1, 6)
        hidden = torch.relu(flat @ params[0][0].T + params[0][1])
        pre = (hidden @ params[1][0].T + params[1][1]).reshape(4000, 8, -1)
        outputs = net(flat).reshape(4000, 8, 3)
    inside = pre.gather(2, unit[None, :, None].expand(4000, -1, 1))[..., 0] >= 0
    reached = torch.einsum("nso,pno->pns", spec, outputs)[..., 0]
    assert inside.any(dim=0).all()
    assert (reached.masked_fill(~inside, -torch.inf).amax(dim=0) <= with_beta.upper[:, 0]
            + 1e-9).all()


def test_a_settled_problem_stops_its_search_and_the_others_go_on_unchanged():
    """``settle_below``: the search drops a problem once its bound passes below the
    threshold. The problems a full search never takes below it follow the same steps
    (each problem's gradient is its own), so their bounds match the full search's; the
    ones it does end below the threshold (in float64 too). Both are sound."""
    from verifiers.linear.slope_optimisation import optimise_upper
    net, params, lo, hi, bounds, spec = _crown_problems(40, 0.2, 2)
    full = optimise_upper(params, bounds, spec, lo, hi, iterations=15).upper
    start = optimise_upper(params, bounds, spec, lo, hi, iterations=0).upper
    reachable = (torch.arange(40) % 2 == 0)[:, None]     # half the problems can settle
    threshold = torch.where(reachable, (full + start) / 2, full - 1.0)
    stopped = optimise_upper(params, bounds, spec, lo, hi, iterations=15,
                             settle_below=threshold).upper
    settles = (full < threshold).any(dim=1)
    assert 5 < int(settles.sum()) < 35
    assert torch.allclose(stopped[~settles], full[~settles], rtol=1e-5, atol=1e-6)
    assert ((stopped < threshold + 1e-5).any(dim=1) | ~settles).all()
    assert (stopped >= full - 1e-5).all()         # stopping early never tightens
    points = lo + (hi - lo) * torch.rand(500, *lo.shape, generator=torch.Generator()
                                         .manual_seed(14), dtype=torch.float64)
    with torch.no_grad():
        outputs = net(points.reshape(-1, 6)).reshape(500, 40, 3)
        reached = torch.einsum("nso,pno->pns", spec, outputs).amax(dim=0)
    assert (reached <= stopped + 1e-9).all()


def test_the_float32_screen_keeps_every_violating_point_and_finds_the_worst():
    """:func:`screened_worst` returns the float64 worst point whenever some point
    violates, including one that violates by 1e-9 (far below float32 rounding, which
    alone must not rule it out), and ``(-1, -inf)`` when every point is far from
    violating."""
    import copy

    from verifiers.bab.bounding import forward_worst, screened_worst
    net64 = random_mlp([6, 12, 12, 3], seed=21, scale=1.5).double()
    net32 = copy.deepcopy(net64).float()
    points = torch.rand(400, 6, generator=torch.Generator().manual_seed(22),
                        dtype=torch.float64)
    rows = torch.randn(2, 3, generator=torch.Generator().manual_seed(23), dtype=torch.float64)
    plain = forward_worst(net64, points, rows, torch.zeros(2, dtype=torch.float64))
    for target in (int(plain.argmax()), int(plain.argsort()[200])):
        # shift the offsets so that point ``target`` violates by 1e-9
        offsets = torch.full((2,), float(plain[target]) - 1e-9, dtype=torch.float64)
        exact = forward_worst(net64, points, rows, offsets)
        index, value = screened_worst(net32, net64, points, rows, offsets)
        assert index == int(exact.argmax())
        assert value == pytest.approx(float(exact.max()), abs=1e-12) and value > 0
    far = torch.full((2,), float(plain.max()) + 10.0, dtype=torch.float64)
    assert screened_worst(net32, net64, points, rows, far) == (-1, -torch.inf)


def _instances():
    """Tiny networks (2 to 4 hidden layers), each at the smallest radius of a ladder
    where CROWN no longer certifies (the instances that need branching or an attack)."""
    for trial in range(3, 9):
        depth = 2 + trial % 3
        net = random_mlp([5] + [16] * depth + [3], seed=100 + trial, scale=1.0).double()
        x, _ = random_inputs(1, 5, 3, seed=200 + trial)
        x = x.double()
        y = net(x).argmax(1)
        for eps in (0.05, 0.1, 0.2, 0.3, 0.5):
            if Crown().bound(net, x, y, eps).max() >= 0:
                break
        yield trial, net, x, y, eps


@pytest.mark.parametrize("candidates, refine_depth, tighten", [
    (1, 4, 0), (1, 4, 2), pytest.param(1, 1, 0, marks=pytest.mark.slow),
    pytest.param(4, 4, 0, marks=pytest.mark.slow)])
def test_bab_agrees_with_milp_and_both_verdicts_occur(candidates, refine_depth, tighten):
    """With the intercept score alone (the default) and with strong branching; with
    subdomain bounds re-derived on the 4-layer networks only (the default) and on all
    (slow: the linear-leaf test below also re-derives on every depth); without root
    tightening, so the trees branch, and with it (the default), which settles these
    small instances with few or no splits but must tighten some."""
    seen, branched, tightened = set(), 0, 0
    for trial, net, x, y, eps in _instances():
        worst = float(torch.as_tensor(exact_class_margins(net, x, y, eps)).max())
        prop = Property.robustness(x[0], int(y), eps, 3)
        # CROWN slopes at the root (no optimisation), so the tree has to branch
        outcome = decide(net, prop, SearchOptions(time_limit=60, batch=32, iterations=0,
                                                  branch_candidates=candidates,
                                                  refine_depth=refine_depth,
                                                  tighten_layers=tighten, branching="relu"))
        truth = "holds" if worst < 0 else "violated"
        assert outcome.verdict == truth, (trial, outcome.verdict, worst)
        seen.add(truth)
        branched += outcome.nodes > len(prop.groups)
        tightened += outcome.stats.get("tightening_subdomains", 0) > 0
        if truth == "violated":
            with torch.no_grad():
                assert bool(prop.violated_by(net.float64_copy()(outcome.counterexample[None])))
            assert ((outcome.counterexample >= prop.lo) & (outcome.counterexample <= prop.hi)).all()
        else:
            assert max(float(u.max()) for u in outcome.uppers) >= worst - 1e-9
            assert max(float(u.max()) for u in outcome.uppers) < 0
    assert seen == {"holds", "violated"}
    assert tightened > 0 if tighten else branched > 0


def test_a_device_torch_cannot_use_is_refused_in_one_line():
    assert BranchAndBound(device="cpu").device == "cpu"
    for bad in ("tpu", 0, "cuda:x"):
        with pytest.raises(ValueError, match="device"):
            BranchAndBound(device=bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no such CUDA device"):
            BranchAndBound(device="cuda")


def test_bab_without_bound_optimisation_needs_and_trusts_its_linear_leaves():
    """No slope or multiplier steps and tiny batches: the tree goes down to subdomains
    without unstable units, which the LP leaves settle; every verdict is still exact."""
    leaves = 0
    for trial in range(20):
        net = random_mlp([2, 5, 5, 2], seed=300 + trial, scale=1.0).double()
        x, _ = random_inputs(1, 2, 2, seed=400 + trial)
        y = net(x.double()).argmax(1)
        eps = 1.0
        worst = float(torch.as_tensor(exact_class_margins(net, x, y, eps, clip=False)).max())
        prop = Property.robustness(x[0], int(y), eps, 2, clip=False)
        outcome = decide(net, prop, SearchOptions(time_limit=60, batch=4, iterations=0,
                                                  branch_iterations=0, branching="relu",
                                                  refine_depth=1 + trial % 2), restarts=0)
        assert outcome.verdict == ("holds" if worst < 0 else "violated"), trial
        leaves += outcome.stats["linear_leaves"]
    assert leaves > 0


def test_a_linear_leaf_bound_is_the_lp_optimum_and_sound():
    """A subdomain with every unit fixed: the leaf's dual bound equals the exact maximum
    of the affine piece (checked against dense sampling of that piece's region)."""
    net = random_mlp([2, 4, 2], seed=7).double()
    params = layer_params(net, torch.float64)
    lo, hi = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(torch.linspace(0, 1, 301, dtype=torch.float64),
                                      torch.linspace(0, 1, 301, dtype=torch.float64),
                                      indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        pre = grid @ params[0][0].T + params[0][1]
    pattern = pre[len(grid) // 2] >= 0                   # the piece of the box's centre
    inside = ((pre >= 0) == pattern).all(dim=1)
    sigma = torch.where(pattern, 1.0, -1.0).to(torch.float64)[None]
    lower = torch.where(pattern, 0.0, -1e3).to(torch.float64)[None]
    upper = torch.where(pattern, 1e3, 0.0).to(torch.float64)[None]
    from verifiers.bab.domains import Domains
    domains = Domains([lower], [upper], [sigma], [], [], [], torch.zeros(1, 1), torch.zeros(1))
    row = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    leaf, point = linear_leaf(params, domains, 0, lo, hi, row, torch.zeros(1, dtype=torch.float64))
    bound = float(leaf[0])
    with torch.no_grad():
        values = (net.float64_copy()(grid[inside]) @ row.T)[:, 0]
    assert bound >= float(values.max()) - 1e-9
    assert bound <= float(values.max()) + 1e-2           # the grid's spacing
    assert point is not None


def _region_property(net, g: torch.Generator, radius: float, shift: float) -> Property:
    """A box of ``radius`` around a random point and one unsafe group of two random
    rows, their offsets the centre's values moved by ``+shift`` and ``-shift``."""
    centre = torch.rand(4, generator=g, dtype=torch.float64)
    lo, hi = (centre - radius).clamp(0, 1), (centre + radius).clamp(0, 1)
    matrix = torch.randn(2, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        reach = net(centre[None])[0] @ matrix.T
    return Property(lo, hi, ((matrix, reach + torch.tensor([shift, -shift],
                                                           dtype=torch.float64)),))


def test_bab_on_a_general_specification_is_sound():
    """A conjunction of two rows (an output region), on a 3-hidden-layer network: a
    "holds" must survive dense sampling, a "violated" point must satisfy both rows."""
    net = random_mlp([4, 10, 10, 10, 3], seed=21).double()
    g = torch.Generator().manual_seed(22)
    verdicts = set()
    for trial in range(8):
        prop = _region_property(net, g, 0.2, 0.05 * (trial - 4))
        lo, hi = prop.lo, prop.hi
        outcome = decide(net, prop, SearchOptions(time_limit=30, batch=32, branching="relu"))
        verdicts.add(outcome.verdict)
        points = lo + (hi - lo) * torch.rand(20000, 4, generator=g, dtype=torch.float64)
        with torch.no_grad():
            hit = prop.violated_by(net(points))
        if outcome.verdict == "holds":
            assert not hit.any()
        elif outcome.verdict == "violated":
            with torch.no_grad():
                assert bool(prop.violated_by(net(outcome.counterexample[None]))[0])
    assert {"holds", "violated"} <= verdicts


def test_bab_plugin_reports_verdicts_and_stays_within_crown():
    net = random_mlp([8, 12, 12, 3], seed=31, scale=1.5)
    x, y = random_inputs(4, 8, 3, seed=32)
    plugin = BranchAndBound(time_limit=20)
    upper = plugin.bound(net, x, y, 0.1)
    crown = Crown().bound(net, x, y, 0.1)
    finite = torch.isfinite(crown)
    assert (upper[finite] <= crown[finite]).all()
    exact = torch.as_tensor(exact_class_margins(net, x, y, 0.1))
    assert (exact[finite] <= upper[finite] + 1e-9).all()
    rows = plugin.statistics()
    assert [r["row"] for r in rows] == [0, 1, 2, 3]
    for row, worst in zip(rows, exact.amax(dim=1)):
        assert row["verdict"] == ("certified" if worst < 0 else "broken")


def test_bab_cex_returns_bab_s_counterexamples_from_the_shared_searches(monkeypatch):
    """``bab-cex`` declares the same shared work as ``bab``; handed a batch's searches it
    searches nothing itself (also for the float32 copy the harness gives attacks), and
    its points break exactly the samples whose exact worst margin is ``>= 0``, inside
    the ball and the box; the others come back unchanged."""
    import verifiers.bab.sample_searches as bab_module
    from verifiers.bab.bab_cex import BranchAndBoundCounterexample
    net = random_mlp([8, 12, 12, 3], seed=31, scale=1.5)
    x, y = random_inputs(6, 8, 3, seed=33)
    eps = 0.15
    verifier = BranchAndBound(time_limit=20)
    attack = BranchAndBoundCounterexample(time_limit=20)
    pieces = verifier.shared_work(net, x.double(), y, eps, workers=1)
    assert pieces.keys() == attack.shared_work(net, x.double(), y, eps, workers=1).keys()
    assert BranchAndBoundCounterexample(time_limit=5).shared_work(
        net, x.double(), y, eps, workers=1).keys() != pieces.keys()
    results = {key: piece(net) for key, piece in pieces.items()}

    def no_search(*args, **kwargs):
        raise AssertionError("searched again")
    monkeypatch.setattr(bab_module, "decide", no_search)
    attack.use_shared(net, results)
    x_adv = attack.perturb(net, x.clone(), y, eps)
    assert ((x_adv - x).abs().amax(dim=1) <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    exact = torch.as_tensor(exact_class_margins(net, x, y, eps)).amax(dim=1)
    with torch.no_grad():
        reached = margins(net.float64_copy()(x_adv.double()), y).amax(dim=1)
    assert 0 < int((exact >= 0).sum()) < len(y)      # both kinds of sample occur
    assert ((reached >= 0) == (exact >= 0)).all()
    assert torch.equal(x_adv[exact < 0], x[exact < 0])


def test_milp_big_m_bounds_on_deep_networks_are_tighter_and_sound():
    """``tightest_bounds`` adds alpha-CROWN's layer bounds from two hidden layers on:
    inside the CROWN-only bounds, tighter somewhere, and around every sampled
    pre-activation."""
    from verifiers.mip.relu_program import tightest_bounds

    net = random_mlp([6, 20, 20, 20, 3], seed=41, scale=1.5).double()
    x, _ = random_inputs(3, 6, 3, seed=42)
    params = layer_params(net, torch.float64)
    lo, hi = (x.double() - 0.2).clamp(0, 1), (x.double() + 0.2).clamp(0, 1)
    with torch.no_grad():
        plain = tightest_bounds(params, lo, hi, alpha_iterations=0)
        tight = tightest_bounds(params, lo, hi)
        points = lo + (hi - lo) * torch.rand(4000, *lo.shape, dtype=torch.float64)
        z = points
        for (w, b), (low, up) in zip(params[:-1], tight):
            pre = z @ w.T + b
            assert (pre >= low - 1e-9).all() and (pre <= up + 1e-9).all()
            z = pre.clamp(min=0)
    gained = 0.0
    for (a, b), (c, d) in zip(plain, tight):
        assert (c >= a - 1e-12).all() and (d <= b + 1e-12).all()
        gained += float((b - a).sum() - (d - c).sum())
    assert gained > 1e-3


def test_milp_bounds_general_specifications_soundly_and_agrees_with_bab():
    from bench.contract import refuted
    from verifiers.mip.milp import MILP

    net = random_mlp([4, 10, 10, 3], seed=51).double()
    g = torch.Generator().manual_seed(52)
    outcomes = set()
    for trial in range(6):
        region = _region_property(net, g, 0.15, 0.1 * (trial - 3))
        (matrix, offset), = region.groups
        lo, hi = region.lo, region.hi
        prop = Property(lo, hi, ((matrix, offset), (matrix[:1], offset[:1] + 0.2)))
        uppers = MILP(time_limit=20).bound_property(net, prop)
        points = lo + (hi - lo) * torch.rand(20000, 4, generator=g, dtype=torch.float64)
        with torch.no_grad():
            values = net(points)
        for (m, d), upper in zip(prop.groups, uppers):
            assert ((values @ m.T - d).amax(dim=0) <= upper + 1e-9).all()
        verdict = decide(net, prop, SearchOptions(time_limit=20, batch=32,
                                                   branching="relu")).verdict
        outcomes.add((refuted(uppers), verdict))
        if refuted(uppers):
            assert verdict == "holds"
        if verdict == "violated":
            assert not refuted(uppers)
    assert (True, "holds") in outcomes and (False, "violated") in outcomes


def test_bab_statistics_reach_solver_stats_for_every_batch(tmp_path, model_dir):
    """The harness takes the rows a plugin added since its last batch: bab keeps them all
    (a plugin that restarted its list each batch lost every batch after the first)."""
    from bench.registry import select
    from bench.runner import Method
    from tests.conftest import run_grid
    (info,) = select("verifier", ["bab"])
    result = run_grid(tmp_path / "out", model_dir, methods=[Method(info, info.create(
        {"time_limit": 5.0}))], n=3, eps=(0.05,), batch_size=1, models=("tiny-a",))
    stats = result.solver_stats
    assert sorted(stats.loc[stats["method"] == "bab", "sample"]) == [0, 1, 2]
    # the tiny networks have 784 inputs: ReLU splitting, and the rows say so
    assert set(stats.loc[stats["method"] == "bab", "branching"]) == {"relu"}


@pytest.mark.parametrize("keep_bounds", [False, True])
def test_the_domain_pool_hands_out_the_best_subdomains_whole(keep_bounds):
    """Adds and takes in any order, through growth and compaction, against a plain list:
    only open subdomains are kept (the closed ones' largest row bounds are returned), and
    the taken ones are those of largest bound, intact: splits, warm starts, bounds (rebuilt
    from the root's and the splits, or kept in float32: exact here, where they are float32
    numbers) and the kept best branching units with their scores."""
    from verifiers.bab.domains import DomainPool, Domains
    generator = torch.Generator().manual_seed(0)
    widths, rows, keep = [3, 5], 2, 2
    root_lower = [-torch.rand(1, m, generator=generator).double() for m in widths]
    root_upper = [torch.rand(1, m, generator=generator).double() for m in widths]

    def batch(size: int, unsplit: bool = False) -> Domains:
        sigma = [torch.randint(-1, 2, (size, m), generator=generator).to(torch.float64)
                 * (not unsplit) for m in widths]
        lower = [torch.where(s > 0, 0.0, low) for s, low in zip(sigma, root_lower)]
        upper = [torch.where(s < 0, 0.0, up) for s, up in zip(sigma, root_upper)]
        slopes, betas = ([torch.rand(size, rows, m, generator=generator) for m in widths]
                         for _ in range(2))
        scores = [torch.randn(size, m, generator=generator) for m in widths]
        return Domains(lower, upper, sigma, slopes, betas, scores,
                       torch.randn(size, rows, generator=generator, dtype=torch.float64),
                       torch.randn(size, generator=generator, dtype=torch.float64))

    def same(got: Domains, want: Domains) -> bool:
        top = torch.cat(want.scores, dim=1).topk(keep, dim=1)
        kept = torch.full((len(want), sum(widths)), -1.0).scatter(1, top.indices, top.values)
        return all(torch.equal(a, b) for a, b in zip(got.take(torch.arange(len(got))).flat(),
                                                     [*want.lower, *want.upper, *want.sigma,
                                                      *want.slopes, *want.betas,
                                                      *kept.split(widths, dim=1),
                                                      want.rows, want.value]))
    pool = DomainPool(batch(1, unsplit=True), keep_scores=keep, keep_bounds=keep_bounds)
    plain: list[Domains] = []
    assert pool.bytes_per_domain == sum(widths) * (1 + 8 * keep_bounds + 2 * rows * 4) \
        + keep * 8 + rows * 8 + 8
    for size, take in [(5, 0), (40, 7), (3, 30), (100, 1), (0, 50), (90, 200)]:
        added = batch(size)
        closed = added.value < 0
        expected_closed = added.rows[closed].amax(dim=0) if closed.any() \
            else torch.full((rows,), -torch.inf, dtype=torch.float64)
        assert torch.equal(pool.add(added), expected_closed)
        plain += [added.take(torch.tensor([i])) for i in range(len(added)) if not closed[i]]
        if plain:
            top_rows = torch.stack([d.rows[0] for d in plain]).amax(dim=0)
            assert torch.equal(pool.rows_max(), top_rows)
        taken = pool.take_best(take)
        plain.sort(key=lambda d: -float(d.value[0]))
        expected, plain = plain[:take], plain[take:]
        assert len(taken) == len(expected) and len(pool) == len(plain)
        order = torch.argsort(taken.value, descending=True)
        for got, want in zip(order.tolist(), expected):
            assert same(taken.take(torch.tensor([got])), want)
    assert len(pool) == 0


def test_bounds_kept_in_float32_are_rounded_outwards():
    """A lower bound never rises and an upper bound never falls on the way to float32
    (by at most one float32 step), so a kept subdomain's bounds stay sound."""
    from verifiers.bab.domains import _rounded
    generator = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(5000, generator=generator, dtype=torch.float64)
                        * 10.0 ** torch.randint(-8, 8, (5000,), generator=generator),
                        torch.tensor([0.0, 1.0, -0.5, 1e-40, -1e-40], dtype=torch.float64)])
    down, up = _rounded(values, -torch.inf), _rounded(values, torch.inf)
    assert (down.double() <= values).all() and (up.double() >= values).all()
    assert (down.double() < values).any() and (up.double() > values).any()
    step_down = torch.nextafter(down, torch.full_like(down, torch.inf))
    step_up = torch.nextafter(up, torch.full_like(up, -torch.inf))
    assert (step_down.double() >= values).all() and (step_up.double() <= values).all()
