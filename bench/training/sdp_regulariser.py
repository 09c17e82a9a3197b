"""The SDP-NN regulariser of eq. 15: trained dual certificates, warm-started eigenvectors.

For a class pair ``(i, j)`` with ``v = V_j - V_i`` (shape ``(m,)``) and dual vector
``c (D,)``, ``D = 1 + d + m`` in the order ``[1, t, s]`` of :mod:`verifiers.sdp.pair_solver`,

    R_ij(W, V, c) = D * lambda_max^+(M(W, v) - diag(c)) + 1^T max(c, 0)  >=  SDP(M(W, v)),

an upper bound for every ``c`` (eq. 14), so ``f_ij(x) + eps/4 * R_ij`` certifies.

``M`` is never formed. Its product with a block ``Y = [y1; t; s]`` costs two products by
``W (m, d)``: ``M Y = [v^T W t;  W^T (v * (y1 + s));  v * (W t)]``. The top eigenvector
is tracked across training steps by a few LOBPCG iterations per step, started from
the previous step's block (the weights move little between steps), batched over the
nine pairs of one step. Its gradient uses the envelope theorem: with the top
eigenvector ``u`` held fixed, ``lambda_max = u^T (M - diag c) u`` and
``u^T M u = 2 (W u_t) . (v * (u_1 + u_s))``, so autograd gives the exact gradient of a
simple top eigenvalue in ``W``, ``V`` and ``c`` at the cost of one forward product.

The primal regulariser's mixing rounds, dual vector and ``<M, P>`` are not here: they
are :mod:`verifiers.sdp.pair_solver`'s (one implementation of the SDP maths for training and
verification).
"""

from __future__ import annotations

from typing import Callable

import torch

Operator = Callable[[torch.Tensor], torch.Tensor]


def structured_operator(weight: torch.Tensor, v: torch.Tensor, c: torch.Tensor) -> Operator:
    """``Y (P, D, k) -> (M(W, v_p) - diag(c_p)) Y_p`` for ``v (P, m)``, ``c (P, D)``."""
    m, d = weight.shape

    def apply(block: torch.Tensor) -> torch.Tensor:
        y1, t, s = block[:, :1], block[:, 1:1 + d], block[:, 1 + d:]
        wt = torch.matmul(weight, t)                                   # (P, m, k)
        vwt = v[:, :, None] * wt
        out_t = torch.matmul(weight.T, v[:, :, None] * (y1 + s))       # (P, d, k)
        out = torch.cat([vwt.sum(dim=1, keepdim=True), out_t, vwt], dim=1)
        return out - c[:, :, None] * block
    return apply


def rayleigh_ritz(apply: Operator, basis: torch.Tensor, k: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top ``k`` Ritz pairs of the operator on span(basis ``(P, D, n)``), largest first.

    Returns ``(theta (P, k), X (P, D, k), AX (P, D, k))`` with orthonormal ``X``.
    """
    q, _ = torch.linalg.qr(basis)
    aq = apply(q)
    h = q.transpose(1, 2) @ aq
    theta, z = torch.linalg.eigh((h + h.transpose(1, 2)) / 2)
    z = z.flip(-1)[..., :k]
    return theta.flip(-1)[..., :k], q @ z, aq @ z


def top_eigenpairs(apply: Operator, start: torch.Tensor, iterations: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """LOBPCG for the largest eigenpairs of a symmetric operator, batched over pairs.

    ``start (P, D, k)`` is the warm start (any full-rank block). Returns
    ``(theta (P, k), X (P, D, k))``, Ritz values largest first; ``theta[:, 0]`` is a
    lower estimate of ``lambda_max`` (Rayleigh quotients never exceed it).
    """
    k = start.shape[-1]
    theta, x, ax = rayleigh_ritz(apply, start, k)
    direction = None
    for _ in range(iterations):
        residual = ax - x * theta[:, None, :]
        parts = [x, residual] + ([direction] if direction is not None else [])
        theta, new_x, ax = rayleigh_ritz(apply, torch.cat(parts, dim=2), k)
        direction = new_x - x @ (x.transpose(1, 2) @ new_x)
        x = new_x
    return theta, x


def top_eigenvalue_of_fixed_vector(weight: torch.Tensor, v: torch.Tensor, c: torch.Tensor,
                                   u: torch.Tensor) -> torch.Tensor:
    """``u_p^T (M(W, v_p) - diag(c_p)) u_p`` for unit ``u (P, D)``: differentiable in W, v, c.

    With ``u`` the top eigenvector (detached) this is ``lambda_max`` and its gradient
    is the eigenvalue's gradient (envelope theorem).
    """
    d = weight.shape[1]
    u1, ut, us = u[:, :1], u[:, 1:1 + d], u[:, 1 + d:]
    quadratic = 2 * ((ut @ weight.T) * v * (u1 + us)).sum(dim=1)
    return quadratic - (c * u * u).sum(dim=1)


def dual_objective(weight: torch.Tensor, v: torch.Tensor, c: torch.Tensor,
                   u: torch.Tensor) -> torch.Tensor:
    """``R_p = D * max(lambda_p, 0) + sum(max(c_p, 0))``, ``lambda_p`` from unit ``u (P, D)``."""
    size = c.shape[1]
    lam = top_eigenvalue_of_fixed_vector(weight, v, c, u)
    return size * torch.relu(lam) + torch.relu(c).sum(dim=1)
