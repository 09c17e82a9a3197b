"""Training objectives of the paper's networks (section 6): ``(loss, regulariser)`` pairs.

Each objective takes ``net``, a batch ``x (B, d)`` in ``[0, 1]``, ``y (B,)`` and its
hyper-parameters, and returns the total loss to minimise and the value of its
regulariser (the term that makes the network robust or certifiable), both scalars.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bench.contract import input_box, margins, signed_ascent
from bench.training.sdp_regulariser import dual_objective, structured_operator, top_eigenpairs
from models import MLP
from verifiers.linear.propagation import margin_upper_bounds, wong_kolter_slope
from verifiers.sdp.pair_solver import (
    class_pairs,
    dual_key,
    first_order_duals,
    mixing_dual,
    mixing_rounds,
    primal_objective,
)
from verifiers.sdp.sdp_dual import SDPDual

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
    start = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    return signed_ascent(lambda points: F.cross_entropy(net(points), y), start,
                         *input_box(x, eps), step=step, steps=steps)


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


class HingeSDP:
    """SDP-NN (eq. 15, sec. 6.3): hinge + ``lam * sum_j w_ij R_ij`` over the pairs of one class.

    Each step draws one class ``i_t`` and regularises its nine pairs ``(i_t, j)``.
    ``R_ij`` bounds ``SDP(M_ij)``, computed one of two ways (``regulariser``):

    * ``"dual"``, eq. 15 as printed: ``R = D lambda_max^+(M - diag c) + 1^T max(c, 0)``
      with dual vectors ``c (45, D)`` trained with the weights; the top eigenvector of
      each pair is tracked by ``iterations`` warm-started LOBPCG iterations (block
      ``block``);
    * ``"primal"``: ``R = <M, P>`` with ``P`` the mixing method's rank-``rank`` factors,
      tracked by ``iterations`` warm-started rounds per step. At the SDP's maximiser
      this is ``SDP(M)`` and its gradient is the gradient of eq. 15 at the optimal
      ``c`` (Danskin), rather than one vertex of a subdifferential. ``c`` is then the
      mixing dual of the tracked factors.

    Either way the saved ``c`` certifies through eq. 16 (any ``c`` does).
    Weights ``w_ij`` (weighted scheme): ``45 x`` the fraction of training points whose
    maximising term in eq. 12 is the pair ``{i, j}``, so the unweighted scheme is
    ``w = 1`` and the total weight is unchanged; refreshed every ``refresh_every`` epochs.
    """

    def __init__(self, net: MLP, *, lam: float, eps: float, refresh_every: int = 20,
                 regulariser: str = "dual", block: int = 4, rank: int = 16,
                 iterations: int = 3, seed: int = 0) -> None:
        if regulariser not in ("dual", "primal"):
            raise ValueError(f"regulariser must be 'dual' or 'primal', got {regulariser!r}")
        weight, _, last, _ = net.one_hidden_layer()
        self.net = net
        self.lam, self.eps, self.refresh_every = lam, eps, refresh_every
        self.regulariser, self.iterations = regulariser, iterations
        self.pairs = class_pairs(last.shape[0])
        self.lookup = {pair: p for p, pair in enumerate(self.pairs)}
        self.pair_weights = torch.ones(len(self.pairs))
        self.generator = torch.Generator().manual_seed(seed)
        (m, d), count = weight.shape, len(self.pairs)
        if regulariser == "primal":
            self.side_t = torch.randn(count, rank, d, generator=self.generator)
            self.side_s = torch.randn(count, rank, m + 1, generator=self.generator)
            self.side_s /= self.side_s.norm(dim=1, keepdim=True)
            self.dual = torch.zeros(count, 1 + d + m)
        else:
            w = weight.detach().double().numpy()
            v = last.detach().double().numpy()
            self.dual = torch.nn.Parameter(torch.tensor(first_order_duals(
                w, np.stack([v[j] - v[i] for i, j in self.pairs]), seed=seed),
                dtype=torch.float32))
            self.blocks = torch.randn(count, 1 + d + m, block, generator=self.generator)
        self.track(self.all_pairs, 30)

    @property
    def all_pairs(self) -> list[int]:
        return list(range(len(self.pairs)))

    def pair_of(self, i: int, j: int) -> int:
        """Index of the unordered pair ``{i, j}`` in :attr:`pairs`."""
        return self.lookup[(min(i, j), max(i, j))]

    def parameters(self) -> list[torch.Tensor]:
        return [self.dual] if self.regulariser == "dual" else []

    def pair_vectors(self, indices: list[int]) -> torch.Tensor:
        """``v_p = V_j - V_i`` for the pairs ``indices``: ``(P, m)``, differentiable."""
        last = self.net.one_hidden_layer()[2]
        first = torch.tensor([self.pairs[p][0] for p in indices])
        second = torch.tensor([self.pairs[p][1] for p in indices])
        return last[second] - last[first]

    def track(self, indices, iterations: int) -> None:
        """Advance the warm-started eigenvectors (dual) or factors (primal) of ``indices``."""
        indices = list(indices)
        weight = self.net.one_hidden_layer()[0].detach()
        with torch.no_grad():
            v = self.pair_vectors(indices)
            if self.regulariser == "primal":
                self.side_t[indices], self.side_s[indices], _ = mixing_rounds(
                    weight, v, self.side_s[indices], iterations)
            else:
                operator = structured_operator(weight, v, self.dual[indices])
                self.blocks[indices] = top_eigenpairs(operator, self.blocks[indices],
                                                      iterations)[1]

    def values(self, indices: list[int]) -> torch.Tensor:
        """``R_p`` at the tracked vectors, ``(P,)``, differentiable in the weights (and ``c``)."""
        weight = self.net.one_hidden_layer()[0]
        v = self.pair_vectors(indices)
        if self.regulariser == "primal":
            return primal_objective(weight, v, self.side_t[indices], self.side_s[indices])
        return dual_objective(weight, v, self.dual[indices], self.blocks[indices][:, :, 0])

    def begin_epoch(self, epoch: int, x: torch.Tensor, y: torch.Tensor) -> str:
        """Refresh the pair weights every ``refresh_every`` epochs (not at epoch 0)."""
        if epoch == 0 or epoch % self.refresh_every:
            return ""
        self.track(self.all_pairs, 10)
        table = torch.zeros(self.net.num_classes, self.net.num_classes)
        with torch.no_grad():
            for (i, j), value in zip(self.pairs, self.values(self.all_pairs)):
                table[i, j] = table[j, i] = value
            upper = margins(self.net(x), y) + self.eps / 4 * table[y]
        worst = upper.argmax(dim=1)
        counts = torch.zeros(len(self.pairs))
        for i, j in zip(worst.tolist(), y.tolist()):
            counts[self.pair_of(i, j)] += 1
        self.pair_weights = len(self.pairs) * counts / counts.sum()
        return "pair weights " + " ".join(f"{w:.2f}" for w in self.pair_weights.tolist())

    def __call__(self, net: MLP, x: torch.Tensor, y: torch.Tensor) -> Objective:
        chosen = int(torch.randint(net.num_classes, (1,), generator=self.generator))
        indices = [self.pair_of(chosen, j) for j in range(net.num_classes) if j != chosen]
        self.track(indices, self.iterations)
        reg = (self.pair_weights[indices] * self.values(indices)).sum()
        return hinge(net(x), y) + self.lam * reg, reg.detach()

    def validate(self, net: MLP, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Dual-certified error (eq. 16, exact float64 eigenvalues) and mean ``R`` on ``x``."""
        copy = net.float64_copy()
        self.finish(copy)
        verifier = SDPDual()
        upper = verifier.bound(copy, x, y, self.eps)
        values = verifier.pair_values(copy)
        return {"dual_certified_error": float((upper.amax(dim=1) >= 0).double().mean()),
                "mean_dual_sdp": float(values.sum() / (values.shape[0] * (values.shape[0] - 1)))}

    def finish(self, net: MLP, polish: int = 100) -> None:
        """Store the dual vectors as ``sdp_dual.I.J`` (read by the sdp-dual verifier).

        In primal mode they are the mixing duals of the factors after ``polish``
        more rounds for every pair.
        """
        if self.regulariser == "primal":
            self.track(self.all_pairs, polish)
            weight = self.net.one_hidden_layer()[0].detach()
            self.dual = mixing_dual(weight, self.pair_vectors(self.all_pairs).detach(),
                                    self.side_t, self.side_s)
        net.certificates.update({dual_key(i, j): self.dual[p].detach().double().clone()
                                 for p, (i, j) in enumerate(self.pairs)})


OBJECTIVES = {"cross-entropy": cross_entropy, "hinge+frobenius": hinge_frobenius,
              "hinge+spectral": hinge_spectral, "adversarial": adversarial,
              "lp-robust": lp_robust, "hinge+sdp": HingeSDP}
