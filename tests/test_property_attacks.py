"""The attacks on a property's unsafe groups (``attacks/property_attacks.py``, the VNN-COMP
portfolio's attack) and the attacks during branch and bound
(``verifiers/bab/search_attacks.py``): closed-form worst points of linear networks, the
true violation of every returned point, the DLR scale, and counterexamples in a narrow
region that fixed-step signed ascent steps over."""

from __future__ import annotations

import pytest
import torch

from attacks.apgd import dlr_scale
from attacks.property_attacks import (
    apgd_from,
    apgd_property,
    attack_property,
    square_property,
    strongest_attack,
)
from bench.contract import Property
from models import MLP
from tests.conftest import random_mlp
from verifiers.bab.options import SearchOptions
from verifiers.bab.search import decide
from verifiers.bab.search_attacks import STARTS, attack_candidates, attack_due


def linear_instance(seed: int):
    """A linear network ``f = W x + b`` (6 inputs, 3 outputs), a box, the row ``f_0 - f_1``,
    its closed-form maximiser over the box (the corner ``where(c W > 0, hi, lo)``) and
    maximum."""
    net = random_mlp([6, 3], seed=seed).double()
    generator = torch.Generator().manual_seed(seed)
    lo = torch.rand(6, dtype=torch.float64, generator=generator) - 1
    hi = lo + torch.rand(6, dtype=torch.float64, generator=generator)
    row = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    w, b = net.linears[0].weight.detach(), net.linears[0].bias.detach()
    corner = torch.where((row @ w)[0] > 0, hi, lo)
    return net, lo, hi, row, corner, float(row[0] @ (w @ corner + b))


@pytest.mark.parametrize("attack", ["apgd-margin", "square"])
def test_each_attack_reaches_the_closed_form_worst_point_of_a_linear_network(attack):
    """The threshold is out of reach, so every attack runs to its end: it returns the
    maximiser (a vertex, which Square searches over and APGD reaches) and the maximum.
    (APGD on the DLR form maximises the violation over the outputs' spread, whose
    maximiser is another point.)"""
    for seed in (9, 10, 11):
        net, lo, hi, row, corner, best = linear_instance(seed)
        threshold = best + 1.0
        prop = Property(lo, hi, ((row, torch.tensor([threshold], dtype=torch.float64)),))
        if attack == "square":
            point, violation = square_property(net, prop, restarts=4, queries=200)
        else:
            point, violation = apgd_property(net, prop, restarts=4, steps=50,
                                             loss=attack.split("-")[1])
        assert violation == pytest.approx(best - threshold, abs=1e-9)
        assert torch.allclose(point, corner)


def test_the_portfolio_attack_reaches_the_closed_form_worst_corner():
    """A threshold a hair below the closed-form maximum is violated only next to the
    maximising corner: the portfolio's attack finds a point there."""
    for seed in (9, 10, 11):
        net, lo, hi, row, corner, best = linear_instance(seed)
        prop = Property(lo, hi, ((row, torch.tensor([best - 1e-9], dtype=torch.float64)),))
        point, violation, name = strongest_attack(net, prop, seed=seed)
        assert violation >= 0 and name != "none"
        assert torch.allclose(point, corner, atol=1e-6)


def test_the_property_attacks_return_points_in_the_box_with_their_true_violation():
    """Each attack's point lies in the box; the violation it reports is its point's
    (float64), at most the property's there, and at least the box centre's (a start)."""
    net = random_mlp([3, 12, 12, 4], seed=4, scale=1.5).double()
    lo, hi = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    groups = ((torch.tensor([[1.0, -1.0, 0, 0], [1.0, 0, -1.0, 0]], dtype=torch.float64),
               torch.zeros(2, dtype=torch.float64)),
              (torch.tensor([[0, 0, 1.0, -1.0]], dtype=torch.float64),
               torch.full((1,), 0.5, dtype=torch.float64)))
    prop = Property(lo, hi, groups)

    def worst(point: torch.Tensor) -> float:
        with torch.no_grad():
            outputs = net(point[None])[0]
        return max(float((rows @ outputs - offsets).min()) for rows, offsets in groups)

    attacks = [lambda: attack_property(net, prop, restarts=8, steps=40),
               lambda: apgd_property(net, prop, restarts=8, steps=40),
               lambda: apgd_property(net, prop, restarts=8, steps=40, loss="dlr"),
               lambda: square_property(net, prop, restarts=8, queries=40)]
    for attack in attacks:
        point, violation = attack()
        assert bool(((point >= lo) & (point <= hi)).all())
        assert violation == pytest.approx(worst(point), abs=1e-12)
    for attack in attacks[:3]:                  # the gradient attacks start at the centre
        assert attack()[1] >= worst((lo + hi) / 2) - 1e-12


