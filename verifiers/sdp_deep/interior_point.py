"""A primal-dual interior-point method for the multi-layer SDP
(:mod:`verifiers.sdp_deep.relaxation`).

The dual of the relaxation, for one problem, is

    minimise t   over (t, v)   subject to   M(t, v) = [[t - const, -a^T / 2],
                                                       [-a / 2,     S     ]] >= 0,   D v >= 0,

with ``const, a, S`` the Lagrangian's parts (affine in the multipliers) and ``D v`` the
sign-constrained multipliers ``(pos, pre, up, box, box_in)``: ``M >= 0`` says
``t >= sup_w L``. Its primal is the lifted SDP over ``X >= 0`` (``(1 + m)^2``,
``m = d + n``). This module solves the pair by the HKM primal-dual path-following method
with Mehrotra's predictor-corrector (infeasible primal start, feasible dual iterates),
batched over problems with the same number of crossing units, without ever forming a
matrix bigger than ``(1 + m)^2`` or the ``(1 + P)^2`` Schur complement (``P = 5n + d``
multipliers):

- every ``dM/dv_k`` is a sum of at most five terms ``coef * u_a u_b^T`` with ``u`` among
  ``e_0``, the crossing-unit and input unit vectors and the pre-activation rows ``r_j =
  (0, C_j, A_j)`` (``M`` is indexed ``(0, c, x)``), so the Schur complement
  ``tr(M_k X M_l Z^-1)`` is gathered from ``B^T X B`` and ``B^T Z^-1 B`` (``B`` those
  vectors) by Hadamard products of blocks;
- ``Z``'s input block is diagonal, so ``Z^-1`` is a diagonal plus a rank ``n + 1`` term
  and ``Z``'s positivity is one ``(n + 1)^2`` factorisation: products with it cost
  ``(1 + m)^2 n``, not ``(1 + m)^3``;
- the three linear multipliers of a unit are searched as ``(p_E, p_R, up)`` with ``pos =
  p_E + p_R + (1 - s) up`` and ``pre = s up - p_R``: they enter the Lagrangian only as
  ``p_E c_j + p_R zhat_j + up t_j``, and searched as ``(pos, pre, up)`` the Schur
  complement would be singular along ``(1 - s, s, 1)``.

The dual iterate is feasible at every step, so :func:`~verifiers.sdp_deep.relaxation.certify`
of it is a sound bound whatever the method reaches; the bound never depends on the primal.
The search may run in float32 (``dtype``): 2x faster per step at MNIST size, and enough
to decide a target; a problem whose factorisations fail in that precision stops where it
is. Certificates are always float64.
"""

from __future__ import annotations

import torch

from verifiers.sdp_deep.relaxation import (
    GROUPS,
    Multipliers,
    Relaxation,
    certify,
    hidden_block,
    linear_terms,
    project,
    repair,
)

FLOOR = 0.3           # added to every signed multiplier of the start (times the typical one)
TO_BOUNDARY = 0.95    # steps go this fraction of the way to the cone's boundary
RIDGE = 1e-12         # relative diagonal added to the Schur complement
HOPELESS = 1e-2       # primal value this far (relative) above the target, at this
                      # relative primal infeasibility: the target is out of reach


