"""Re-derived pre-activation bounds of branch-and-bound subdomains: sound by sampling,
never looser than the clamped ones, tighter somewhere, and empty only when empty."""

from __future__ import annotations

import torch

from tests.conftest import pre_activations, random_mlp
from verifiers.bab.layer_bounds import refined_layer_bounds, root_layer_bounds
from verifiers.linear.propagation import layer_params
from verifiers.linear.slope_optimisation import optimised_layer_bounds


def test_root_bounds_are_alpha_crown_s_and_their_slopes_reproduce_them():
    net = random_mlp([6, 12, 12, 12, 3], seed=11, scale=1.2).double().requires_grad_(False)
    params = layer_params(net, torch.float64)
    lo, hi = torch.full((1, 6), 0.2, dtype=torch.float64), torch.full((1, 6), 0.7,
                                                                        dtype=torch.float64)
    bounds, slopes = root_layer_bounds(params, lo, hi, iterations=10)
    for (low, up), (low_ref, up_ref) in zip(bounds, optimised_layer_bounds(
            params, lo, hi, iterations=10)):
        assert torch.equal(low, low_ref) and torch.equal(up, up_ref)
    unsplit = [(low.clone(), up.clone()) for low, up in bounds]
    again = refined_layer_bounds(params, unsplit, lo, hi, slopes, torch.tensor([1]))
    for (low, up), (low2, up2) in zip(bounds, again):    # the same slopes: the same bounds
        assert (low2 >= low).all() and (up2 <= up).all()
        assert float((low2 - low).max()) < 1e-12 and float((up - up2).max()) < 1e-12
    assert all(len(units) > 0 for units in slopes.units[1:])


def test_refined_bounds_are_sound_tighter_and_empty_only_when_empty():
    """Random subdomains (1 to 3 splits of units crossing zero at the root) of a
    four-hidden-layer network on a 2-d box (densely sampled, so an upper bound cut by
    0.02 below its true one is caught): every sampled point that meets a subdomain's splits lies
    within its re-derived bounds; they are never looser than the root's clamped to the
    splits, and tighter on some; no point meets the splits of a subdomain they show empty."""
    net = random_mlp([2, 12, 12, 12, 12, 3], seed=6, scale=1.3).double().requires_grad_(False)
    params = layer_params(net, torch.float64)
    lo, hi = torch.full((1, 2), 0.1, dtype=torch.float64), torch.full((1, 2), 0.8,
                                                                        dtype=torch.float64)
    root, slopes = root_layer_bounds(params, lo, hi, iterations=10)
    generator = torch.Generator().manual_seed(0)
    count = 60
    sigma = [torch.zeros(count, low.shape[1], dtype=torch.float64) for low, _ in root]
    first = torch.full((count,), len(root))
    crossing = [torch.nonzero((low[0] < 0) & (up[0] > 0)).flatten() for low, up in root]
    for d in range(count):
        for _ in range(1 + d % 3):
            layer = int(torch.randint(0, len(root) - 1, (1,), generator=generator))
            if len(crossing[layer]) == 0:
                continue
            unit = crossing[layer][int(torch.randint(len(crossing[layer]), (1,),
                                                     generator=generator))]
            sigma[layer][d, unit] = 1.0 if torch.rand(1, generator=generator) < 0.5 else -1.0
            first[d] = min(int(first[d]), layer + 1)
    clamped = [(torch.where(s > 0, low.clamp(min=0), low).expand(count, -1).clone(),
                torch.where(s < 0, up.clamp(max=0), up).expand(count, -1).clone())
               for s, (low, up) in zip(sigma, root)]
    refined = refined_layer_bounds(params, clamped, lo.expand(count, -1),
                                   hi.expand(count, -1), slopes, first)
    empty = torch.stack([(low > up).any(dim=1) for low, up in refined], 1).any(1)
    points = lo + (hi - lo) * torch.rand(20000, 2, generator=generator, dtype=torch.float64)
    values = pre_activations(params, points)                           # per layer (P, m)
    meets = torch.ones(count, len(points), dtype=torch.bool)
    for s, z in zip(sigma, values):
        meets &= ((s[:, None, :] * z[None]) >= 0).all(dim=2)            # (D, P)
    assert not (meets & empty[:, None]).any()
    assert empty.any() and meets[~empty].any(dim=1).float().mean() > 0.8   # checks bite
    tighter = 0.0
    for (low, up), (c_low, c_up), z in zip(refined, clamped, values):
        low, up = low[~empty], up[~empty]
        c_low, c_up = c_low[~empty], c_up[~empty]
        assert (low >= c_low).all() and (up <= c_up).all()
        tighter = max(tighter, float((low - c_low).max()), float((c_up - up).max()))
        outside = (z[None] < low[:, None] - 1e-9) | (z[None] > up[:, None] + 1e-9)
        assert not (outside & meets[~empty][:, :, None]).any()
    assert tighter > 1e-3