def test_the_dlr_scale_is_the_spread_of_the_outputs_and_keeps_the_sign():
    """``z_(1) - (z_(3) + z_(4)) / 2`` of the sorted outputs; positive; a shift of the
    outputs leaves it, a scaling scales it, so the DLR violation is scale-invariant."""
    outputs = torch.tensor([[3.0, -1.0, 2.0, 0.0, 1.0]], dtype=torch.float64)
    assert float(dlr_scale(outputs)[0]) == pytest.approx(3.0 - (1.0 + 0.0) / 2)
    generator = torch.Generator().manual_seed(0)
    random = torch.randn(50, 7, generator=generator, dtype=torch.float64)
    scale = dlr_scale(random)
    assert bool((scale > 0).all())
    assert torch.allclose(dlr_scale(random + 5.0), scale)
    assert torch.allclose(dlr_scale(3.0 * random), 3.0 * scale, atol=1e-11)
    assert float(dlr_scale(torch.ones(4, 1, dtype=torch.float64))[0]) == 1.0


def bump(inputs: int = 4, sharpness: float = 60.0) -> tuple[MLP, torch.Tensor]:
    """``f(x) = 1 - k ||x - c||_1`` as a ReLU network (``relu(x - c) + relu(c - x)`` per
    input): above ``1/2`` only within ``l1`` distance ``1 / (2k)`` of ``c``, a region far
    narrower than a fixed step of a quarter of the box."""
    centre = torch.tensor([0.3137, -0.4419, 0.0771, 0.6203], dtype=torch.float64)[:inputs]
    net = MLP([inputs, 2 * inputs, 1]).double()
    with torch.no_grad():
        eye = torch.eye(inputs, dtype=torch.float64)
        net.linears[0].weight.copy_(torch.cat([eye, -eye]))
        net.linears[0].bias.copy_(torch.cat([-centre, centre]))
        net.linears[1].weight.copy_(torch.full((1, 2 * inputs), -sharpness,
                                               dtype=torch.float64))
        net.linears[1].bias.fill_(1.0)
    return net.requires_grad_(False), centre


def bump_property(inputs: int = 4) -> tuple[MLP, Property, torch.Tensor]:
    net, centre = bump(inputs)
    lo, hi = -torch.ones(inputs, dtype=torch.float64), torch.ones(inputs, dtype=torch.float64)
    unsafe = ((torch.ones(1, 1, dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)),)
    return net, Property(lo, hi, unsafe), centre


def test_the_portfolio_attack_finds_a_narrow_counterexample_the_signed_ascent_misses():
    """On the bump, signed ascent with its fixed step oscillates around the centre and never
    enters the region; the portfolio's attack (APGD halves its step) lands in it."""
    net, prop, centre = bump_property()
    _, ascent = attack_property(net, prop, restarts=16, steps=100)
    assert ascent < 0
    point, violation, name = strongest_attack(net, prop)
    assert violation >= 0 and name.startswith("apgd")
    with torch.no_grad():
        assert float(net(point[None])[0, 0]) >= 0.5
    assert float((point - centre).abs().sum()) <= 1 / 120 + 1e-12


