"""``lp-exact``: the triangle LP relaxation of a ReLU MLP solved exactly with HiGHS.

Per sample and wrong class ``j``: maximise ``f_j - f_y`` over ``x`` in the box
``B_eps(x) ∩ [0, 1]^d`` and post-activations ``z_k`` with, per hidden unit and
pre-activation ``zhat = W z_prev + b`` bounded by ``[l, u]``: ``z = zhat`` if ``l >= 0``;
``z = 0`` if ``u <= 0``; otherwise ``z >= 0``, ``z >= zhat``, ``z <= u (zhat - l) / (u - l)``.
The bounds ``[l, u]`` are the tightest of interval, Wong-Kolter and CROWN bounds,
so this LP's optimum is never above ``lp``'s dual value (issue: ``lp-exact <= lp``).

The reported value is certified: from HiGHS's row multipliers ``y`` (clipped to
the signs the row bounds allow) weak duality gives ``max c^T v <= sum over rows of
max(y_i row_hi_i, y_i row_lo_i) + sum over columns of max over [lo_i, hi_i] of
(c - A^T y)_i v_i``, evaluated in float64 and valid for any multipliers, so solver
tolerances cannot make the bound too small.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import scipy.sparse as sp
import torch

from bench.contract import Configurable
from models import MLP

from .linear_bounds import (crown_slope, input_box, interval_bounds, layer_params,
                            linear_layer_bounds, wong_kolter_slope)


def tightest_bounds(params, lo: torch.Tensor, hi: torch.Tensor):
    """Per hidden layer, the intersection of interval, Wong-Kolter and CROWN bounds."""
    intervals = interval_bounds(params, lo, hi)[:-1]
    wong_kolter = linear_layer_bounds(params, lo, hi, wong_kolter_slope, tighten_with=intervals)
    return linear_layer_bounds(params, lo, hi, crown_slope, tighten_with=wong_kolter)


def _new_highs():
    """A silent HiGHS instance (its one-time banner goes to /dev/null, not the run output)."""
    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            solver = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    solver.setOptionValue("output_flag", False)
    return solver


class TriangleLP:
    """The LP of one sample over ``v = [x, zhat_0, z_0, ..., zhat_{L-1}, z_{L-1}]``.

    Rows (``row_lo <= A v <= row_hi``): ``zhat_k - W_k v_prev = b_k``; for active units
    ``z - zhat = 0``; for crossing units ``zhat - z <= 0`` and ``z - s zhat <= -s l``.
    Column bounds: ``x`` in ``[lo, hi]``, ``zhat`` in ``[l, u]``, ``z`` in ``[relu(l), relu(u)]``.
    """

    def __init__(self, params: list[tuple[np.ndarray, np.ndarray]], bounds, lo: np.ndarray,
                 hi: np.ndarray) -> None:
        col_lo, col_hi, blocks, row_lo, row_hi = [lo], [hi], [], [], []
        prev_start, prev_width, size = 0, lo.shape[0], lo.shape[0]
        positions = []
        for k, (w, b) in enumerate(params[:-1]):
            lower, upper = bounds[k]
            width = w.shape[0]
            pre, post = size, size + width
            positions.append((pre, post, width, prev_start, prev_width, w))
            col_lo += [lower, np.maximum(lower, 0.0)]
            col_hi += [upper, np.maximum(upper, 0.0)]
            prev_start, prev_width, size = post, width, post + width
        self.size = size
        self.last = slice(size - prev_width, size)
        for k, (pre, post, width, in_start, in_width, w) in enumerate(positions):
            lower, upper = bounds[k]
            b = params[k][1]
            unit = np.arange(width)
            # zhat - W v_prev = b  (dense)
            dense = sp.hstack([sp.csr_matrix((width, in_start)), sp.csr_matrix(-w),
                               sp.csr_matrix((width, size - in_start - in_width))])
            blocks.append(dense + sp.csr_matrix((np.ones(width), (unit, pre + unit)),
                                                shape=(width, size)))
            row_lo.append(b)
            row_hi.append(b)
            active = np.flatnonzero(lower >= 0)
            crossing = np.flatnonzero((lower < 0) & (upper > 0))
            s = upper[crossing] / (upper[crossing] - lower[crossing])
            for idx, coef_pre, coef_post, lo_row, hi_row in (
                    (active, -np.ones(len(active)), np.ones(len(active)),
                     np.zeros(len(active)), np.zeros(len(active))),
                    (crossing, np.ones(len(crossing)), -np.ones(len(crossing)),
                     np.full(len(crossing), -np.inf), np.zeros(len(crossing))),
                    (crossing, -s, np.ones(len(crossing)),
                     np.full(len(crossing), -np.inf), -s * lower[crossing])):
                rows = np.arange(len(idx))
                blocks.append(sp.csr_matrix(
                    (np.concatenate([coef_pre, coef_post]),
                     (np.concatenate([rows, rows]), np.concatenate([pre + idx, post + idx]))),
                    shape=(len(idx), size)))
                row_lo.append(lo_row)
                row_hi.append(hi_row)
        self.matrix = sp.vstack(blocks).tocsr()
        self.row_lo, self.row_hi = np.concatenate(row_lo), np.concatenate(row_hi)
        self.col_lo, self.col_hi = np.concatenate(col_lo), np.concatenate(col_hi)
        self._highs = None

    def objective(self, w_last: np.ndarray, b_last: np.ndarray, c: np.ndarray
                  ) -> tuple[np.ndarray, float]:
        """Cost vector of ``c^T (W_L z_{L-1} + b_L)`` and its constant ``c^T b_L``."""
        obj = np.zeros(self.size)
        obj[self.last] = c @ w_last
        return obj, float(c @ b_last)

    def certified_max(self, obj: np.ndarray, duals: np.ndarray) -> float:
        """Weak-duality upper bound on ``max obj^T v`` from any row multipliers ``duals``.

        With ``y`` clipped to the signs that finite row bounds allow (``y_i > 0`` needs a
        finite ``row_hi_i``, ``y_i < 0`` a finite ``row_lo_i``),
        ``obj^T v = (obj - A^T y)^T v + y^T A v`` is bounded termwise over the box
        and the row ranges.
        """
        y = np.where(np.isinf(self.row_hi), np.minimum(duals, 0.0), duals)
        y = np.where(np.isinf(self.row_lo), np.maximum(y, 0.0), y)
        reduced = obj - self.matrix.T @ y
        box = np.maximum(reduced * self.col_lo, reduced * self.col_hi)
        finite_hi = np.where(np.isinf(self.row_hi), 0.0, self.row_hi)
        finite_lo = np.where(np.isinf(self.row_lo), 0.0, self.row_lo)
        rows = np.where(y > 0, y * finite_hi, y * finite_lo)
        return float(box.sum() + rows.sum())

    def _solver(self):
        if self._highs is None:
            import highspy

            lp = highspy.HighsLp()
            lp.num_col_, lp.num_row_ = self.size, self.matrix.shape[0]
            lp.col_cost_ = np.zeros(self.size)
            lp.col_lower_, lp.col_upper_ = self.col_lo, self.col_hi
            lp.row_lower_, lp.row_upper_ = self.row_lo, self.row_hi
            lp.sense_ = highspy.ObjSense.kMaximize
            lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
            lp.a_matrix_.start_ = self.matrix.indptr
            lp.a_matrix_.index_ = self.matrix.indices
            lp.a_matrix_.value_ = self.matrix.data
            self._highs = _new_highs()
            self._highs.passModel(lp)
        return self._highs

    def solve_max(self, obj: np.ndarray) -> tuple[float, float, str]:
        """``(certified upper bound, HiGHS objective, status)`` of ``max obj^T v``.

        Successive calls warm-start from the previous basis (only the costs change).
        """
        highs = self._solver()
        highs.changeColsCost(self.size, np.arange(self.size, dtype=np.int32), obj)
        highs.run()
        status = highs.modelStatusToString(highs.getModelStatus())
        duals = np.asarray(highs.getSolution().row_dual, dtype=np.float64)
        if status != "Optimal" or len(duals) != self.matrix.shape[0]:
            duals = np.zeros(self.matrix.shape[0])      # the box alone still bounds it
        primal = float(highs.getInfo().objective_function_value)
        # HiGHS's sign convention for multipliers differs by objective sense; both signs
        # give valid bounds, so the smaller is kept
        return min(self.certified_max(obj, duals), self.certified_max(obj, -duals)), primal, status


class LPExact(Configurable):
    """Exact triangle-LP upper bound ``U (N, K)`` (float64) for ReLU MLPs of any depth."""

    name = "lp-exact"
    opt_in = True   # one LP per sample and class: seconds per sample on 784-500-10

    def __init__(self, *, clip: bool = True) -> None:
        self.clip = clip

    def bound(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)``, ``y (N,)`` -> ``U (N, K)`` float64, ``U[n, y_n] = -inf``."""
        with torch.no_grad():
            params = layer_params(net, torch.float64)
            lo, hi = input_box(x.to(torch.float64), eps, self.clip)
            bounds = tightest_bounds(params, lo, hi)
        np_params = [(w.numpy(), b.numpy()) for w, b in params]
        w_last, b_last = np_params[-1]
        k = net.num_classes
        out = np.full((len(y), k), -np.inf)
        for n in range(len(y)):
            problem = TriangleLP(np_params, [(l[n].numpy(), u[n].numpy()) for l, u in bounds],
                                 lo[n].numpy(), hi[n].numpy())
            for j in range(k):
                if j == int(y[n]):
                    continue
                c = np.zeros(k)
                c[j], c[int(y[n])] = 1.0, -1.0
                obj, const = problem.objective(w_last, b_last, c)
                out[n, j] = problem.solve_max(obj)[0] + const
        return torch.from_numpy(out)
