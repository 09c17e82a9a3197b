"""``apgd-dlr``: Auto-PGD on the DLR loss, by default targeted at the top classes (as
AutoAttack's APGD-T), l-inf."""

from __future__ import annotations

import torch

from attacks.apgd import apgd, dlr_loss
from attacks.common import frozen_copy, unbroken_runs
from bench.contract import BOOLEAN, Configurable, Integer, check_options
from models import MLP


class APGDDifferenceOfLogitsRatio(Configurable):
    """APGD with the DLR loss (invariant to shifts and scalings of the logits).

    ``targeted=True``: for each sample, the ``targets`` wrong classes of largest clean
    logit, most likely first, one APGD run each on the samples not yet broken
    (``restarts`` rounds over them). ``targeted=False``: untargeted DLR, ``restarts``
    runs. ``steps`` iterations per run.
    """

    name = "apgd-dlr"
    graphs = True          # needs only forward passes: any network
    opt_in = True

    def __init__(self, *, steps: int = 100, restarts: int = 1, targeted: bool = True,
                 targets: int = 9) -> None:
        check_options(steps=(steps, Integer(1)), restarts=(restarts, Integer(1)),
                      targeted=(targeted, BOOLEAN), targets=(targets, Integer(1)))
        self.steps = steps
        self.restarts = restarts
        self.targeted = targeted
        self.targets = targets

    def perturb(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)`` in ``[0, 1]``, ``y (N,)`` -> ``x_adv (N, d)`` float32 in the ball."""
        net = frozen_copy(net)
        x, y = x.detach().to(torch.float32), y.to(torch.int64)
        if not self.targeted:
            return unbroken_runs(net, x, y, self.restarts, lambda rows, run: apgd(
                net, x[rows], y[rows], float(eps), dlr_loss, steps=self.steps))
        with torch.no_grad():
            logits = net(x)
        # wrong classes by clean logit, largest first (the label sorts last)
        ranked = logits.scatter(1, y.view(-1, 1), float("-inf")).argsort(dim=1, descending=True)
        count = min(self.targets, logits.shape[1] - 1)

        def attempt(rows: torch.Tensor, run: int) -> tuple[torch.Tensor, torch.Tensor]:
            target = ranked[rows, run % count]
            return apgd(net, x[rows], y[rows], float(eps), dlr_loss, steps=self.steps,
                        target=target)

        return unbroken_runs(net, x, y, self.restarts * count, attempt)
