"""A third-party verifier and attack, written only against the documented contract."""

import torch


class Interval:
    """Interval arithmetic through every layer: a sound (loose) upper bound U (N, K)."""

    name = "interval"

    def __repr__(self) -> str:
        return "Interval()"

    def bound(self, net, x, y, eps):
        lo, hi = (x - eps).clamp(0, 1).double(), (x + eps).clamp(0, 1).double()
        layers = list(net.linears)
        for i, layer in enumerate(layers):
            w, b = layer.weight.detach().double(), layer.bias.detach().double()
            mid, rad = (hi + lo) / 2, (hi - lo) / 2
            centre, spread = mid @ w.T + b, rad @ w.abs().T
            lo, hi = centre - spread, centre + spread
            if i < len(layers) - 1:
                lo, hi = lo.clamp(min=0), hi.clamp(min=0)
        upper = hi - lo.gather(1, y.view(-1, 1))
        return upper.scatter(1, y.view(-1, 1), float("-inf"))


class CornerNoise:
    """Random corners of the ball: a weak attack returning points x_adv (N, d)."""

    name = "corner-noise"

    def __init__(self, *, tries: int = 1):
        self.tries = tries

    def __repr__(self) -> str:
        return f"CornerNoise(tries={self.tries})"

    def perturb(self, net, x, y, eps):
        return x + eps * (torch.randint(0, 2, x.shape).to(x.dtype) * 2 - 1)


class CleanMargin:
    """Deliberately UNSOUND: claims the clean margin is the worst case. The test suite
    uses it to show that the soundness guard flags a broken verifier."""

    name = "clean-margin"

    def __repr__(self) -> str:
        return "CleanMargin()"

    def bound(self, net, x, y, eps):
        logits = net(x.to(net.linears[0].weight.dtype)).double()
        out = logits - logits.gather(1, y.view(-1, 1))
        return out.scatter(1, y.view(-1, 1), float("-inf"))
