"""Training objectives of the paper's networks (section 6): ``(loss, regulariser)`` pairs.

Each objective takes ``net``, a batch ``x (B, d)`` in ``[0, 1]``, ``y (B,)`` and its
hyper-parameters, and returns the total loss to minimise and the value of its
regulariser (the term that makes the network robust or certifiable), both scalars.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models import MLP
from verifiers.linear_bounds import margin_upper_bounds, wong_kolter_slope

Objective = tuple[torch.Tensor, torch.Tensor]


def cross_entropy(net: MLP, x: torch.Tensor, y: torch.Tensor) -> Objective:
    """Plain cross-entropy; no regulariser (NT-NN)."""
    loss = F.cross_entropy(net(x), y)
    return loss, torch.zeros(())


def hinge(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Multi-class hinge loss ``mean_n sum_{j != y} max(0, 1 + f_j - f_y) / K``."""
    return F.multi_margin_loss(logits, y)


def hinge_frobenius(net: MLP, x: torch.Tensor, y: torch.Tensor, *, lam: float) -> Objective:
    """Fro-NN: hinge + ``lam (||W||_F + ||V||_F)``."""
    weight, _, last, _ = net.one_hidden_layer()
    reg = torch.linalg.matrix_norm(weight) + torch.linalg.matrix_norm(last)
    return hinge(net(x), y) + lam * reg, reg.detach()


def hinge_spectral(net: MLP, x: torch.Tensor, y: torch.Tensor, *, lam: float) -> Objective:
    """Spe-NN: hinge + ``lam (||W||_2 + ||V||_2)`` (largest singular values, exact)."""
    weight, _, last, _ = net.one_hidden_layer()
    reg = torch.linalg.matrix_norm(weight, ord=2) + torch.linalg.matrix_norm(last, ord=2)
    return hinge(net(x), y) + lam * reg, reg.detach()


def pgd_points(net: MLP, x: torch.Tensor, y: torch.Tensor, *, eps: float, step: float,
               steps: int) -> torch.Tensor:
    """l-inf PGD on cross-entropy from a random start, projected into the ball and box."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(net(x_adv), y), x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def adversarial(net: MLP, x: torch.Tensor, y: torch.Tensor, *, lam: float, eps: float,
                step: float, steps: int) -> Objective:
    """AT-NN: cross-entropy + ``lam`` x cross-entropy on PGD points (paper: 0.5, 0.3, 0.1, 40)."""
    x_adv = pgd_points(net, x, y, eps=eps, step=step, steps=steps)
    reg = F.cross_entropy(net(x_adv), y)
    return F.cross_entropy(net(x), y) + lam * reg, reg.detach()


def lp_robust(net: MLP, x: torch.Tensor, y: torch.Tensor, *, eps: float) -> Objective:
    """LP-NN: the Kolter-Wong robust loss, cross-entropy of the LP upper bounds ``U``.

    ``log(1 + sum_{j != y} exp(U_j))`` with ``U_j >= f_j - f_y`` over the ball, so it bounds
    the worst-case cross-entropy from above.
    """
    upper = margin_upper_bounds(net, x, y, eps, wong_kolter_slope)
    robust = F.cross_entropy(upper.scatter(1, y.view(-1, 1), 0.0), y)
    return robust, robust.detach()


OBJECTIVES = {"cross-entropy": cross_entropy, "hinge+frobenius": hinge_frobenius,
              "hinge+spectral": hinge_spectral, "adversarial": adversarial,
              "lp-robust": lp_robust}
