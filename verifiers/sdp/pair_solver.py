"""The SDP relaxation of the paper (sec. 3.3, 4, appendix A): matrices, solver, certificate.

The one implementation of the SDP maths, shared by the ``sdp`` and ``sdp-dual``
verifiers and by SDP-NN's training regulariser (:mod:`bench.training.sdp_regulariser`).

For ``f = V relu(W x + b) + c0`` (``W (m, d)``) and a pair margin ``v = V_j - V_i``,
``f_ij(x') - f_ij(x) <= eps * max_{s in [0,1]^m, t in [-1,1]^d} t^T A s`` with
``A = W^T diag(v)`` of shape ``(d, m)``. With ``s = (1 + s~)/2`` and ``y = [1; t; s~]``
(``D = 1 + d + m``) that maximum is ``max_{y in [-1,1]^D} y^T M y / 4`` where

    M = [[0,      (A 1)^T, 0  ],
         [A 1,    0,       A  ],
         [0,      A^T,     0  ]].

Note: the paper's eq. (8) prints the ``1^T A`` coupling in the 1-s block; expanding
eq. (7) puts ``A 1 = W^T v`` in the 1-t block, as above. The printed form bounds
``max_u ||A^T u||_1`` instead of the gradient's l1 norm and can be unsound
(:func:`printed_eq8_block` builds it, and the test suite finds random instances where
its QP is below the true one).

``SDP(M) = max <M, P> s.t. P psd, diag(P) <= 1``; for every vector ``c``,
``SDP(M) <= D * lambda_max^+(M - diag(c)) + sum(max(c, 0))`` (eq. 14). Every value
reported is obtained this way, in float64 with a rounding allowance, so it is an
upper bound on ``SDP(M)``.

The graph of ``M`` is bipartite between ``T = {t}`` and ``S = {1} ∪ {s}``; ``M``'s
only non-zero block is ``B = [A 1 | A]`` of shape ``(d, m + 1)`` (rows ``t``,
columns ``[1, s]``). The mixing method (Wang, Chang & Kolter 2017) updates each
unit vector ``v_i <- normalize(sum_j M_ij v_j)``; with no edges inside ``T`` or
``S`` a whole side updates at once, exactly, with one product by ``B``, which costs
two products by ``W`` (``B`` is never formed while iterating). All pairs of a
network iterate together, batched, in torch.

The certificate of a solve (:func:`scaled_certificate`): for the mixing dual ``c > 0``
(``c_i = ||sum_j M_ij v_j||``), ``sigma = lambda_max(C^-1/2 M C^-1/2)`` is the largest
singular value of ``C_T^-1/2 B C_S^-1/2`` (bipartite), so ``M - diag(sigma c)`` is
negative semidefinite and eq. 14 at ``c' = sigma c`` gives ``SDP(M) <= sum(c')``.
One eigenvalue of a ``min(d, m+1)`` square Gram matrix certifies a pair, and
``sigma -> 1`` as the factors converge.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.linalg
import torch
from threadpoolctl import threadpool_limits

EPS64 = np.finfo(np.float64).eps


def class_pairs(num_classes: int) -> list[tuple[int, int]]:
    """Unordered class pairs ``(i, j)``, ``i < j``: the order of every pair table."""
    return [(i, j) for i in range(num_classes) for j in range(i + 1, num_classes)]


def dual_key(i: int, j: int) -> str:
    """Name of pair ``(i, j)``'s trained dual vector in a network's ``certificates``."""
    return f"sdp_dual.{i}.{j}"


def pair_block(weight: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``B = [A 1 | A]`` with ``A = W^T diag(v)``: ``W (m, d)``, ``v (m,)`` -> ``(d, m + 1)``."""
    a = weight.T * v[None, :]
    return np.concatenate([a.sum(axis=1, keepdims=True), a], axis=1)