def optimise_ipm(rel: Relaxation, start: Multipliers, *, iterations: int = 40,
                 tolerance: float = 1e-5, target: float | None = None,
                 groups: torch.Tensor | None = None, dtype: torch.dtype = torch.float64
                 ) -> Multipliers:
    """Solve the SDP of every problem of ``rel`` from the dual point ``start`` (at most
    ``iterations`` steps; a problem stops when its relative duality gap and primal
    infeasibility are below ``tolerance``) and return the dual multipliers reached.
    Problems without crossing units keep ``start`` (their linear bound is exact).

    With a ``target``, a problem stops as soon as its certified bound is below
    ``target``, and the problems sharing its ``groups (B,)`` entry (default: each its own)
    stop as soon as its primal value (an estimate of the SDP's optimum from below) is
    clearly above ``target``: for deciding ``max <= target`` per group, not for the
    tightest bounds."""
    out = [t.clone() for t in start.tensors()]
    counts = rel.alive.sum(-1).long()
    labels = torch.arange(rel.size) if groups is None else groups
    for n in torch.unique(counts).tolist():
        if n == 0:
            continue
        rows = torch.nonzero(counts == n).flatten()
        sub, begin = _trim(rel.select(rows), start.select(rows), n)
        reached = _solve(sub, begin, iterations, tolerance, target, labels[rows], dtype)
        finite = torch.stack([torch.isfinite(t).all(-1) for t in reached.tensors()]).all(0)
        reached = Multipliers(*[torch.where(finite[:, None], r, b)
                                for r, b in zip(reached.tensors(), begin.tensors())])
        for index, (t, r) in enumerate(zip(out, reached.tensors())):
            if index == len(out) - 1:              # box_in: no padding
                t[rows] = r
            else:
                t[rows] = torch.zeros_like(t[rows])
                t[rows, :n] = r
    return Multipliers(*out)


def _trim(rel: Relaxation, mult: Multipliers, n: int) -> tuple[Relaxation, Multipliers]:
    """The problems without their padding units (alive units come first, see ``build``)."""
    trimmed = Relaxation(rel.inputs[:, :n], rel.hidden[:, :n, :n], rel.offset[:, :n],
                         rel.lower[:, :n], rel.upper[:, :n], rel.alive[:, :n], rel.lo, rel.hi,
                         rel.g_x, rel.g_c[:, :n], rel.g_0)
    return trimmed, Multipliers(*[t[:, :n] for t in mult.tensors()[:-1]], mult.box_in)


