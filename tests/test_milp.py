"""The exact MILP verifier: brute-force enumeration, soundness, counterexamples, limits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from bench.contract import margins
from tests.conftest import assert_sound, random_inputs, random_mlp
from verifiers.mip.milp import MILP
from verifiers.mip.milp_cex import MILPCounterexample
from verifiers.mip.relu_program import sample_batch, solve_mip
from verifiers.mip.sample_solves import exact_class_margins, solve_samples


def enumerate_patterns(net, x: np.ndarray, label: int, eps: float) -> np.ndarray:
    """Exact worst margin per class by enumerating every activation pattern (one LP each)."""
    params = [(l.weight.detach().double().numpy(), l.bias.detach().double().numpy())
              for l in net.linears]
    lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    units = [w.shape[0] for w, _ in params[:-1]]
    k = params[-1][0].shape[0]
    best = np.full(k, -np.inf)
    for pattern in itertools.product([0.0, 1.0], repeat=sum(units)):
        a_ub, b_ub = [], []
        lin, off = np.eye(len(x)), np.zeros(len(x))        # z_prev = lin @ x + off
        cursor = 0
        for (w, b), m in zip(params[:-1], units):
            pre_lin, pre_off = w @ lin, w @ off + b
            mask = np.array(pattern[cursor:cursor + m])
            cursor += m
            sign = 1 - 2 * mask          # active: -pre <= 0 ; inactive: pre <= 0
            a_ub.append(sign[:, None] * pre_lin)
            b_ub.append(-sign * pre_off)
            lin, off = mask[:, None] * pre_lin, mask * pre_off
        out_lin, out_off = params[-1][0] @ lin, params[-1][0] @ off + params[-1][1]
        for j in range(k):
            if j == label:
                continue
            c = out_lin[j] - out_lin[label]
            res = linprog(-c, A_ub=np.vstack(a_ub), b_ub=np.concatenate(b_ub),
                          bounds=list(zip(lo, hi)), method="highs")
            if res.status == 0:
                best[j] = max(best[j], -res.fun + out_off[j] - out_off[label])
    return best


@pytest.mark.parametrize("widths", [[6, 5, 3], [5, 3, 3, 3]], ids=["depth1", "depth2"])
def test_milp_equals_brute_force_enumeration(widths):
    net = random_mlp(widths, seed=len(widths), scale=1.5)
    x, y = random_inputs(4, widths[0], 3, seed=7)
    exact = exact_class_margins(net, x.double(), y, 0.15)
    for n in range(4):
        brute = enumerate_patterns(net, x[n].double().numpy(), int(y[n]), 0.15)
        finite = np.isfinite(brute)
        assert np.array_equal(finite, np.isfinite(exact[n]))
        assert np.allclose(exact[n][finite], brute[finite], atol=1e-6)


@pytest.fixture(scope="module")
def decided():
    net = random_mlp([12, 16, 4], seed=21)
    x, _ = random_inputs(24, 12, 4, seed=22)
    with torch.no_grad():
        y = net(x).argmax(dim=1)                  # correctly classified, so margins matter
    eps = 0.06
    return net, x, y, eps, solve_samples(net, x.double(), y, eps, time_limit=30.0, clip=True,
                                         apgd_seed=False)


def test_every_sample_is_decided_and_the_verdicts_are_consistent(decided):
    net, x, y, eps, verdicts = decided
    assert {v.verdict for v in verdicts} <= {"certified", "broken"}
    # both verdicts occur, and both are reached by branch and bound, not only by the
    # CROWN pre-check or the gradient seed
    assert {v.verdict for v in verdicts if v.milps > 0} == {"certified", "broken"}
    for v in verdicts:
        assert v.lower <= float(np.max(v.upper)) + 1e-6


def test_certified_bounds_are_sound(decided):
    net, x, y, eps, _ = decided
    upper = MILP(time_limit=30.0).bound(net, x.double(), y, eps)
    assert_sound(upper, net, x, y, eps, seed=1, atol=1e-6)


def test_counterexamples_misclassify_inside_the_ball_and_box(decided):
    net, x, y, eps, verdicts = decided
    x_adv = MILPCounterexample(time_limit=30.0, apgd_seed=False).perturb(net, x, y, eps)
    assert ((x_adv - x).abs().amax(dim=1) <= eps + 1e-6).all()
    assert x_adv.min() >= -1e-9 and x_adv.max() <= 1 + 1e-9
    with torch.no_grad():
        worst = margins(net.float64_copy()(x_adv.double()), y).amax(dim=1)
    for n, verdict in enumerate(verdicts):
        if verdict.verdict == "broken":
            assert worst[n] >= 0 and abs(float(worst[n]) - verdict.lower) <= 1e-4
        else:
            assert worst[n] < 0


def test_time_limit_stops_the_solve_with_a_valid_interval():
    """At its limit a solve reports the limit and a bound interval; no wall-clock assertion
    (timing belongs in benchmarks/test_milp_decided.py)."""
    import models
    from bench import data
    net, _ = models.load("nt-nn")
    images, labels = data.mnist_test(1)
    x = data.to_tensor(images, torch.float64)
    program = sample_batch(net, x, 0.1, clip=True).program(0, binaries=True)
    obj, _ = program.margin_objective(3, int(labels[0]))
    outcome = solve_mip(program, obj, time_limit=1.0)
    assert outcome.status == "Time limit reached" and outcome.upper > outcome.lower


@pytest.fixture(scope="module")
def certified_sample():
    """A sample of a tiny 2-hidden-layer network that is certified (exactly) at eps 0.1."""
    net = random_mlp([10, 16, 16, 5], seed=0)
    x, _ = random_inputs(10, 10, 5, seed=0)
    y = net(x).argmax(1)
    exact = exact_class_margins(net, x.double(), y, 0.1)
    n = int(np.flatnonzero(exact.max(axis=1) < 0)[0])
    return net, x[n:n + 1].double(), y[n:n + 1], exact[n]


def test_an_interrupted_solve_does_not_stop_the_next_one(certified_sample):
    """HiGHS keeps the interrupt flag across runs of one instance: after a solve stopped
    by the callback, the next class's solve must still run to its optimum."""
    net, x, y, exact = certified_sample
    program = sample_batch(net, x, 0.1, clip=True).program(0, binaries=True)
    label = int(y[0])
    classes = [j for j in range(5) if j != label]
    obj, const = program.margin_objective(classes[0], label)
    stopped = solve_mip(program, obj, time_limit=30, stop_below=np.inf)  # stop at once
    assert stopped.status == "Interrupted by user"
    for j in classes[1:]:
        obj, const = program.margin_objective(j, label)
        outcome = solve_mip(program, obj, time_limit=30)
        assert outcome.status == "Optimal"
        assert outcome.upper + const == pytest.approx(exact[j], abs=1e-5)