def test_apgd_from_subdomain_maximisers_climbs_to_the_nearby_maximum():
    """From box corners (where ReLU splitting's candidates lie), APGD in the whole box
    reaches the bump's peak region; :func:`attack_candidates` keeps the starts of largest
    bound and ignores closed ones (bound ``-inf``)."""
    net, prop, centre = bump_property()
    rows, offsets = prop.groups[0]
    corners = torch.tensor([[float(b) for b in f"{i:04b}"] for i in range(16)],
                           dtype=torch.float64) * 2 - 1
    point, violation = apgd_from(net, rows, offsets, corners, prop.lo.expand(16, -1).clone(),
                                 prop.hi.expand(16, -1).clone(), steps=50)
    assert violation >= 0
    bounds = torch.full((16,), -torch.inf, dtype=torch.float64)
    assert attack_candidates(net, rows, offsets, corners, bounds, prop.lo, prop.hi) is None
    bounds[:4] = 1.0
    found = attack_candidates(net, rows, offsets, corners, bounds, prop.lo, prop.hi)
    assert found is not None and float(net(found[None])[0, 0]) >= 0.5
    assert STARTS >= 1 and [n for n in range(1, 40) if attack_due(n)] == [1, 2, 4, 8, 16, 32]


@pytest.mark.parametrize("branching", ["relu", "input"])
def test_the_searches_attack_during_branch_and_bound(branching, monkeypatch):
    """With no attack first, both searches find the bump's counterexample within their
    first batches; with the in-search attack switched off, the candidate checks alone
    need many times the subdomains (they find it only once the pieces are small)."""
    import verifiers.bab.input_split as input_split
    import verifiers.bab.search as search

    net, prop, centre = bump_property()
    options = SearchOptions(time_limit=30, branching=branching)
    outcome = decide(net, prop, options, restarts=0)
    assert outcome.verdict == "violated"
    with torch.no_grad():
        assert float(net(outcome.counterexample[None])[0, 0]) >= 0.5
    for module in (search, input_split):
        monkeypatch.setattr(module, "attack_due", lambda batch_number: False)
    unattacked = decide(net, prop, options, restarts=0)
    assert unattacked.verdict == "violated"
    assert unattacked.nodes >= 10 * outcome.nodes


def test_a_budget_shrinks_the_attacks_steps_but_never_below_the_floor():
    """No budget: the steps asked; a budget no step fits in: the floor; a budget far
    beyond: the steps asked. And with a spent budget the attack still returns a point of
    the box with its true violation (its first attack runs)."""
    from attacks.property_attacks import MIN_STEPS, affordable_steps

    net, prop, _ = bump_property()
    assert affordable_steps(net, prop, 16, 100, None) == 100
    assert affordable_steps(net, prop, 16, 100, 0.0) == MIN_STEPS
    assert affordable_steps(net, prop, 16, 100, 1e9) == 100
    point, violation, name = strongest_attack(net, prop, budget=0.0)
    assert bool(((point >= prop.lo) & (point <= prop.hi)).all())
    with torch.no_grad():
        assert violation == pytest.approx(float(net(point[None])[0, 0]) - 0.5, abs=1e-12)


def test_a_large_network_gets_fewer_starts_never_none():
    """The starts an attack takes shrink with the numbers a forward pass holds
    (:func:`starts_that_fit`); a small network keeps all of them, and never fewer than
    one remains."""
    from attacks.property_attacks import (
        ATTACK_MEMORY,
        BYTES_PER_FLOAT,
        activation_floats,
        starts_that_fit,
    )
    from models.graph import GraphNet, Node

    net, _, _ = bump_property()
    assert activation_floats(net) == 4 + 8 + 1
    assert starts_that_fit(net, 16, 9) == 16
    big = GraphNet([Node("input", (), (3, 2000, 2000)),
                    Node("reshape", (0,), (12_000_000,))], {})
    assert activation_floats(big) == 24_000_000
    assert starts_that_fit(big, 16) == ATTACK_MEMORY // (24_000_000 * BYTES_PER_FLOAT)
    assert 1 <= starts_that_fit(big, 16) < 16
    assert starts_that_fit(big, 16, 9) == 1
