"""Starting points for exact searches: the best of signed-gradient ascent and targeted
APGD-DLR per sample."""

from __future__ import annotations

import torch

from attacks.apgd_dlr import APGDDifferenceOfLogitsRatio
from bench.contract import input_box, margins, project_box, signed_ascent
from models import MLP


def seed_points(net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float, clip: bool,
                steps: int = 30, apgd_seed: bool = True) -> torch.Tensor:
    """Primal heuristic: ``(N, d)`` float64 points in the box, the better per sample of
    signed-gradient ascent on ``max_j f_j - f_y`` from ``x`` and, with ``clip`` and
    ``apgd_seed``, APGD on
    the targeted DLR loss towards the 3 classes of largest clean logit (``attacks.apgd``;
    it searches ``B_eps(x) ∩ [0, 1]^d``). A positive margin decides a sample at once (on
    AT-NN at eps 0.1 the ascent alone missed most breakable samples); otherwise the point
    seeds each MILP's incumbent.
    """

    net64 = net.float64_copy().requires_grad_(False)
    x64 = x.to(torch.float64)
    lo, hi = input_box(x64, eps, clip)
    ascent = signed_ascent(lambda points: margins(net64(points), y).amax(dim=1), x64, lo, hi,
                           step=eps / 4, steps=steps, keep_best=True)
    if not (clip and apgd_seed):
        return ascent
    with torch.random.fork_rng():
        torch.manual_seed(0)
        found = APGDDifferenceOfLogitsRatio(targets=3).perturb(net, x64.float(), y, eps)
    found = project_box(found.to(torch.float64), lo, hi)
    with torch.no_grad():
        better = margins(net64(found), y).amax(dim=1) > margins(net64(ascent), y).amax(dim=1)
    return torch.where(better.view(-1, 1), found, ascent)