def test_several_classes_of_one_sample_through_the_stopping_path(certified_sample):
    """Every class starts from a vacuous bound, so each needs its own MILP that stops once
    its sign is decided; all must decide, and the sample is certified."""
    from verifiers.mip.sample_solves import _solve_one
    net, x, y, exact = certified_sample
    batch = sample_batch(net, x, 0.1, clip=True)
    label = int(y[0])
    vacuous = np.full(5, 10.0)
    vacuous[label] = -np.inf
    verdict = _solve_one(batch.np_params, lambda: batch.program(0, binaries=True), label,
                         vacuous, x[0].numpy(), (batch.lo[0].numpy(), batch.hi[0].numpy()),
                         time_limit=60.0)
    assert verdict.milps == 4 and verdict.verdict == "certified"
    assert (verdict.upper[np.arange(5) != label] < 0).all()
    assert (verdict.upper >= exact - 1e-6).all()


def test_a_broken_verdict_comes_from_a_float64_forward_pass():
    """``lower`` is the margin of the clipped witness by a float64 forward pass, and the
    witness lies in the box."""
    net = random_mlp([10, 16, 16, 5], seed=1)
    x, y = random_inputs(6, 10, 5, seed=1)
    verdicts = solve_samples(net, x.double(), y, 0.1, time_limit=30.0, clip=True, cache=None)
    net64 = net.float64_copy()
    for n, v in enumerate(verdicts):
        point = torch.from_numpy(v.witness)[None]
        assert (point >= (x[n].double() - 0.1).clamp(0, 1) - 1e-12).all()
        assert (point <= (x[n].double() + 0.1).clamp(0, 1) + 1e-12).all()
        with torch.no_grad():
            assert v.lower == pytest.approx(float(margins(net64(point), y[n:n + 1]).amax()),
                                            rel=1e-12, abs=1e-15)
        assert (v.verdict == "broken") == (v.lower >= 0)


def test_the_cache_tells_float64_inputs_apart_and_serves_the_attack():
    from verifiers.verdicts import VerdictCache
    net = random_mlp([10, 16, 5], seed=2)
    x, y = random_inputs(1, 10, 5, seed=2)
    x64 = x.double()
    nudged = x64 + 1e-12                                 # the same float32, another float64
    assert torch.equal(nudged.float(), x64.float()) and not torch.equal(nudged, x64)
    cache = VerdictCache()
    first = solve_samples(net, x64, y, 0.1, time_limit=10.0, clip=True, cache=cache)[0]
    second = solve_samples(net, nudged, y, 0.1, time_limit=10.0, clip=True, cache=cache)[0]
    assert second is not first
    again = solve_samples(net, x64.float(), y, 0.1, time_limit=10.0, clip=True, cache=cache)[0]
    assert again is first or again is second              # the attack reuses a solve


def test_gap_table_splits_the_gap_on_decided_samples():
    from bench.leaderboard import tabulate
    base = {"model": "m", "eps": 0.1, "label": 0, "seconds": 0.0, "status": "ok",
            "config": "", "version": "t"}

    def rec(method, kind, sample, bound):
        decided = bound < 0 if kind == "verifier" else bound >= 0
        return dict(base, method=method, kind=kind, sample=sample, bound=bound, decided=decided)
    exact_upper = [-1.0, 2.0, 3.0, 4.0]       # milp certifies sample 0 only
    exact_lower = [-2.0, 1.0, 0.5, -1.0]      # milp-cex breaks 1 and 2; 3 stays undecided
    loose_upper = [1.0, 5.0, 5.0, 5.0]        # a loose verifier certifies nothing
    weak_lower = [-3.0, 0.2, -0.1, -2.0]      # a weak attack breaks sample 1 only
    records = [rec("milp", "verifier", n, exact_upper[n]) for n in range(4)] + \
              [rec("milp-cex", "attack", n, exact_lower[n]) for n in range(4)] + \
              [rec("loose", "verifier", n, loose_upper[n]) for n in range(4)] + \
              [rec("weak", "attack", n, weak_lower[n]) for n in range(4)]
    _, gaps, unsound = tabulate(records, {"milp", "milp-cex"})
    assert unsound.empty
    row = gaps.iloc[0]
    assert row["n_decided"] == 3
    assert row["exact_error"] == pytest.approx(2 / 3)
    assert row["verifier_looseness"] == pytest.approx(1 - 2 / 3)
    assert row["attack_weakness"] == pytest.approx(2 / 3 - 1 / 3)
    _, plain, _ = tabulate(records, set())
    assert np.isnan(plain.iloc[0]["exact_error"])
