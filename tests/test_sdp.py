"""The SDP verifiers: brute force, cvxpy cross-check, certificates, soundness, symmetry."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tests.conftest import assert_sound, random_inputs, random_mlp
from verifiers.cvxpy_solvers import SolverUnavailable, check_solver
from verifiers.sdp.cvxpy_pair_solver import solve_cvxpy
from verifiers.sdp.pair_solver import (
    certified_value,
    dense_matrix,
    dual_key,
    fallback,
    gershgorin_dual,
    mixing_dual,
    mixing_rounds,
    pair_block,
    primal_objective,
    printed_eq8_block,
    scaled_certificate,
    solve_pair,
    unit_columns,
)
from verifiers.sdp.sdp import SDP
from verifiers.sdp.sdp_dual import SDPDual


def weights(net):
    w = net.linears[0].weight.detach().double().numpy()
    v = net.linears[1].weight.detach().double().numpy()
    return w, v


def brute_force_qp(a: np.ndarray) -> float:
    """``max_{t in {-1,1}^d, s in {0,1}^m} t^T A s`` (eq. 6), by enumeration."""
    d, m = a.shape
    t = np.array(list(itertools.product([-1.0, 1.0], repeat=d)))
    s = np.array(list(itertools.product([0.0, 1.0], repeat=m)))
    return float((t @ a @ s.T).max())


@pytest.mark.parametrize("seed", range(4))
def test_sdp_is_above_the_enumerated_qp_and_close_to_clarabel(seed):
    net = random_mlp([5, 6, 3], seed=seed, scale=2.0)
    w, v = weights(net)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        block = pair_block(w, v[j] - v[i])
        qp = brute_force_qp(w.T * (v[j] - v[i])[None, :])
        # the quadratic form over {-1,1}^D agrees with eq. 6 (the relaxation is exact there)
        full = dense_matrix(block)
        ys = np.array(list(itertools.product([-1.0, 1.0], repeat=full.shape[0] - 1)))
        ys = np.hstack([np.ones((len(ys), 1)), ys])
        assert np.einsum("ni,ij,nj->n", ys, full, ys).max() / 4 == pytest.approx(qp, rel=1e-12)
        ours = solve_pair(w, v[j] - v[i], target_gap=1e-8)
        assert ours.primal <= ours.certified
        assert ours.certified / 4 >= qp - 1e-9
        reference = solve_cvxpy(block, solver="CLARABEL")
        assert ours.certified == pytest.approx(reference.certified, rel=1e-6)


def test_the_printed_eq_8_coupling_can_fall_below_the_true_qp():
    """Why sdp_core puts ``A 1`` in the 1-t block: the printed 1-s form is not an upper bound.

    For random one-hidden-layer pairs, the quadratic form of eq. 8 as printed, maximised
    over ``{-1, 1}^D`` (which is what the relaxation relaxes), falls below eq. 6's true
    QP on some instances, while ours equals it on every instance.
    """
    rng = np.random.default_rng(1)
    below = 0
    for _ in range(40):
        w, v = rng.standard_normal((4, 3)), rng.standard_normal(4)
        qp = brute_force_qp(w.T * v[None, :])
        ys = np.array(list(itertools.product([-1.0, 1.0], repeat=3 + 4)))
        ys = np.hstack([np.ones((len(ys), 1)), ys])
        printed = np.einsum("ni,ij,nj->n", ys, printed_eq8_block(w, v), ys).max() / 4
        ours = np.einsum("ni,ij,nj->n", ys, dense_matrix(pair_block(w, v)), ys).max() / 4
        assert ours == pytest.approx(qp, rel=1e-12)
        below += printed < qp - 1e-6
    assert below >= 1


def test_matches_scs_on_a_small_network():
    net = random_mlp([20, 10, 3], seed=5)
    w, v = weights(net)
    block = pair_block(w, v[2] - v[0])
    ours = solve_pair(w, v[2] - v[0], target_gap=1e-7)
    scs = solve_cvxpy(block, solver="SCS", eps=1e-7)
    assert scs.primal <= ours.certified + 1e-9 and ours.primal <= scs.certified + 1e-9
    assert ours.certified == pytest.approx(scs.certified, rel=1e-4)


def test_symmetry_in_the_sign_of_v():
    net = random_mlp([30, 20, 2], seed=6)
    w, v = weights(net)
    plus = solve_pair(w, v[1] - v[0], target_gap=1e-7)
    minus = solve_pair(w, v[0] - v[1], target_gap=1e-7)
    assert plus.certified == pytest.approx(minus.certified, rel=2e-7)
    # the sign flip of t maps one problem onto the other, so a dual vector transfers
    c_minus, _ = certified_value(pair_block(w, v[0] - v[1]), plus.dual)
    assert c_minus == pytest.approx(plus.certified, rel=1e-12)


def test_any_dual_vector_is_an_upper_bound_and_gershgorin_is_looser():
    net = random_mlp([15, 10, 2], seed=7)
    w, v = weights(net)
    block = pair_block(w, v[1] - v[0])
    optimum = solve_pair(w, v[1] - v[0], target_gap=1e-8)
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = rng.standard_normal(optimum.dual.shape) * 3
        assert certified_value(block, c)[0] >= optimum.primal - 1e-9
    loose = fallback(block, "test")
    assert loose.certified >= optimum.certified and loose.status == "fallback: test"
    assert np.array_equal(loose.dual, gershgorin_dual(block))


@pytest.fixture(scope="module")
def tiny():
    net = random_mlp([16, 12, 4], seed=8, scale=2.0)
    x, y = random_inputs(30, 16, 4, seed=9)
    return net, x, y


@pytest.mark.parametrize("verifier", [SDP(), SDPDual()], ids=lambda v: v.name)
def test_sound_against_sampling_and_pgd(verifier, tiny):
    net, x, y = tiny
    assert_sound(verifier.bound(net, x.double(), y, 0.1), net, x, y, 0.1, atol=1e-9)


def test_sdp_dual_with_the_optimal_vectors_matches_sdp(tiny):
    net, x, y = tiny
    exact = SDP(target_gap=1e-8)
    table = exact.pair_values(net)
    w, v = weights(net)
    with_duals = random_mlp([16, 12, 4], seed=8, scale=2.0)
    for i in range(4):
        for j in range(i + 1, 4):
            c = solve_pair(w, v[j] - v[i], target_gap=1e-8).dual
            with_duals.certificates[dual_key(i, j)] = torch.from_numpy(c)
    dual = SDPDual()
    assert np.allclose(dual.pair_values(with_duals), table, rtol=1e-6)
    assert {row["status"] for row in dual.statistics()} == {"trained"}
    quick = SDPDual(steps=3, use_trained=False).pair_values(net)
    assert (quick >= table - 1e-9).all()                # any c only loosens the bound
    assert np.allclose(dual.bound(with_duals, x.double(), y, 0.1),
                       exact.bound(net, x.double(), y, 0.1), rtol=1e-6)


def test_sdp_is_tighter_than_the_norm_bounds(tiny):
    from verifiers.norm.frobenius import Frobenius
    from verifiers.norm.spectral import Spectral
    net, x, y = tiny
    sdp = SDP().bound(net, x.double(), y, 0.1)
    spectral = Spectral().bound(net, x.double(), y, 0.1)
    frobenius = Frobenius().bound(net, x.double(), y, 0.1)
    finite = torch.isfinite(sdp)
    assert (sdp[finite] <= spectral[finite]).all() and (sdp[finite] <= frobenius[finite]).all()


def test_pair_values_are_cached_per_weights(tiny):
    net, _, _ = tiny
    verifier = SDP()
    first = verifier.pair_values(net)
    assert verifier.pair_values(net) is first
    assert len(verifier.statistics()) == 6
    other = random_mlp([16, 12, 4], seed=99)
    assert verifier.pair_values(other) is not first
    assert len(verifier.statistics()) == 12


def test_unavailable_solver_is_one_clear_error():
    import cvxpy as cp
    if "MOSEK" in cp.installed_solvers():
        pytest.skip("MOSEK is installed here")
    with pytest.raises(SolverUnavailable, match=r"'MOSEK' is not installed \(pip install "
                       r"'certbench\[mosek\]'.*; SDP solvers available"):
        check_solver("MOSEK")
    with pytest.raises(SolverUnavailable):
        SDP(backend="cvxpy", solver="MOSEK")
    with pytest.raises(ValueError, match="backend must be one of"):
        SDP(backend="magic")


def test_cvxpy_backend_through_the_plugin(tiny):
    net, x, y = tiny
    via_cvxpy = SDP(backend="cvxpy", solver="CLARABEL").pair_values(net)
    native = SDP(target_gap=1e-8).pair_values(net)
    assert np.allclose(via_cvxpy, native, rtol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_the_solver_certificate_is_eq_14_with_a_negative_semidefinite_remainder(seed):
    """The reported value is ``sum(c')`` for the returned ``c'``; the dense eq. 14 of
    that same vector agrees: ``M - diag(c')`` has no eigenvalue above rounding."""
    net = random_mlp([40, 25, 3], seed=seed)
    w, v = weights(net)
    solution = solve_pair(w, v[2] - v[1], target_gap=1e-6)
    block = pair_block(w, v[2] - v[1])
    dense, top = certified_value(block, solution.dual)
    assert top <= 1e-9 * solution.certified
    assert dense == pytest.approx(solution.certified, rel=1e-9)
    assert solution.primal <= solution.certified and solution.rel_gap <= 1e-6


def test_bad_factors_still_give_a_valid_looser_certificate():
    """A deliberately poor primal (random factors, a few rounds) gives a larger but valid
    bound: never below the optimum, whatever the factors."""
    net = random_mlp([30, 20, 2], seed=3)
    w64, v64 = (torch.from_numpy(a) for a in weights(net))
    v = (v64[1] - v64[0])[None]
    block = pair_block(w64.numpy(), v[0].numpy())
    optimum = solve_pair(w64, v[0], target_gap=1e-8)
    generator = torch.Generator().manual_seed(0)
    for rounds in (0, 1, 3):
        side_s = unit_columns(1, 4, 21, generator)
        side_t = unit_columns(1, 4, 30, generator)
        if rounds:
            side_t, side_s, _ = mixing_rounds(w64, v, side_s, rounds)
        c = mixing_dual(w64, v, side_t, side_s)[0].numpy()
        bound, _ = scaled_certificate(block, c[1:31], np.concatenate([c[:1], c[31:]]),
                                      hint=(side_t[0].numpy(), side_s[0].numpy()))
        assert bound >= optimum.certified * (1 - 1e-9)
        assert bound > optimum.certified * (1 + 1e-4) or rounds == 3
        assert float(primal_objective(w64, v, side_t, side_s)[0]) <= optimum.certified + 1e-9


def test_solved_pairs_persist_and_a_resumed_solve_only_does_the_rest(tmp_path, tiny,
                                                                      monkeypatch):
    """With a cache folder, each piece of pairs is saved as it finishes; a new instance (a
    resumed run) reads them back and solves only the pairs that are missing."""
    import json

    import verifiers.sdp.sdp as sdp_module
    net, x, y = tiny
    first = SDP()
    first.cache_in(tmp_path)
    table = first.pair_values(net)
    (saved,) = tmp_path.glob("*.json")
    rows = json.loads(saved.read_text())
    assert len(rows) == 6 and rows["0-1"]["certified"] == table[0, 1]
    del rows["1-3"]                                     # as if interrupted before this pair
    saved.write_text(json.dumps(rows))
    asked = []
    real = sdp_module.solve_pairs

    def counting(weight, v, **options):
        asked.append(len(v))
        return real(weight, v, **options)
    monkeypatch.setattr(sdp_module, "solve_pairs", counting)
    again = SDP()
    again.cache_in(tmp_path)
    assert np.allclose(again.pair_values(net), table, rtol=1e-6) and asked == [1]
    other = SDP(target_gap=1e-6)                        # another configuration: its own file
    other.cache_in(tmp_path)
    other.pair_values(net)
    assert asked == [1, 6] and len(list(tmp_path.glob("*.json"))) == 2


@pytest.mark.parametrize("kind", [SDP, SDPDual])
def test_the_pair_table_does_not_depend_on_how_the_pairs_are_split(tiny, kind):
    """One piece (in process) or one per worker: each pair's solve is seeded by the pair,
    so the table is the same to the bit (what lets a cluster equal one process)."""
    net, _, _ = tiny
    tables = []
    for workers in (1, 2, 6):
        verifier = kind() if kind is SDP else kind(use_trained=False)
        pieces = verifier.shared_work(net, torch.empty(0), torch.empty(0), 0.0, workers)
        assert len(pieces) == workers
        verifier.use_shared(net, {key: work(net) for key, work in pieces.items()})
        tables.append(verifier.pair_values(net))
    assert all(np.array_equal(tables[0], other) for other in tables[1:])
