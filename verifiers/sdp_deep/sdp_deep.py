"""``sdp-deep``: the multi-layer SDP relaxation (NeurIPS 2018), certified, for any depth.

One SDP per sample and specification row, over the lifted ``(1, x, z_0, ..., z_{L-1})``
with the ReLU as ``z >= 0, z >= zhat, z * z = z * zhat``, the triangle's upper line and
the boxes ``(z - l)(u - z) >= 0`` from the intermediate bounds (see
:mod:`verifiers.sdp_deep.relaxation`). Backends:

- ``ipm`` (default): our primal-dual interior-point solver (:mod:`.sdp_deep_ipm`),
  ``iterations`` (40) Mehrotra steps from the LP family's dual point, the search in
  ``precision`` (float32). With ``decide`` (default) it solves to decide ``margin <= 0``
  per sample, not for the tightest value: rows the linear bounds already put below 0
  are left out, a sample that a cheap signed-gradient ascent breaks is left out, the
  row with the largest linear bound goes first and the others only if it is certified,
  and a row stops once certified below 0. ``decide=False`` solves every row to the
  optimum;
- ``lbfgs``: a first-order search on the Lagrangian dual (projected L-BFGS with a log-det
  barrier, ``iterations`` 200), batched over samples and rows: the inputs are
  eliminated in closed form, the hidden units by one Cholesky factor;
- ``cvxpy``: the primal SDP written out for a cvxpy solver (SCS, Clarabel, MOSEK);
  small networks only, to cross-check.

Whatever the backend, the bound is what a dual point certifies in float64 (never a solver's
objective), and it is the smallest of that certificate and the linear bounds (LP and
alpha-CROWN with the same intermediate bounds), which are certificates of the same
relaxation: so ``sdp-deep`` is never looser than ``lp`` with its bounds.

How it differs from ``sdp``: the ICLR relaxation bounds the *gradient* of a one-layer
network over the whole ball (eq. 7-8: every activation pattern, no input box, no
pre-activation bounds), a per-network quantity; this one relaxes the network *at the
input*, with the box and the bounds, per sample. Neither contains the other in general;
both are upper bounds on the true worst margin.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from attacks.seeds import seed_points
from bench.contract import (
    BOOLEAN,
    Choice,
    Integer,
    Options,
    OptionsPlugin,
    OrNone,
    Property,
    Text,
    input_box,
    margins,
    option,
    split_rows,
)
from models import MLP
from verifiers.cvxpy_solvers import SDP_SOLVERS, check_solver
from verifiers.linear.propagation import (
    Bounds,
    backward_upper,
    crown_slope,
    finish_margins,
    layer_params,
    linear_layer_bounds,
    margin_spec,
    wong_kolter_slope,
)
from verifiers.linear.slope_optimisation import optimise_upper, optimised_layer_bounds
from verifiers.sdp_deep.interior_point import optimise_ipm
from verifiers.sdp_deep.relaxation import (
    Multipliers,
    Relaxation,
    build,
    certify,
    linear_start,
    optimise,
)

BACKENDS = ("ipm", "lbfgs", "cvxpy")
ITERATIONS = {"ipm": 40, "lbfgs": 200, "cvxpy": 0}    # defaults per backend
PRECISIONS = ("float32", "float64")
MEMORY = 512 * 2 ** 20      # bytes of constraint rows per batched solve
INTERMEDIATE = ("alpha-crown", "crown")


def intermediate_bounds(params, lo: torch.Tensor, hi: torch.Tensor, kind: str,
                        iterations: int) -> Bounds:
    """The tightest pre-activation bounds of the LP family we compute: interval, ``lp``
    and ``crown`` passes intersected, plus alpha-CROWN's optimised slopes if asked."""
    crown = linear_layer_bounds(params, lo, hi, crown_slope)
    lp = linear_layer_bounds(params, lo, hi, wong_kolter_slope)
    both = [(torch.maximum(a[0], b[0]), torch.minimum(a[1], b[1])) for a, b in zip(crown, lp)]
    if kind == "crown":
        return both
    return optimised_layer_bounds(params, lo, hi, iterations=iterations, tighten_with=both)


