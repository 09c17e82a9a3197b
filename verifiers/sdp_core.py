"""The SDP relaxation of the paper (sec. 3.3, 4, appendix A): matrices, solver, certificate.

For ``f = V relu(W x + b) + c0`` (``W (m, d)``) and a pair margin ``v = V_j - V_i``,
``f_ij(x') - f_ij(x) <= eps * max_{s in [0,1]^m, t in [-1,1]^d} t^T A s`` with
``A = W^T diag(v)`` of shape ``(d, m)``. With ``s = (1 + s~)/2`` and ``y = [1; t; s~]``
(``D = 1 + d + m``) that maximum is ``max_{y in [-1,1]^D} y^T M y / 4`` where

    M = [[0,      (A 1)^T, 0  ],
         [A 1,    0,       A  ],
         [0,      A^T,     0  ]].

Note: the paper's eq. (8) prints the ``1^T A`` coupling in the 1-s block; expanding
eq. (7) puts ``A 1 = W^T v`` in the 1-t block, as above. The printed form bounds
``max_u ||A^T u||_1`` instead of the gradient's l1 norm and can be unsound (the test
suite finds random instances where its QP is below the true one).

``SDP(M) = max <M, P> s.t. P psd, diag(P) <= 1``; for every vector ``c``,
``SDP(M) <= D * lambda_max^+(M - diag(c)) + sum(max(c, 0))`` (eq. 14). A certified
value is always obtained this way, with the eigenvalue in float64 plus a rounding
allowance, so every number reported is an upper bound on ``SDP(M)``.

The graph of ``M`` is bipartite between ``T = {t}`` and ``S = {1} ∪ {s}``; ``M``'s
only non-zero block is ``B = [A 1 | A]`` of shape ``(d, m + 1)`` (rows ``t``,
columns ``[1, s]``). The mixing method (Wang, Chang & Kolter 2017) updates each
unit vector ``v_i <- normalize(sum_j M_ij v_j)``; with no edges inside ``T`` or
``S`` a whole side updates at once, exactly, with one product by ``B``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg

EPS64 = np.finfo(np.float64).eps


def pair_block(weight: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``B = [A 1 | A]`` with ``A = W^T diag(v)``: ``W (m, d)``, ``v (m,)`` -> ``(d, m + 1)``."""
    a = weight.T * v[None, :]
    return np.concatenate([a.sum(axis=1, keepdims=True), a], axis=1)


def dense_matrix(block: np.ndarray) -> np.ndarray:
    """The full symmetric ``M (D, D)`` of a block ``B (d, m + 1)``, order ``[1, t, s]``."""
    d, m1 = block.shape
    size = 1 + d + m1 - 1
    full = np.zeros((size, size))
    full[1:1 + d, 0] = block[:, 0]
    full[1:1 + d, 1 + d:] = block[:, 1:]
    return full + full.T


def dual_vector(c_t: np.ndarray, c_s: np.ndarray) -> np.ndarray:
    """Assemble ``c (D,)`` in the order ``[1, t, s]`` from ``c_t (d,)`` and ``c_s (m+1,)``."""
    return np.concatenate([c_s[:1], c_t, c_s[1:]])


def certified_value(block: np.ndarray, c: np.ndarray) -> tuple[float, float]:
    """``(D * lambda_max^+(M - diag(c)) + sum(max(c, 0)), lambda_max)``: an upper bound on SDP(M).

    The top eigenvalue is computed densely in float64; a backward-error allowance of
    ``D * eps * ||M - diag(c)||_F`` is added to it, so rounding cannot make the
    value too small.
    """
    shifted = dense_matrix(block) - np.diag(c)
    size = shifted.shape[0]
    top = float(scipy.linalg.eigvalsh(shifted, subset_by_index=[size - 1, size - 1])[0])
    allowance = size * EPS64 * float(np.linalg.norm(shifted))
    return size * max(top + allowance, 0.0) + float(np.maximum(c, 0).sum()), top


def gershgorin_dual(block: np.ndarray) -> np.ndarray:
    """A dual vector valid without any solve: absolute row sums make ``M - diag(c)`` NSD."""
    return dual_vector(np.abs(block).sum(axis=1), np.abs(block).sum(axis=0))