class _Layout:
    """The variables ``y = (t, p_E, p_R, up, quad, box, box_in)`` of a group of ``B``
    problems with ``n`` crossing units and ``d`` inputs, and the structure of ``M``.

    ``M`` is indexed ``(0, c, x)``: the inputs last, where its block is diagonal. Vectors
    of ``R^(1+m)`` come in four blocks: ``0`` (``e_0``), ``E`` (crossing-unit unit
    vectors), ``X`` (input unit vectors), ``R`` (the rows ``r_j = (0, C_j, A_j)``)."""

    NAMES = ("t", "p_E", "p_R", "up", "quad", "box", "box_in")

    def __init__(self, rel: Relaxation) -> None:
        d, n = rel.lo.shape[1], rel.g_c.shape[1]
        self.d, self.n, self.m = d, n, d + n
        sizes = [1, n, n, n, n, n, d]
        ends = torch.tensor(sizes).cumsum(0).tolist()
        self.slices = {g: slice(end - size, end) for g, size, end in zip(self.NAMES, sizes, ends)}
        self.size = sum(sizes)
        self.slope, self.intercept = rel.upper_line()                        # s, t (B, n)
        self.rel = rel
        self.dtype = rel.g_0.dtype
        rows = torch.zeros(rel.size, 1 + self.m, n, dtype=self.dtype)
        rows[:, 1:] = torch.cat([rel.hidden, rel.inputs], dim=2).transpose(1, 2)
        self.rows = rows                                                     # (B, 1+m, n)

    def forms(self) -> "Forms":
        """Per group, ``dM/dy_k = sum coef_k u_a(k) u_b(k)^T`` as ``(a, b, coef (B, size))``."""
        rel, half = self.rel, 0.5
        ones = torch.ones_like(rel.offset)
        beta, width = rel.offset, rel.lo + rel.hi
        return {
            "t": [("0", "0", torch.ones(rel.size, 1, dtype=self.dtype))],
            "p_E": [("0", "E", -half * ones), ("E", "0", -half * ones)],
            "p_R": [("0", "0", -beta), ("0", "R", -half * ones), ("R", "0", -half * ones)],
            "up": [("0", "0", -self.intercept)],
            "quad": [("0", "E", -half * beta), ("E", "0", -half * beta), ("E", "E", ones),
                     ("E", "R", -half * ones), ("R", "E", -half * ones)],
            "box": [("0", "E", -half * rel.upper), ("E", "0", -half * rel.upper),
                    ("E", "E", ones)],
            "box_in": [("0", "0", rel.lo * rel.hi), ("0", "X", -half * width),
                       ("X", "0", -half * width), ("X", "X", torch.ones_like(width))]}

    def split(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {g: y[:, self.slices[g]] for g in self.NAMES}

    def signed(self, y: torch.Tensor) -> torch.Tensor:
        """``D v (B, 4n + d)``: ``(pos, pre, up, box, box_in)``; the LP cone's slack."""
        p = self.split(y)
        s = self.slope
        return torch.cat([p["p_E"] + p["p_R"] + (1 - s) * p["up"], s * p["up"] - p["p_R"],
                          p["up"], p["box"], p["box_in"]], dim=1)

    def signed_transpose(self, w: torch.Tensor) -> torch.Tensor:
        """``D^T w (B, 1 + P)`` (zero on ``t`` and ``quad``)."""
        n, s = self.n, self.slope
        w_pos, w_pre, w_up, w_box = (w[:, k * n:(k + 1) * n] for k in range(4))
        zero = torch.zeros_like(w_pos)
        return torch.cat([torch.zeros_like(w[:, :1]), w_pos, w_pos - w_pre,
                          (1 - s) * w_pos + s * w_pre + w_up, zero, w_box, w[:, 4 * n:]], dim=1)

    def signed_gram(self, q: torch.Tensor) -> torch.Tensor:
        """``D^T diag(q) D (B, 1 + P, 1 + P)``."""
        n, s = self.n, self.slope
        out = torch.zeros(q.shape[0], self.size, self.size, dtype=q.dtype)
        q_pos, q_pre, q_up = q[:, :n], q[:, n:2 * n], q[:, 2 * n:3 * n]
        # d(pos, pre, up) / d(p_E, p_R, up): pos (1, 1, 1 - s), pre (0, -1, s), up (0, 0, 1)
        jac = ((q_pos, (1.0, 1.0, 1 - s)), (q_pre, (0.0, -1.0, s)), (q_up, (0.0, 0.0, 1.0)))
        trio = [self.slices[g] for g in ("p_E", "p_R", "up")]
        for weight, row in jac:
            for a in range(3):
                for b in range(3):
                    out[:, trio[a], trio[b]] += torch.diag_embed(weight * row[a] * row[b])
        tail = slice(self.slices["box"].start, self.size)
        out[:, tail, tail] += torch.diag_embed(q[:, 3 * n:])
        return out

    def multipliers(self, y: torch.Tensor) -> Multipliers:
        pos, pre, up, box, box_in = self.signed(y).split([self.n] * 4 + [self.d], dim=1)
        return Multipliers(pos, pre, up, self.split(y)["quad"], box, box_in)

    def encode(self, t: torch.Tensor, mult: Multipliers) -> torch.Tensor:
        s = self.slope
        return torch.cat([t[:, None], mult.pos + mult.pre - mult.up, s * mult.up - mult.pre,
                          mult.up, mult.quad, mult.box, mult.box_in], dim=1)

    def matrix(self, y: torch.Tensor) -> torch.Tensor:
        """``M(t, v) (B, 1 + m, 1 + m)``, indexed ``(0, c, x)``."""
        mult = self.multipliers(y)
        const, a_x, a_c = linear_terms(self.rel, mult)
        a = torch.cat([a_c, a_x], dim=1)
        cross = -0.5 * mult.quad[:, :, None] * self.rel.inputs                    # (B, n, d)
        s_matrix = torch.cat([torch.cat([hidden_block(self.rel, mult), cross], dim=2),
                              torch.cat([cross.transpose(1, 2), torch.diag_embed(mult.box_in)],
                                        dim=2)], dim=1)
        corner = (y[:, 0] - const)[:, None, None]
        return torch.cat([torch.cat([corner, -0.5 * a[:, None, :]], dim=2),
                          torch.cat([-0.5 * a[:, :, None], s_matrix], dim=2)], dim=1)


def _restricted(layout: _Layout, rows: torch.Tensor) -> tuple[_Layout, "Forms"]:
    """The layout and forms of the problems ``rows`` only."""
    sub = _Layout(layout.rel.select(rows))
    return sub, sub.forms()


def _gram(matrix: torch.Tensor, layout: _Layout) -> dict[tuple[str, str], torch.Tensor]:
    """``u_a^T Y u_b`` for the blocks ``a, b`` in ``0, X, E, R`` of ``Y (B, 1+m, 1+m)``."""
    n = layout.n
    index = {"0": slice(0, 1), "E": slice(1, 1 + n), "X": slice(1 + n, None)}
    with_rows = matrix @ layout.rows                                         # (B, 1+m, n)
    k = {(a, b): matrix[:, index[a], index[b]] for a in index for b in index}
    for a in index:
        k[(a, "R")] = with_rows[:, index[a]]
        k[("R", a)] = k[(a, "R")].transpose(1, 2)
    k[("R", "R")] = layout.rows.transpose(1, 2) @ with_rows
    return k


def _aligned(k: dict[tuple[str, str], torch.Tensor], a: str, b: str) -> torch.Tensor:
    """``u_a(j)^T Y u_b(j)`` per variable ``j`` (``(B, size)``, or ``(B, 1)`` for ``0, 0``)."""
    block = k[(a, b)]
    if a == "0" and b == "0":
        return block[:, 0, :1]
    if a == "0":
        return block[:, 0, :]
    if b == "0":
        return block[:, :, 0]
    return torch.diagonal(block, dim1=1, dim2=2)


Forms = dict[str, list[tuple[str, str, torch.Tensor]]]


def _traces(forms: Forms, k: dict[tuple[str, str], torch.Tensor], layout: _Layout
            ) -> torch.Tensor:
    """``tr(dM/dy_k Y) (B, 1 + P)`` from the blocks ``k`` of ``Y``."""
    parts = []
    for g in layout.NAMES:
        size = layout.slices[g].stop - layout.slices[g].start
        total = sum(coef * _aligned(k, b, a) for a, b, coef in forms[g])
        parts.append(total.expand(-1, size) if total.shape[1] == 1 else total)
    return torch.cat(parts, dim=1)


def _schur(forms: Forms, kx: dict[tuple[str, str], torch.Tensor],
           kz: dict[tuple[str, str], torch.Tensor], layout: _Layout) -> torch.Tensor:
    """``tr(dM/dy_k X dM/dy_l Z^-1) (B, 1 + P, 1 + P)``."""
    out = torch.zeros(kx[("0", "0")].shape[0], layout.size, layout.size, dtype=layout.dtype)
    names = layout.NAMES
    for i, g in enumerate(names):
        for h in names[i:]:
            block = sum(alpha[:, :, None] * beta[:, None, :] * kx[(b, c)] * kz[(a, e)]
                        for a, b, alpha in forms[g] for c, e, beta in forms[h])
            rows, cols = layout.slices[g], layout.slices[h]
            out[:, rows, cols] = block
            if g != h:
                out[:, cols, rows] = block.transpose(1, 2)
    return out


class _Inverse:
    """``Z^-1 = diag(delta) + U W U^T`` for ``Z`` indexed ``(0, c, x)`` with a diagonal input
    block ``D``: ``W`` is the inverse of the Schur complement ``Z_oo - Z_ox D^-1 Z_xo`` of
    the first ``n + 1`` indices, ``U = [I; -D^-1 Z_xo]``, ``delta = (0, D^-1)``. Products
    with it cost ``O((1 + m)^2 n)``, not ``(1 + m)^3``."""

    def __init__(self, z: torch.Tensor, n: int) -> None:
        self.ok, factor, (diag, coupling) = _schur_factor(z, n)
        self.w = torch.cholesky_inverse(factor)                       # (B, n+1, n+1)
        self.u = torch.cat([torch.eye(n + 1, dtype=z.dtype).expand(z.shape[0], -1, -1),
                            -(coupling / diag[:, None, :]).transpose(1, 2)], dim=1)
        self.delta = torch.cat([torch.zeros(z.shape[0], n + 1, dtype=z.dtype), 1 / diag], dim=1)

    def dense(self) -> torch.Tensor:
        return torch.diag_embed(self.delta) + self.u @ self.w @ self.u.transpose(1, 2)

    def right(self, y: torch.Tensor) -> torch.Tensor:
        """``Y Z^-1`` for ``Y (B, k, 1 + m)``."""
        return y * self.delta[:, None, :] + ((y @ self.u) @ self.w) @ self.u.transpose(1, 2)


def _schur_factor(z: torch.Tensor, n: int):
    """``(ok (B,), Cholesky factor of Z_oo - Z_ox D^-1 Z_xo, (D diagonal (B, d), Z_ox))``;
    ``ok`` where ``Z`` is positive definite (``D > 0`` and the factor exists)."""
    diag = torch.diagonal(z[:, n + 1:, n + 1:], dim1=1, dim2=2)
    coupling = z[:, :n + 1, n + 1:]
    positive = (diag > 0).all(-1)
    safe = torch.where(positive[:, None], diag, torch.ones_like(diag))
    schur = z[:, :n + 1, :n + 1] - (coupling / safe[:, None, :]) @ coupling.transpose(1, 2)
    factor, info = torch.linalg.cholesky_ex(schur)
    return positive & (info == 0), factor, (safe, coupling)


def _step_to_boundary(matrix: torch.Tensor, change: torch.Tensor, vector: torch.Tensor,
                      vector_change: torch.Tensor, structured: int | None = None
                      ) -> torch.Tensor:
    """``(B,)``: ``alpha <= 1`` with ``matrix + alpha change / TO_BOUNDARY`` positive
    definite and ``vector + alpha vector_change / TO_BOUNDARY > 0``; found by
    backtracking (x 0.8) on a Cholesky factorisation, from the vector's own limit; with
    ``structured = n``, on the Schur complement of the diagonal input block (for ``Z``)."""
    shrinking = vector_change < 0
    ratio = torch.where(shrinking, vector / (-vector_change).clamp(min=1e-300),
                        torch.full_like(vector, torch.inf)).amin(-1)
    alpha = (TO_BOUNDARY * ratio).clamp(max=1.0)
    open_ = torch.ones_like(alpha, dtype=torch.bool)
    for _ in range(60):
        rows = torch.nonzero(open_).flatten()
        if len(rows) == 0:
            break
        trial = matrix[rows] + (alpha[rows] / TO_BOUNDARY)[:, None, None] * change[rows]
        fine = torch.linalg.cholesky_ex(trial)[1] == 0 if structured is None else \
            _schur_factor(trial, structured)[0]
        open_[rows[fine]] = False
        alpha[rows[~fine]] *= 0.8
    return torch.where(open_, torch.zeros_like(alpha), alpha)


def _start(rel: Relaxation, start: Multipliers, layout: _Layout) -> torch.Tensor:
    """A strictly feasible dual point near ``start``: every signed multiplier raised by
    ``FLOOR`` of the typical one, ``S`` repaired to be safely positive definite and ``t``
    above ``sup_w L``."""
    coefficient = (start.pos + start.pre + start.up).mean(-1, keepdim=True).clamp(min=1e-9)
    floor = FLOOR * coefficient
    begin = Multipliers(*(t.clamp(min=0) + floor if name != "quad" else t
                          for name, t in zip(GROUPS, start.tensors()[:-1])),
                        start.box_in.clamp(min=0) + FLOOR * start.box_in.mean(-1, keepdim=True))
    begin = repair(rel, project(rel, begin, torch.zeros(rel.size, 1, dtype=layout.dtype)),
                   margin=1e-3)
    y = layout.encode(torch.zeros(rel.size, dtype=layout.dtype), begin)
    corner = layout.matrix(y)
    s_matrix, half_a = corner[:, 1:, 1:], corner[:, 1:, :1]
    value = -corner[:, 0, 0] + (half_a * torch.cholesky_solve(half_a, torch.linalg.cholesky(
        s_matrix)))[:, :, 0].sum(-1)                   # sup_w L = const + a^T S^-1 a / 4
    y[:, 0] = value + 0.1 * (1 + value.abs())
    return y


def _times_structured(y: torch.Tensor, change: torch.Tensor, n: int) -> torch.Tensor:
    """``Y dZ`` for a ``dZ`` indexed ``(0, c, x)`` with a diagonal input block (``O(k (1 + m)
    n)`` for ``Y (B, k, 1 + m)``)."""
    head = y[:, :, :n + 1] @ change[:, :n + 1, :]
    tail = y[:, :, n + 1:] @ change[:, n + 1:, :n + 1]
    diagonal = torch.diagonal(change[:, n + 1:, n + 1:], dim1=1, dim2=2)
    head[:, :, :n + 1] += tail
    head[:, :, n + 1:] += y[:, :, n + 1:] * diagonal[:, None, :]
    return head


def _solve(exact: Relaxation, start: Multipliers, iterations: int, tolerance: float,
           target: float | None, groups: torch.Tensor, dtype: torch.dtype) -> Multipliers:
    """HKM path following with Mehrotra's predictor-corrector, batched over the group; the
    primal starts centred on the dual start (``X = mu Z^-1``, ``x = mu / z``, with
    ``X_00 = 1``). With a ``target``, a problem also stops once its certified bound is
    below it, and every problem of its ``groups`` entry stops once its primal value is
    above it (then no bound of that group can get below it). The search runs in
    ``dtype``; certificates are computed on the float64 ``exact``."""
    rel = exact.to(dtype)
    start = Multipliers(*[t.to(dtype) for t in start.tensors()])
    layout = _Layout(rel)
    forms = layout.forms()
    n = layout.n
    y = _start(rel, start, layout)
    inverse = _Inverse(layout.matrix(y), n)
    z_inverse = inverse.dense()
    mu = 1 / z_inverse[:, 0, 0]
    x_matrix = mu[:, None, None] * z_inverse
    x_vector = mu[:, None] / layout.signed(y)
    goal = torch.zeros(rel.size, layout.size, dtype=layout.dtype)
    goal[:, 0] = -1.0                                               # b: maximise -t
    nu = 1 + layout.m + x_vector.shape[1]
    active = torch.ones(rel.size, dtype=torch.bool)
    constant = layout.matrix(torch.zeros_like(y))                  # M(0): C
    for _ in range(iterations):
        rows = torch.nonzero(active).flatten()
        if len(rows) == 0:
            break
        lay, lay_forms = (layout, forms) if len(rows) == rel.size else \
            _restricted(layout, rows)
        yr, xm, xv = y[rows], x_matrix[rows], x_vector[rows]
        zm, zv = lay.matrix(yr), lay.signed(yr)
        inverse = _Inverse(zm, n)
        z_inverse = inverse.dense()
        mu = ((xm * zm).sum((1, 2)) + (xv * zv).sum(-1)) / nu
        kz, kx = _gram(z_inverse, lay), _gram(xm, lay)
        residual = goal[rows] + _traces(lay_forms, kx, lay) + lay.signed_transpose(xv)
        schur = _schur(lay_forms, kx, kz, lay) + lay.signed_gram(xv / zv)
        scale = torch.diagonal(schur, dim1=1, dim2=2).clamp(min=1e-300).sqrt()
        factor, info = torch.linalg.cholesky_ex(
            schur / scale[:, :, None] / scale[:, None, :]
            + RIDGE * torch.eye(layout.size, dtype=layout.dtype))
        # a problem whose Schur complement or Z stops factorising (rounding, near the
        # optimum in float32) keeps its last iterate and stops
        broken = (info != 0) | ~inverse.ok

        def direction(rhs, extra_matrix, extra_vector, centre):
            dy = torch.cholesky_solve((rhs / scale)[..., None], factor)[..., 0] / scale
            dzm, dzv = lay.matrix(yr + dy) - zm, lay.signed(yr + dy) - zv
            product = inverse.right(_times_structured(xm, dzm, n))
            dxm = centre[:, None, None] * z_inverse - xm \
                - 0.5 * (product + product.transpose(1, 2)) - extra_matrix
            dxv = centre[:, None] / zv - xv - xv / zv * dzv - extra_vector
            return dy, dzm, dzv, dxm, dxv

        zero = torch.zeros_like(mu)
        dy, dzm, dzv, dxm, dxv = direction(goal[rows], 0.0, 0.0, zero)        # predictor
        primal = _step_to_boundary(xm, dxm, xv, dxv)
        dual = _step_to_boundary(zm, dzm, zv, dzv, structured=n)
        mu_aff = (((xm + primal[:, None, None] * dxm) * (zm + dual[:, None, None] * dzm)
                   ).sum((1, 2)) + ((xv + primal[:, None] * dxv) * (zv + dual[:, None] * dzv)
                                    ).sum(-1)) / nu
        sigma = (mu_aff / mu).clamp(min=0, max=1) ** 3
        second = inverse.right(_times_structured(dxm, dzm, n))
        second = 0.5 * (second + second.transpose(1, 2))
        second_vector = dxv * dzv / zv
        centre = sigma * mu
        rhs = goal[rows] + _traces(lay_forms, _gram(centre[:, None, None] * z_inverse - second,
                                                    lay), lay) \
            + lay.signed_transpose(centre[:, None] / zv - second_vector)
        dy, dzm, dzv, dxm, dxv = direction(rhs, second, second_vector, centre)  # corrector
        primal = _step_to_boundary(xm, dxm, xv, dxv).masked_fill(broken, 0.0)
        dual = _step_to_boundary(zm, dzm, zv, dzv, structured=n).masked_fill(broken, 0.0)
        y[rows] = yr + dual[:, None] * dy
        x_matrix[rows] = xm + primal[:, None, None] * dxm
        x_vector[rows] = xv + primal[:, None] * dxv
        bound = y[rows, 0]
        lower = -(constant[rows] * x_matrix[rows]).sum((1, 2))
        gap = (bound - lower).abs() / (1 + bound.abs() + lower.abs())
        infeasible = residual.norm(dim=-1) / (1 + x_matrix[rows, 0, 0].abs())
        done = (gap < tolerance) & (infeasible < tolerance) | broken
        if target is not None:
            below = torch.nonzero(bound < target).flatten()
            if len(below):
                found = lay.multipliers(y[rows]).select(below)
                certified = certify(exact.select(rows[below]), Multipliers(
                    *[t.to(torch.float64) for t in found.tensors()]))
                done[below] |= certified < target
            above = (lower > target + HOPELESS * (1 + lower.abs())) & (infeasible < HOPELESS)
            if bool(above.any()):
                active[torch.isin(groups, groups[rows[above]])] = False
        active[rows] &= ~done
    return Multipliers(*[t.to(torch.float64) for t in layout.multipliers(y).tensors()])