def printed_eq8_block(weight: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The coupling of eq. 8 *as printed*: ``1^T W^T diag(v)`` in the 1-s block.

    Returns the full ``M (D, D)`` in the order ``[1, t, s]``. Kept only to show, in the
    tests, that its QP is not an upper bound on the true one (the erratum above).
    """
    a = weight.T * v[None, :]
    d, m = a.shape
    full = np.zeros((1 + d + m, 1 + d + m))
    full[0, 1 + d:] = a.sum(axis=0)
    full[1:1 + d, 1 + d:] = a
    return full + full.T


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


def scaled_certificate(block: np.ndarray, c_t: np.ndarray, c_s: np.ndarray,
                       hint: tuple[np.ndarray, np.ndarray] | None = None
                       ) -> tuple[float, np.ndarray]:
    """``(sum(c'), c' (D,))`` with ``c' = sigma c`` and ``M - diag(c')`` negative semidefinite.

    ``block (d, m+1)``, ``c_t (d,)``, ``c_s (m+1,)`` (any non-negative vectors; the
    mixing dual is the natural one). Rows or columns of ``B`` that are zero are
    decoupled coordinates and get ``c' = 0``; elsewhere ``c`` is floored at ``1e-9``
    of its largest entry (raising ``c`` keeps the certificate valid). ``sigma^2`` bounds
    the top eigenvalue of the Gram matrix of ``C_T^-1/2 B C_S^-1/2`` on its smaller
    side (:func:`top_eigenvalue_bound`), so ``sum(c')`` is an upper bound on ``SDP(M)``
    (eq. 14 with a zero eigenvalue term). ``hint = (T (k, d), S (k, m+1))``, the
    mixing factors, makes the bound cheap; it never affects validity.
    """
    rows = np.abs(block).sum(axis=1) > 0
    cols = np.abs(block).sum(axis=0) > 0
    c_t = np.where(rows, np.maximum(c_t, 1e-9 * max(float(c_t.max(initial=0.0)), 1e-300)), 0.0)
    c_s = np.where(cols, np.maximum(c_s, 1e-9 * max(float(c_s.max(initial=0.0)), 1e-300)), 0.0)
    if not rows.any():
        return 0.0, dual_vector(c_t, c_s)
    root_t, root_s = np.sqrt(c_t[rows]), np.sqrt(c_s[cols])
    scaled = block[rows][:, cols] / root_t[:, None] / root_s[None, :]
    on_s = scaled.shape[1] <= scaled.shape[0]
    gram = scaled.T @ scaled if on_s else scaled @ scaled.T
    guess = None
    if hint is not None:   # the factors scaled by C^1/2 span the top eigenvectors
        guess = (hint[1][:, cols] * root_s).T if on_s else (hint[0][:, rows] * root_t).T
    sigma = math.sqrt(max(top_eigenvalue_bound(gram, max(scaled.shape), guess), 0.0))
    c = sigma * dual_vector(c_t, c_s)
    return float(c.sum()), c


def top_eigenvalue_bound(gram: np.ndarray, inner: int, guess: np.ndarray | None = None
                         ) -> float:
    """A rigorous upper bound on ``lambda_max`` of the exact Gram matrix ``G = S^T S``.

    ``gram (n, n)`` is its float64 product, ``inner`` the length of the products,
    ``guess (n, k)`` an optional basis near the top eigenvectors. The largest Ritz value
    ``theta`` on ``guess`` proposes ``tau`` slightly above it; a Cholesky factorisation
    of ``(tau - rho) I - G`` that succeeds proves ``lambda_max <= tau``, where ``rho``
    covers the rounding of the product (``(inner + 6) eps trace(G)``), of the diagonal
    shift and of the factorisation (``(n + 2) eps`` times the trace of the factored
    matrix), doubled. Otherwise the dense ``eigvalsh`` plus the same allowance is used.
    """
    size = gram.shape[0]
    trace = float(np.trace(gram))
    top_diag = float(np.max(np.diag(gram)))

    def rho(level: float) -> float:
        return 2 * EPS64 * ((inner + 6) * trace + (size + 3) * size * abs(level) + top_diag)

    if guess is not None and guess.shape[1] < size:
        basis, _ = np.linalg.qr(guess)
        theta = float(np.linalg.eigvalsh(basis.T @ gram @ basis)[-1])
        for relative in (1e-9, 1e-7, 1e-5):
            tau = theta * (1 + relative)
            tau += rho(tau)
            shifted = (tau - rho(tau)) * np.eye(size) - gram
            if scipy.linalg.lapack.dpotrf(shifted, lower=1, clean=0, overwrite_a=1)[1] == 0:
                return tau
    exact = float(scipy.linalg.eigvalsh(gram, subset_by_index=[size - 1, size - 1])[0])
    return exact + rho(exact) + 2 * size * EPS64 * float(np.linalg.norm(gram))


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


# --- the mixing method on the structured M, batched over pairs (torch) -----------------

def unit_columns(count: int, rank: int, width: int, generator: torch.Generator,
                 dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Random factors ``(count, rank, width)`` whose columns are unit vectors."""
    side = torch.randn(count, rank, width, generator=generator, dtype=torch.float64)
    return (side / _column_norms(side)[:, None, :]).to(dtype)


def initial_factors(count: int, rank: int, width: int, seed: int,
                    seeds: list[int] | None = None,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Starting factors ``(count, rank, width)``: from one generator seeded ``seed``, or
    with ``seeds`` (one per row) each row from its own, so a row's start, and with it its
    whole solve, does not depend on which other rows share the batch."""
    if seeds is None:
        return unit_columns(count, rank, width, torch.Generator().manual_seed(seed), dtype)
    if len(seeds) != count:
        raise ValueError(f"{len(seeds)} seeds for {count} rows")
    return torch.cat([unit_columns(1, rank, width, torch.Generator().manual_seed(s), dtype)
                      for s in seeds])


def pair_seed(seed: int, i: int, j: int) -> int:
    """The seed of class pair ``(i, j)``'s solve, from the verifier's ``seed``."""
    return zlib.crc32(f"{seed}/{i}-{j}".encode())


def _column_norms(side: torch.Tensor) -> torch.Tensor:
    """Norms of the unit-vector columns of ``side (P, k, n)``: ``(P, n)``.

    (A sum of squares: ``Tensor.norm`` over the strided middle dimension is ~30x slower.)
    """
    return side.square().sum(dim=1).sqrt()


def _t_side(weight: torch.Tensor, v: torch.Tensor, side_s: torch.Tensor) -> torch.Tensor:
    """``S B^T`` for ``side_s (P, k, m+1)``: ``(P, k, d)``."""
    return ((side_s[:, :, :1] + side_s[:, :, 1:]) * v[:, None, :]) @ weight


def _s_side(weight: torch.Tensor, v: torch.Tensor, side_t: torch.Tensor) -> torch.Tensor:
    """``T B`` for ``side_t (P, k, d)``: ``(P, k, m+1)``."""
    ta = (side_t @ weight.T) * v[:, None, :]
    return torch.cat([ta.sum(dim=2, keepdim=True), ta], dim=2)


def mixing_rounds(weight: torch.Tensor, v: torch.Tensor, side_s: torch.Tensor, rounds: int,
                  *, relax: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rounds`` mixing rounds from ``side_s (P, k, m+1)`` unit columns; no gradient.

    ``weight (m, d)``, ``v (P, m)``. Each round sets ``T = normalize(S B^T)`` and
    ``S = normalize(T B)`` column-wise, exactly (the graph of ``M`` is bipartite), so
    with ``relax = 0`` ``<M, P>`` never decreases. ``relax > 0`` over-relaxes the S
    update (``S <- normalize(S' + relax (S' - S))``), which converges faster on the
    shipped networks but is not monotone. Returns ``(T (P, k, d), S (P, k, m+1),
    c_s (P, m+1))`` with ``c_s`` the column norms of the last ``T B``; without
    relaxation ``<M, P> = 2 sum(c_s)`` for the returned factors.
    """
    side_t = c_s = None
    with torch.no_grad():
        for _ in range(rounds):
            grad_t = _t_side(weight, v, side_s)
            side_t = grad_t / _column_norms(grad_t)[:, None, :].clamp(min=1e-30)
            grad_s = _s_side(weight, v, side_t)
            c_s = _column_norms(grad_s)
            new = grad_s / c_s[:, None, :].clamp(min=1e-30)
            if relax:
                new = new + relax * (new - side_s)
                new = new / _column_norms(new)[:, None, :].clamp(min=1e-30)
            side_s = new
    assert side_t is not None and c_s is not None, "mixing_rounds needs rounds >= 1"
    return side_t, side_s, c_s


def mixing_dual(weight: torch.Tensor, v: torch.Tensor, side_t: torch.Tensor,
                side_s: torch.Tensor) -> torch.Tensor:
    """The mixing method's dual vector ``c (P, D)``, order ``[1, t, s]``: column norms of
    ``M [S|T]`` (``c_t = ||S B^T||``, ``c_s = ||T B||``)."""
    with torch.no_grad():
        c_t = _column_norms(_t_side(weight, v, side_s))
        c_s = _column_norms(_s_side(weight, v, side_t))
    return torch.cat([c_s[:, :1], c_t, c_s[:, 1:]], dim=1)


def primal_objective(weight: torch.Tensor, v: torch.Tensor, side_t: torch.Tensor,
                     side_s: torch.Tensor) -> torch.Tensor:
    """``<M(W, v_p), P_p>`` for fixed unit factors: ``(P,)``, differentiable in ``W`` and ``v``.

    ``P = [S|T]^T [S|T]`` is feasible for ``SDP(M)`` (unit columns), so this is a lower
    bound on it; ``<M, P> = 2 sum_r (W t_r) . (v * (s_r0 + s_r))``. With factors at the
    maximiser it is ``SDP(M)`` and, by Danskin's theorem, its gradient is the gradient
    of ``SDP(M)`` (the gradient of eq. 15 at the optimal ``c``).
    """
    wt = side_t.detach() @ weight.T                                           # (P, k, m)
    s = side_s.detach()
    return 2 * (wt * v[:, None, :] * (s[:, :, :1] + s[:, :, 1:])).sum(dim=(1, 2))


def first_order_duals(weight: np.ndarray, v: np.ndarray, *, steps: int = 30, rank: int = 8,
                      seed: int = 0, seeds: list[int] | None = None) -> np.ndarray:
    """Dual vectors ``c (P, D)`` after ``steps`` mixing rounds at rank ``rank`` (cheap, loose).

    ``weight (m, d)``, ``v (P, m)``; float64. ``seeds``: see :func:`initial_factors`.
    """
    w, vv = torch.as_tensor(weight, dtype=torch.float64), torch.as_tensor(v, dtype=torch.float64)
    side_s = initial_factors(len(vv), rank, w.shape[0] + 1, seed, seeds)
    side_t, side_s, _ = mixing_rounds(w, vv, side_s, max(1, steps))
    return mixing_dual(w, vv, side_t, side_s).numpy()


def default_rank(size: int) -> int:
    """``ceil(sqrt(2 D))`` (Burer-Monteiro) capped at 16; ``D = 1 + d + m``."""
    return min(16, int(math.ceil(math.sqrt(2 * size))))


def _certify(w64: torch.Tensor, v64: torch.Tensor, side_s: torch.Tensor
             ) -> tuple[float, float, np.ndarray]:
    """One exact float64 round from ``side_s (k, m+1)``, then its certificate.

    Returns ``(primal, certified, c' (D,))`` with ``primal <= SDP(M) <= certified``.
    """
    v = v64[None]
    side_t, side_s, _ = mixing_rounds(w64, v, side_s.to(torch.float64)[None], 1)
    primal = float(primal_objective(w64, v, side_t, side_s)[0])
    c = mixing_dual(w64, v, side_t, side_s)[0].numpy()
    d = w64.shape[1]
    certified, scaled = scaled_certificate(pair_block(w64.numpy(), v64.numpy()),
                                           c[1:1 + d], np.concatenate([c[:1], c[1 + d:]]),
                                           hint=(side_t[0].numpy(), side_s[0].numpy()))
    return primal, certified, scaled


def solve_pairs(weight: np.ndarray | torch.Tensor, v: np.ndarray | torch.Tensor, *,
                rank: int | None = None, target_gap: float = 1e-5, max_iters: int = 5000,
                relax: float = 0.8, first_check: int = 250, chunk: int = 25, seed: int = 0,
                seeds: list[int] | None = None, dtype: torch.dtype | None = None,
                on_done: Callable[[int, Solution], None] | None = None) -> list[Solution]:
    """Solve ``SDP(M(W, v_p))`` for every row of ``v (P, m)`` (``W (m, d)``) and certify each.

    All pairs iterate together (over-relaxed mixing rounds in ``dtype``, by default
    float32 for ``target_gap >= 1e-6`` and float64 below); a pair is
    certified in float64 (:func:`scaled_certificate`) first after ``first_check``
    rounds, then when the geometric decay of its certified gap predicts the target,
    and leaves the batch once its certified relative gap is ``<= target_gap`` (status
    ``optimal``) or after ``max_iters`` rounds (``max_iters``, with the best
    certificate found). With ``seeds`` (one per pair, :func:`pair_seed`) each pair starts
    from its own generator, and its solution is the same whichever pairs share the batch
    and however many threads run it (checked to the bit). ``on_done(p, solution)`` is
    called as each pair finishes; its
    ``seconds`` is the time since the previous pair finished (they add up to the total).
    Every ``Solution`` satisfies ``primal <= SDP <= certified``.

    numpy's BLAS runs single-threaded here: the certificates interleave with torch's
    OpenMP pool, and two thread pools on two cores slowed a solve several-fold.
    """
    if dtype is None:
        dtype = torch.float32 if target_gap >= 1e-6 else torch.float64
    with threadpool_limits(1, user_api="blas"):
        return _solve_pairs(weight, v, rank=rank, target_gap=target_gap, max_iters=max_iters,
                            relax=relax, first_check=first_check, chunk=chunk, seed=seed,
                            seeds=seeds, dtype=dtype, on_done=on_done)


def _solve_pairs(weight, v, *, rank, target_gap, max_iters, relax, first_check, chunk, seed,
                 seeds, dtype, on_done) -> list[Solution]:
    began = time.perf_counter()
    w64 = torch.as_tensor(weight, dtype=torch.float64)
    v64 = torch.as_tensor(v, dtype=torch.float64).reshape(-1, w64.shape[0])
    count, (m, d) = len(v64), w64.shape
    k = rank or default_rank(1 + d + m)
    w, vv = w64.to(dtype), v64.to(dtype)
    side_s = initial_factors(count, k, m + 1, seed, seeds, dtype)
    done_iters = torch.zeros(count, dtype=torch.long)
    next_check = torch.full((count,), min(first_check, max_iters), dtype=torch.long)
    history: list[list[tuple[int, float]]] = [[] for _ in range(count)]
    best: list[Solution | None] = [None] * count
    out: list[Solution | None] = [None] * count
    active = list(range(count))
    last_done = began
    while active:
        index = torch.tensor(active)
        steps = int(min(chunk, int((next_check[index] - done_iters[index]).min())))
        _, fresh, _ = mixing_rounds(w, vv[index], side_s[index], max(steps, 1), relax=relax)
        side_s[index] = fresh
        done_iters[index] += max(steps, 1)
        still = []
        for p in active:
            if done_iters[p] < next_check[p]:
                still.append(p)
                continue
            primal, certified, c = _certify(w64, v64[p], side_s[p])
            gap = (certified - primal) / max(abs(certified), 1e-300)
            current = Solution(primal, certified, int(done_iters[p]), 0.0, "", c)
            previous = best[p]
            if previous is None or certified < previous.certified:
                best[p] = current
            history[p].append((int(done_iters[p]), gap))
            if gap <= target_gap or done_iters[p] >= max_iters:
                solution = best[p]
                assert solution is not None                     # set just above
                solution.primal = max(solution.primal, primal)
                solution.iterations = int(done_iters[p])
                solution.status = ("optimal" if solution.rel_gap <= target_gap
                                   else "max_iters")
                now = time.perf_counter()
                solution.seconds = now - last_done      # time since the previous pair finished
                last_done = now
                out[p] = solution
                if on_done is not None:
                    on_done(p, solution)
                continue
            next_check[p] = min(max_iters, int(done_iters[p]) + _rounds_to_target(
                history[p], target_gap, chunk))
            still.append(p)
        active = still
    return [s for s in out if s is not None]


def _rounds_to_target(history: list[tuple[int, float]], target_gap: float, chunk: int) -> int:
    """Rounds until the next certification: where the gap's geometric decay, fitted to
    the last two checks, reaches half the target (at least ``chunk``, at most double)."""
    (i1, g1), (i2, g2) = ([(0, 1.0)] + history)[-2:]
    if g2 <= 0 or g1 <= g2 or i2 <= i1:
        return max(chunk, i2 // 2)
    rate = math.log(g1 / g2) / (i2 - i1)
    wanted = math.log(g2 / (0.5 * target_gap)) / rate
    return int(min(max(chunk, math.ceil(wanted)), max(chunk, i2)))


def solve_pair(weight: np.ndarray | torch.Tensor, v: np.ndarray | torch.Tensor, **options
               ) -> Solution:
    """One pair: ``SDP(M(W, v))`` for ``W (m, d)``, ``v (m,)`` (options of :func:`solve_pairs`)."""
    return solve_pairs(weight, torch.as_tensor(v).reshape(1, -1), **options)[0]


def fallback(block: np.ndarray, reason: str, seconds: float = 0.0) -> Solution:
    """The looser Gershgorin certificate, used when a solver fails."""
    c = gershgorin_dual(block)
    certified, _ = certified_value(block, c)
    return Solution(float("nan"), certified, 0, seconds, f"fallback: {reason}", c)
