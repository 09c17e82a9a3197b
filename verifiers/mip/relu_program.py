"""ReLU networks as linear and mixed-integer programs for HiGHS, one sample at a time.

Variables ``v = [x, zhat_0, z_0, ..., zhat_{L-1}, z_{L-1}, a]``: the input in the box
``[lo, hi]``, each hidden layer's pre-activations ``zhat`` in ``[l, u]`` and
post-activations ``z`` in ``[relu(l), relu(u)]``, and (MILP only) one binary ``a``
per crossing unit (``l < 0 < u``). Rows: ``zhat_k = W_k v_prev + b_k``; ``z = zhat``
for active units; for crossing units the triangle ``z >= zhat`` and
``z <= u (zhat - l) / (u - l)`` (``z >= 0`` is a column bound), and with binaries the
exact big-M encoding of Tjeng et al. 2019: ``z <= zhat - l (1 - a)``, ``z <= u a``.
A last-layer unit whose ``z`` has a cost ``<= 0`` needs no binary: ``z`` feeds only the
objective, which pushes it down onto ``max(zhat, 0)`` (the rows ``z >= zhat``, ``z >= 0``),
so :func:`solve_mip` relaxes those binaries per objective (half of them on a margin).

Any row multipliers give a weak-duality upper bound on the LP (or on the MILP's LP
relaxation, hence on the MILP): :meth:`ReluProgram.certified_max`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from verifiers.linear.propagation import (
    crown_slope,
    input_box,
    interval_bounds,
    layer_params,
    linear_layer_bounds,
    wong_kolter_slope,
)
from verifiers.linear.slope_optimisation import optimised_layer_bounds

ALPHA_ITERATIONS = 20      # slope steps per layer for the big-M bounds of deep networks
ALPHA_CHUNK = 16           # samples at a time (the slopes take O(N m^2) memory)


def tightest_bounds(params, lo: torch.Tensor, hi: torch.Tensor,
                    alpha_iterations: int = ALPHA_ITERATIONS):
    """Per hidden layer, the intersection of interval, Wong-Kolter and CROWN bounds, and
    with two or more hidden layers also alpha-CROWN's (slopes optimised per layer): the
    big-M constants of the MILP are these bounds, and on deep networks CROWN's alone
    are loose enough to stall HiGHS at the root."""
    intervals = interval_bounds(params, lo, hi)[:-1]
    wong_kolter = linear_layer_bounds(params, lo, hi, wong_kolter_slope, tighten_with=intervals)
    bounds = linear_layer_bounds(params, lo, hi, crown_slope, tighten_with=wong_kolter)
    if len(params) <= 2 or alpha_iterations <= 0:   # one hidden layer: intervals are exact
        return bounds
    chunks = [slice(s, s + ALPHA_CHUNK) for s in range(0, len(lo), ALPHA_CHUNK)]
    parts = [optimised_layer_bounds(params, lo[c], hi[c], iterations=alpha_iterations,
                                    tighten_with=[(l[c], u[c]) for l, u in bounds])
             for c in chunks]
    return [(torch.cat([p[k][0] for p in parts]), torch.cat([p[k][1] for p in parts]))
            for k in range(len(bounds))]


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


def _rows(count: int, columns: int, entries: list[tuple[np.ndarray, np.ndarray]]) -> sp.csr_matrix:
    """``count`` sparse rows; ``entries`` are ``(column indices, values)`` per row position."""
    rows = np.arange(count)
    return sp.csr_matrix((np.concatenate([v for _, v in entries]),
                          (np.concatenate([rows] * len(entries)),
                           np.concatenate([c for c, _ in entries]))), shape=(count, columns))


class ReluProgram:
    """The LP (or, with ``binaries``, the exact MILP) of one sample.

    ``params``: ``[(W_k, b_k)]`` as float64 arrays; ``bounds``: per hidden layer
    ``(l, u)`` arrays of that sample; ``lo, hi``: its input box.
    """

    def __init__(self, params: list[tuple[np.ndarray, np.ndarray]], bounds, lo: np.ndarray,
                 hi: np.ndarray, binaries: bool = False) -> None:
        widths = [w.shape[0] for w, _ in params[:-1]]
        starts = np.cumsum([lo.shape[0]] + [2 * m for m in widths])   # zhat_k at starts[k]
        self.size = int(starts[-1])
        self.input_dim = lo.shape[0]
        crossing = [np.flatnonzero((l < 0) & (u > 0)) for l, u in bounds]
        self._crossing = crossing
        self.num_binaries = sum(len(c) for c in crossing) if binaries else 0
        columns = self.size + self.num_binaries
        col_lo, col_hi, blocks, row_lo, row_hi = [lo], [hi], [], [], []
        binary = self.size
        self._last_binaries = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
                               np.zeros(0, dtype=np.int64))   # (binary, zhat, z) columns
        for k, (w, b) in enumerate(params[:-1]):
            lower, upper = bounds[k]
            width, pre = w.shape[0], int(starts[k])
            post = pre + width
            source = 0 if k == 0 else int(starts[k - 1]) + widths[k - 1]
            col_lo += [lower, np.maximum(lower, 0.0)]
            col_hi += [upper, np.maximum(upper, 0.0)]
            unit = np.arange(width)
            # zhat - W v_prev = b  (dense)
            dense = sp.csr_matrix(-w)
            dense = sp.hstack([sp.csr_matrix((width, source)), dense,
                               sp.csr_matrix((width, columns - source - w.shape[1]))])
            blocks.append(dense.tocsr() + _rows(width, columns, [(pre + unit, np.ones(width))]))
            row_lo.append(b)
            row_hi.append(b)
            active, cross = np.flatnonzero(lower >= 0), crossing[k]
            n, lc, uc = len(cross), lower[cross], upper[cross]
            slope = uc / (uc - lc)
            ones = np.ones(n)
            specs = [  # (rows, entries, row_lo, row_hi)
                (len(active), [(pre + active, -np.ones(len(active))),
                               (post + active, np.ones(len(active)))],
                 np.zeros(len(active)), np.zeros(len(active))),                 # z = zhat
                (n, [(pre + cross, ones), (post + cross, -ones)],
                 np.full(n, -np.inf), np.zeros(n)),                             # zhat <= z
                (n, [(pre + cross, -slope), (post + cross, ones)],
                 np.full(n, -np.inf), -slope * lc)]                             # triangle top
            if binaries:
                a = binary + np.arange(n)
                binary += n
                if k == len(params) - 2:
                    self._last_binaries = (a, pre + cross, post + cross)
                specs += [(n, [(post + cross, ones), (pre + cross, -ones), (a, -lc)],
                           np.full(n, -np.inf), -lc),                           # z <= zhat - l(1-a)
                          (n, [(post + cross, ones), (a, -uc)],
                           np.full(n, -np.inf), np.zeros(n))]                   # z <= u a
            for count, entries, low, high in specs:
                blocks.append(_rows(count, columns, entries))
                row_lo.append(low)
                row_hi.append(high)
        if binaries:
            col_lo.append(np.zeros(self.num_binaries))
            col_hi.append(np.ones(self.num_binaries))
        self.last = slice(self.size - widths[-1], self.size) if widths else slice(0, self.size)
        self.columns = columns
        self.matrix = sp.vstack(blocks).tocsr() if blocks else sp.csr_matrix((0, columns))
        self.row_lo = np.concatenate(row_lo) if row_lo else np.zeros(0)
        self.row_hi = np.concatenate(row_hi) if row_hi else np.zeros(0)
        self.col_lo, self.col_hi = np.concatenate(col_lo), np.concatenate(col_hi)
        self._output = params[-1]
        self._highs = None

    def point(self, params: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
        """The full variable vector of input ``x`` by a forward pass (a MIP start)."""
        parts, z = [x], x
        actives = []
        for k, (w, b) in enumerate(params[:-1]):
            pre = w @ z + b
            z = np.maximum(pre, 0.0)
            parts += [pre, z]
            actives.append((pre > 0).astype(np.float64)[self._crossing[k]])
        if self.num_binaries:
            parts += actives
        return np.concatenate(parts)

    def output_objective(self, row: np.ndarray) -> tuple[np.ndarray, float]:
        """Cost vector and constant of ``row (K,) . f`` (``f = W_L z_{L-1} + b_L``)."""
        w_last, b_last = self._output
        obj = np.zeros(self.columns)
        obj[self.last] = row @ w_last
        return obj, float(row @ b_last)

    def margin_objective(self, j: int, label: int) -> tuple[np.ndarray, float]:
        """Cost vector and constant of the margin ``f_j - f_label``."""
        row = np.zeros(self._output[1].shape[0])
        row[j], row[label] = 1.0, -1.0
        return self.output_objective(row)

    def needed_binaries(self, obj: np.ndarray) -> np.ndarray:
        """Which binaries ``max obj^T v`` needs (bool, one per binary): all but those of
        last-layer units whose ``z`` costs ``<= 0`` and whose ``zhat`` costs nothing."""
        needed = np.ones(self.num_binaries, dtype=bool)
        binary, pre, post = self._last_binaries
        free = (obj[post] <= 0) & (obj[pre] == 0)
        needed[binary[free] - self.size] = False
        return needed

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
            lp.num_col_, lp.num_row_ = self.columns, self.matrix.shape[0]
            lp.col_cost_ = np.zeros(self.columns)
            lp.col_lower_, lp.col_upper_ = self.col_lo, self.col_hi
            lp.row_lower_, lp.row_upper_ = self.row_lo, self.row_hi
            lp.sense_ = highspy.ObjSense.kMaximize
            lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
            lp.a_matrix_.start_ = self.matrix.indptr
            lp.a_matrix_.index_ = self.matrix.indices
            lp.a_matrix_.value_ = self.matrix.data
            if self.num_binaries:
                kinds = [highspy.HighsVarType.kContinuous] * self.size + \
                    [highspy.HighsVarType.kInteger] * self.num_binaries
                lp.integrality_ = kinds
            self._highs = _new_highs()
            self._highs.passModel(lp)
        return self._highs

    def solve_max(self, obj: np.ndarray) -> tuple[float, float, str]:
        """``(certified upper bound, HiGHS objective, status)`` of ``max obj^T v``.

        Successive calls warm-start from the previous basis (only the costs change).
        """
        highs = self._solver()
        highs.changeColsCost(self.columns, np.arange(self.columns, dtype=np.int32), obj)
        highs.run()
        status = highs.modelStatusToString(highs.getModelStatus())
        duals = np.asarray(highs.getSolution().row_dual, dtype=np.float64)
        if status != "Optimal" or len(duals) != self.matrix.shape[0]:
            duals = np.zeros(self.matrix.shape[0])      # the box alone still bounds it
        primal = float(highs.getInfo().objective_function_value)
        # HiGHS's sign convention for multipliers differs by objective sense; both signs
        # give valid bounds, so the smaller is kept
        return min(self.certified_max(obj, duals), self.certified_max(obj, -duals)), primal, status


@dataclass
class SampleBatch:
    """What every per-sample program of a batch shares: float64 weights, input boxes
    ``lo, hi (N, d)`` and the tightest pre-activation bounds of each hidden layer."""

    params: list[tuple[torch.Tensor, torch.Tensor]]
    lo: torch.Tensor
    hi: torch.Tensor
    bounds: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def np_params(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(w.detach().numpy(), b.detach().numpy()) for w, b in self.params]

    def program(self, n: int, binaries: bool = False) -> ReluProgram:
        """The LP (or MILP) of sample ``n``."""
        return ReluProgram(self.np_params, [(l[n].numpy(), u[n].numpy()) for l, u in self.bounds],
                           self.lo[n].numpy(), self.hi[n].numpy(), binaries=binaries)


def box_batch(net, lo: torch.Tensor, hi: torch.Tensor) -> SampleBatch:
    """Set up the programs of the input boxes ``[lo, hi] (N, d)``."""
    with torch.no_grad():
        params = layer_params(net, torch.float64)
        lo, hi = lo.to(torch.float64), hi.to(torch.float64)
        return SampleBatch(params, lo, hi, tightest_bounds(params, lo, hi))


def sample_batch(net, x: torch.Tensor, eps: float, clip: bool) -> SampleBatch:
    """Set up the programs of ``x (N, d)``: box ``B_eps(x)`` (``∩ [0,1]^d`` if ``clip``)."""
    return box_batch(net, *input_box(x.to(torch.float64), eps, clip))


@dataclass
class MipOutcome:
    """One MILP solve of ``max obj^T v``: ``lower <= optimum <= upper`` (raw objective)."""

    upper: float
    lower: float               # -inf when no feasible point was found
    witness: np.ndarray | None  # the input part ``x`` of the best point found
    nodes: int
    status: str


def solve_mip(program: ReluProgram, obj: np.ndarray, *, time_limit: float,
              stop_above: float = np.inf, stop_below: float = -np.inf,
              start: np.ndarray | None = None) -> MipOutcome:
    """Branch and bound with HiGHS, stopping once the sign relative to the thresholds is
    decided: a point above ``stop_above`` or a dual bound below ``stop_below``.
    ``start`` (all columns) seeds the incumbent.

    The upper bound is HiGHS's dual bound plus ``1e-6 (1 + |bound|)`` for its
    tolerances (callers also take the minimum with a certified LP-family bound).
    """
    import highspy

    highs = program._solver()
    highs.changeColsCost(program.columns, np.arange(program.columns, dtype=np.int32), obj)
    if program.num_binaries:
        kinds = np.where(program.needed_binaries(obj), int(highspy.HighsVarType.kInteger),
                         int(highspy.HighsVarType.kContinuous)).astype(np.uint8)
        highs.changeColsIntegrality(program.num_binaries,
                                    np.arange(program.size, program.columns, dtype=np.int32),
                                    kinds)
    highs.setOptionValue("time_limit", float(max(time_limit, 1e-3)))
    highs.setOptionValue("mip_rel_gap", 0.0)
    highs.setOptionValue("presolve", "off")  # its MIP presolve of dense W rows takes minutes

    if start is not None:   # a feasible point (e.g. from an attack) as the first incumbent
        highs.setSolution(program.columns, np.arange(program.columns, dtype=np.int32), start)

    def interrupt(event) -> None:
        # set the flag both ways: HiGHS keeps it across runs of one instance, so a flag
        # left raised by the previous solve would stop this one at its first callback
        out = event.data_out
        event.interrupt(bool(out.mip_primal_bound > stop_above
                             or out.mip_dual_bound < stop_below))

    highs.cbMipInterrupt.subscribe(interrupt)
    try:
        highs.run()
    finally:
        highs.cbMipInterrupt.unsubscribe(interrupt)
    info = highs.getInfo()
    status = highs.modelStatusToString(highs.getModelStatus())
    dual = float(info.mip_dual_bound)
    upper = dual + 1e-6 * (1 + abs(dual)) if np.isfinite(dual) else np.inf
    values = np.asarray(highs.getSolution().col_value, dtype=np.float64)
    found = int(info.primal_solution_status) == 2 and len(values) == program.columns
    lower = float(obj @ values) if found else -np.inf
    witness = values[:program.input_dim].copy() if found else None
    return MipOutcome(upper, lower, witness, int(info.mip_node_count), status)