@dataclass(frozen=True)
class SDPDeepOptions(Options):
    """The options of ``sdp-deep``."""

    backend: str = option("ipm", Choice(BACKENDS), "ipm (our interior-point solver), "
                          "lbfgs (first-order) or cvxpy (small networks)")
    iterations: int | None = option(None, OrNone(Integer(0)), "solver iterations; default "
                                    "40 for ipm, 200 for lbfgs")
    intermediate: str = option("alpha-crown", Choice(INTERMEDIATE), "intermediate bounds: "
                               "alpha-crown or crown (with lp, intersected)")
    intermediate_iterations: int = option(20, Integer(0), "alpha-CROWN steps for the "
                                          "intermediate bounds")
    decide: bool = option(True, BOOLEAN, "solve to decide margin <= 0, not to optimality")
    precision: str = option("float32", Choice(PRECISIONS), "the solver's float type (the "
                            "certificate is float64 either way)")
    chunk: int = option(16, Integer(1), "problems solved in one batch")
    solver: str = option("SCS", Text(), "cvxpy's SDP solver (backend=cvxpy): "
                         + ", ".join(SDP_SOLVERS))
    clip: bool = option(True, BOOLEAN, "intersect the ball with the box [0, 1]^d")


class SDPDeep(OptionsPlugin):
    """Certified multi-layer SDP upper bound ``U (N, K)`` for ReLU networks of any depth."""

    name = "sdp-deep"
    opt_in = True     # seconds per sample: asked for by name, not in the default grid

    OPTIONS = SDPDeepOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.iterations is None:            # the backend's default, shown in the repr
            self.iterations = ITERATIONS[self.backend]
        if self.backend == "cvxpy":
            check_solver(self.solver)
        # the relaxation's constraints, shown in the repr the records keep
        self.constraints = "relu(z>=0,z>=zhat,z*z=z*zhat),triangle,boxes(input,hidden)"
        self._stats: list[dict[str, Any]] = []

    def bound(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)``, ``y (N,)`` -> ``U (N, K)`` float64 with ``U[n, y_n] = -inf``;
        up to ``chunk`` samples (all their wrong classes) per batched solve, fewer where
        their constraint rows (``(K - 1) x units x d`` float64) would pass ``MEMORY``."""
        out = []
        units = sum(net.widths[1:-1])
        per_solve = max(1, min(self.chunk, MEMORY // max(
            8 * (net.num_classes - 1) * max(units, 1) * net.input_dim, 1)))
        for start in range(0, len(x), per_solve):
            xs = x[start:start + per_solve].to(torch.float64).reshape(
                len(x[start:start + per_solve]), -1)
            ys = y[start:start + per_solve]
            lo, hi = input_box(xs, eps, self.clip)
            spec = margin_spec(ys, net.num_classes, torch.float64)
            skip = None
            if self.decide and self.backend == "ipm":     # a counterexample: nothing to decide
                with torch.no_grad():
                    found = seed_points(net, xs, ys, eps, self.clip, apgd_seed=False)
                    skip = margins(net.float64_copy()(found), ys).amax(dim=1) >= 0
            upper = self.upper(net, lo, hi, spec, first_row=start, skip=skip)
            out.append(finish_margins(upper, ys))
        return torch.cat(out) if out else torch.empty(0, net.num_classes, dtype=torch.float64)

    def bound_property(self, net: MLP, prop: Property) -> list[torch.Tensor]:
        """Per group of ``prop``, ``(r_g,)`` upper bounds on ``c_i . f(x) - d_i`` over its box."""
        rows, offsets, sizes = split_rows(prop)
        upper = self.upper(net, prop.lo.to(torch.float64)[None], prop.hi.to(torch.float64)[None],
                           rows.to(torch.float64)[None])
        return list((upper[0] - offsets).split(sizes))

    def upper(self, net: MLP, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor,
              first_row: int = 0, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Upper bounds ``(N, S)`` on ``spec (N, S, K) . f(x)`` over the boxes ``lo, hi (N, d)``.
        Rows of ``spec`` that are zero (a sample's own class) get ``0``. Samples flagged in
        ``skip (N,)`` (known to reach ``>= 0`` on some row) keep their linear bounds when
        ``decide`` is on."""
        began = time.perf_counter()
        with torch.no_grad():
            params = [(w.detach(), b.detach()) for w, b in layer_params(net, torch.float64)]
            n, rows = spec.shape[:2]
            if len(params) == 1:          # no hidden layer: the linear bound is exact
                return backward_upper(params, [], spec, lo, hi, crown_slope)
            bounds = intermediate_bounds(params, lo, hi, self.intermediate,
                                         self.intermediate_iterations)
            lp = backward_upper(params, bounds, spec, lo, hi, wong_kolter_slope)
            alpha = optimise_upper(params, bounds, spec, lo, hi,
                                   iterations=self.intermediate_iterations)
            linear = torch.minimum(lp, alpha.upper)
        live = spec.abs().sum(-1).reshape(-1) > 0
        index = torch.arange(n * rows)[live]
        rel, crossing = build(params, bounds, lo, hi, spec)
        start = linear_start(rel, bounds, alpha, crossing)
        rel, start = rel.select(index), start.select(index)
        if self.backend == "cvxpy":
            certified = self._cvxpy(rel)
        elif self.backend == "ipm":
            certified = self._ipm(rel, start, index // rows, linear.reshape(-1)[index],
                                  skip[index // rows] if skip is not None else None)
        else:
            certified = certify(rel, optimise(rel, start, iterations=self.iterations))
        flat = linear.reshape(-1).clone()
        result = torch.minimum(flat[index], certified)
        flat[index] = result
        flat[~live] = 0.0
        seconds = (time.perf_counter() - began) / n
        sample = index // rows
        for i in range(n):
            mine = sample == i
            if bool(mine.any()):
                self._stats.append({
                    "row": first_row + i,
                    "linear": float(linear.reshape(-1)[index[mine]].max()),
                    "sdp_certified": float(certified[mine].max()),
                    "bound": float(result[mine].max()), "seconds": seconds})
        return flat.reshape(n, rows)

    def _ipm(self, rel: Relaxation, start: Multipliers, sample: torch.Tensor,
             linear: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """Certified bounds ``(B,)`` from the interior-point solver (:mod:`.sdp_deep_ipm`).

        Without ``decide``, every problem is solved to ``iterations``. With it, a sample's
        problems are solved to decide ``max <= 0``: those already below 0 by the linear
        bound, and every problem of a ``skip`` sample, are left out; the one with the
        largest linear bound goes first and alone, each problem stops once certified below
        0, and the others follow (batched) only if it was certified. The bounds are sound
        either way; with ``decide`` they are the tightest only where that was needed."""
        dtype = getattr(torch, self.precision)
        if not self.decide:
            return certify(rel, optimise_ipm(rel, start, iterations=self.iterations,
                                             dtype=dtype))
        out = torch.full((rel.size,), torch.inf, dtype=torch.float64)
        todo = linear > 0
        if skip is not None:
            todo &= ~skip
        for s in torch.unique(sample[todo]).tolist():
            mine = torch.nonzero(todo & (sample == s)).flatten()
            mine = mine[torch.argsort(linear[mine], descending=True)]
            for part in (mine[:1], mine[1:]):
                if len(part) == 0:
                    break
                found = optimise_ipm(rel.select(part), start.select(part),
                                     iterations=self.iterations, target=0.0, dtype=dtype)
                out[part] = certify(rel.select(part), found)
                if not bool((out[part] < 0).all()):
                    break
        return out

    def _cvxpy(self, rel: Relaxation) -> torch.Tensor:
        from verifiers.sdp_deep.cvxpy_primal import solve_primal

        out = torch.full((rel.size,), torch.inf, dtype=torch.float64)
        for b in range(rel.size):
            one = rel.select(torch.tensor([b]))
            _, mult, _ = solve_primal(one, solver=self.solver)
            if mult is not None:
                out[b] = certify(one, mult)[0]
        return out

    def statistics(self) -> list[dict[str, Any]]:
        """Per sample, over its specification rows: the largest linear bound, SDP
        certificate and reported bound, and the seconds spent."""
        return list(self._stats)