@dataclass
class Solution:
    """One pair's SDP solve: ``primal <= SDP(M) <= certified``."""

    primal: float
    certified: float
    iterations: int
    seconds: float
    status: str            # "optimal", "max_iters" or "fallback: <reason>"
    dual: np.ndarray       # the certifying c, shape (D,)

    @property
    def rel_gap(self) -> float:
        return (self.certified - self.primal) / max(abs(self.certified), 1e-300)


def mixing_iterations(block: np.ndarray, side_s: np.ndarray, iterations: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run ``iterations`` rounds of exact block updates from ``side_s (k, m+1)`` unit columns.

    Returns ``(T (k, d), S (k, m+1), c_t (d,), c_s (m+1,))`` where ``c`` are the norms
    ``||sum_j M_ij v_j||`` from the last round. ``<M, P> = 2 sum(c_s)`` for ``P`` of these.
    """
    side_t = c_t = c_s = None
    for _ in range(iterations):
        grad_t = side_s @ block.T
        c_t = np.linalg.norm(grad_t, axis=0)
        side_t = grad_t / np.maximum(c_t, 1e-300)
        grad_s = side_t @ block
        c_s = np.linalg.norm(grad_s, axis=0)
        side_s = grad_s / np.maximum(c_s, 1e-300)
    return side_t, side_s, c_t, c_s


def first_order_dual(block: np.ndarray, *, steps: int = 30, rank: int = 8,
                     seed: int = 0) -> np.ndarray:
    """A dual vector ``c (D,)`` from ``steps`` mixing rounds at rank ``rank`` (cheap, loose)."""
    rng = np.random.default_rng(seed)
    side_s = rng.standard_normal((rank, block.shape[1]))
    side_s /= np.linalg.norm(side_s, axis=0)
    _, side_s, _, c_s = mixing_iterations(block, side_s, max(1, steps))
    return dual_vector(np.linalg.norm(side_s @ block.T, axis=0), c_s)


def primal_value(block: np.ndarray, side_t: np.ndarray, side_s: np.ndarray) -> float:
    """``<M, P>`` for ``P = [S|T]^T [S|T]`` of unit columns (a feasible primal point)."""
    return float(2.0 * np.sum(block * (side_t.T @ side_s)))


def solve_mixing(block: np.ndarray, *, rank: int | None = None, target_gap: float = 1e-5,
                 max_iters: int = 5000, check_every: int = 10, seed: int = 0) -> Solution:
    """Solve ``SDP(M)`` by the mixing method and certify it.

    Rank defaults to ``ceil(sqrt(2 D))`` capped at 32. The loop runs until the primal
    stalls (relative progress below ``target_gap / 100`` over ``check_every`` rounds),
    then certifies; if the certified relative gap is above ``target_gap`` it continues
    with a tenfold stricter stall test until ``max_iters``.
    """
    began = time.perf_counter()
    d, m1 = block.shape
    size = 1 + d + m1 - 1
    k = rank or min(32, int(np.ceil(np.sqrt(2 * size))))
    rng = np.random.default_rng(seed)
    side_s = rng.standard_normal((k, m1))
    side_s /= np.linalg.norm(side_s, axis=0)
    stall = target_gap / 100
    done = 0
    best: Solution | None = None
    last = -np.inf
    while done < max_iters:
        side_t, side_s, c_t, c_s = mixing_iterations(block, side_s, check_every)
        done += check_every
        value = 2.0 * float(c_s.sum())
        if value - last > stall * abs(value) and done < max_iters:
            last = value
            continue
        c = dual_vector(np.linalg.norm(side_s @ block.T, axis=0), c_s)
        certified, _ = certified_value(block, c)
        primal = primal_value(block, side_t, side_s)
        best = Solution(primal, certified, done, 0.0,
                        "optimal" if (certified - primal) <= target_gap * abs(certified)
                        else "max_iters", c)
        if best.status == "optimal":
            break
        stall /= 10
        last = value
    assert best is not None
    best.seconds = time.perf_counter() - began
    return best


def fallback(block: np.ndarray, reason: str, seconds: float = 0.0) -> Solution:
    """The looser Gershgorin certificate, used when a solver fails."""
    c = gershgorin_dual(block)
    certified, _ = certified_value(block, c)
    return Solution(float("nan"), certified, 0, seconds, f"fallback: {reason}", c)
