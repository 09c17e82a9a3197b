"""The multi-layer SDP relaxation of a ReLU network and its certified Lagrangian dual.

The relaxation is Raghunathan, Steinhardt & Liang's (NeurIPS 2018). Hidden layer ``k``
has pre-activations ``zhat_k = W_k z_{k-1} + b_k`` (``z_{-1} = x``) and ``z_k =
relu(zhat_k)``; with pre-activation bounds ``[l, u]`` (from the LP family) a unit is
*dead* (``u <= 0``: ``z = 0``), *active* (``l >= 0``: ``z = zhat``) or *crossing*. Dead
and active units are affine in the variables before them, so they are substituted
exactly, and the problem keeps the input ``x (d)`` and the crossing units ``c (n)``,
each with its pre-activation affine in what precedes it: ``zhat_j = A_j x + C_j c +
beta_j`` (``C`` strictly lower triangular in layer order). Per crossing unit:

- (pos)  ``c_j >= 0``;            (pre)  ``c_j >= zhat_j``;
- (up)   ``c_j <= s_j zhat_j + t_j``, the triangle's upper line (``s = u / (u - l)``,
  ``t = -s l``), so the relaxation lies inside the LP's;
- (quad) ``c_j^2 = c_j zhat_j``, the ReLU's complementarity (an equality);
- (box)  ``c_j (u_j - c_j) >= 0``; and per input ``(x_i - lo_i)(hi_i - x_i) >= 0``.

The SDP lifts ``(1, x, c)`` to a PSD matrix in which every constraint is linear; the
objective ``spec . f(x) = g_x . x + g_c . c + g_0`` is affine (through the active units).
Substituting the active units is exact for the network and at least as tight as
keeping them as variables.

Its Lagrangian dual is the best S-procedure bound: for multipliers ``theta``
(``pos, pre, up, box, box_in >= 0``, ``quad`` free) the function

    V(w) = spec . f + sum theta_i g_i(w) = const + a . w - w^T S w,    w = (x, c)

is ``>= spec . f`` on every feasible ``w``, so ``sup_w V`` bounds the network's maximum
(and the SDP's) whenever ``S`` is positive definite. ``S`` has ``diag(box_in)`` on the
inputs, ``diag(quad + box) - (diag(quad) C + C^T diag(quad)) / 2`` on the crossing units
and ``-A^T diag(quad) / 2`` between them; eliminating ``x`` (diagonal) leaves
``S' = S_cc - diag(quad) A diag(box_in)^-1 A^T diag(quad) / 4`` (``n x n``), and
``sup V = const' + a'^T S'^-1 a' / 4`` by one Cholesky factor. The dual optimum equals the
SDP's value.

Every number reported is certified (:func:`certify`): from any multipliers, signs are
enforced and the box multipliers raised until ``S'`` is safely positive definite;
``w`` is the computed maximiser; then ``sup V <= V(w) + sum_i r_i^2 / D_ii / (4 sigma)``
for the residual ``r = grad V(w)``, ``D = diag(S)`` and ``sigma`` with ``S >= sigma D``
checked in float64 (an eigenvalue of the scaled Schur complement, with rounding
allowances). The search (:func:`optimise`) only finds multipliers; the bound never
depends on it.

The LP family's bounds are this dual at ``quad = 0``: a lower slope ``alpha`` is the
split ``pos = (1 - alpha) c^-``, ``pre = alpha c^-``, ``up = c^+`` of a unit's coefficient,
and ``box_in = |coef| / (hi - lo)`` makes the input box exact, in the limit of vanishing
hidden box multipliers (:func:`linear_start`). The search starts there.

Shapes: ``B`` problems (sample x specification row), ``d`` inputs, ``n`` crossing units
(padded to the largest in a batch; padding units are masked out). float64 throughout,
but for the search, which may run in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from verifiers.linear.propagation import Bounds, lower_slopes, projected
from verifiers.linear.slope_optimisation import Optimised

EPS64 = torch.finfo(torch.float64).eps
GROUPS = ("pos", "pre", "up", "quad", "box")     # one per crossing unit, (B, n) each
SIGNED = {"quad"}                                 # free-sign multipliers (equalities)
LOGGED = {"box", "box_in"}                        # searched in log space
LINE_SEARCH = 12                                  # backtracking steps (x 0.3) per iteration
BARRIER = 1e-2           # first log-det barrier weight, relative to the bound per unit
STALL = 1e-7             # a problem stops after 5 iterations gaining less than this (relative)


@dataclass
class Relaxation:
    """``B`` problems: ``max g_x . x + g_c . c + g_0`` over the relaxation above.

    ``inputs (B, n, d)``, ``hidden (B, n, n)``, ``offset (B, n)``: ``A``, ``C``, ``beta``;
    ``lower, upper (B, n)``: pre-activation bounds of the crossing units; ``alive (B, n)``
    1.0 on real units, 0.0 on padding; ``lo, hi (B, d)``: the input box; ``g_x (B, d)``,
    ``g_c (B, n)``, ``g_0 (B,)``: the objective.
    """

    inputs: torch.Tensor
    hidden: torch.Tensor
    offset: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    alive: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    g_x: torch.Tensor
    g_c: torch.Tensor
    g_0: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.g_0.shape[0])

    def select(self, rows: torch.Tensor) -> "Relaxation":
        """The problems ``rows`` (an index tensor) as a relaxation of their own."""
        return Relaxation(*[getattr(self, f)[rows] for f in FIELDS])

    def to(self, dtype: torch.dtype) -> "Relaxation":
        return Relaxation(*[getattr(self, f).to(dtype) for f in FIELDS])

    def upper_line(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s, t) (B, n)``: ``relu(zhat) <= s zhat + t`` on ``[lower, upper]``."""
        gap = torch.where(self.alive > 0, self.upper - self.lower, torch.ones_like(self.upper))
        s = torch.where(self.alive > 0, self.upper / gap, torch.zeros_like(gap))
        return s, -s * self.lower

    def preactivations(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``zhat (B, n)`` at points ``x (B, d)``, ``c (B, n)``."""
        return (self.inputs @ x[..., None])[..., 0] + (self.hidden @ c[..., None])[..., 0] \
            + self.offset


FIELDS = ("inputs", "hidden", "offset", "lower", "upper", "alive", "lo", "hi", "g_x", "g_c",
          "g_0")


def build(params: list[tuple[torch.Tensor, torch.Tensor]], bounds: Bounds, lo: torch.Tensor,
          hi: torch.Tensor, spec: torch.Tensor) -> tuple[Relaxation, list[torch.Tensor]]:
    """The relaxation of ``spec (N, S, K) . f`` over the boxes ``lo, hi (N, d)`` with
    pre-activation ``bounds``, one problem per sample and row (``B = N S``, row-major),
    and ``crossing``: per hidden layer ``(N, m_k)`` the index of each crossing unit in
    ``c`` (``-1`` elsewhere), for mapping multipliers to units."""
    n_samples, rows = spec.shape[:2]
    d = lo.shape[1]
    masks = [(low < 0) & (up > 0) for low, up in bounds]
    counts = sum(m.sum(-1) for m in masks)
    n = max(int(counts.max()), 1)
    inputs = torch.zeros(n_samples, n, d, dtype=torch.float64)
    hidden = torch.zeros(n_samples, n, n, dtype=torch.float64)
    offset = torch.zeros(n_samples, n, dtype=torch.float64)
    lower = torch.full((n_samples, n), -1.0, dtype=torch.float64)
    upper = torch.ones(n_samples, n, dtype=torch.float64)
    alive = torch.zeros(n_samples, n, dtype=torch.float64)
    crossing = [torch.full(m.shape, -1, dtype=torch.long) for m in masks]
    g_x = torch.zeros(n_samples, rows, d, dtype=torch.float64)
    g_c = torch.zeros(n_samples, rows, n, dtype=torch.float64)
    g_0 = torch.zeros(n_samples, rows, dtype=torch.float64)
    for i in range(n_samples):
        on_x = None                                        # z_{k-1} = on_x x + on_c c + on_1
        on_c = torch.zeros(d, n, dtype=torch.float64)
        on_1 = torch.zeros(d, dtype=torch.float64)
        used = 0
        for k, (w, b) in enumerate(params[:-1]):
            pre_x = w.clone() if on_x is None else w @ on_x
            pre_c, pre_1 = w @ on_c, w @ on_1 + b
            cross = torch.nonzero(masks[k][i]).flatten()
            index = torch.arange(used, used + len(cross))
            crossing[k][i, cross] = index
            inputs[i, index], hidden[i, index], offset[i, index] = \
                pre_x[cross], pre_c[cross], pre_1[cross]
            lower[i, index], upper[i, index] = bounds[k][0][i, cross], bounds[k][1][i, cross]
            alive[i, index] = 1.0
            active = (bounds[k][0][i] >= 0).to(torch.float64)[:, None]
            on_x, on_c, on_1 = pre_x * active, pre_c * active, pre_1 * active[:, 0]
            on_c[cross, index] = 1.0
            used += len(cross)
        w, b = params[-1]
        g_x[i] = spec[i] @ (w @ on_x)
        g_c[i] = spec[i] @ (w @ on_c)
        g_0[i] = spec[i] @ (w @ on_1 + b)
    sample = torch.arange(n_samples).repeat_interleave(rows)
    rel = Relaxation(inputs[sample], hidden[sample], offset[sample], lower[sample],
                     upper[sample], alive[sample], lo[sample], hi[sample],
                     g_x.reshape(-1, d), g_c.reshape(-1, n), g_0.reshape(-1))
    return rel, crossing


@dataclass
class Multipliers:
    """Lagrange multipliers: ``pos, pre, up, quad, box (B, n)`` and ``box_in (B, d)``."""

    pos: torch.Tensor
    pre: torch.Tensor
    up: torch.Tensor
    quad: torch.Tensor
    box: torch.Tensor
    box_in: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, name) for name in GROUPS] + [self.box_in]

    def select(self, rows: torch.Tensor) -> "Multipliers":
        return Multipliers(*[t[rows] for t in self.tensors()])


def project(rel: Relaxation, mult: Multipliers, floor: torch.Tensor) -> Multipliers:
    """Signs enforced (``quad`` free), padding zeroed, ``box_in >= floor (B, 1)``.

    The nonnegative multipliers (all but ``quad``) by
    :func:`~verifiers.linear.propagation.projected` (``clamp``'s values, the identity's
    gradient): the search keeps them ``>= 0`` and pins those at zero that the gradient
    pushes below it, so it needs their gradient at zero, which torch 2.14's ``clamp``
    sets to 0."""
    return Multipliers(*[(t if name in SIGNED else projected(t, 0)) * rel.alive
                         for name, t in zip(GROUPS, mult.tensors())],
                       torch.maximum(mult.box_in, floor))


def linear_terms(rel: Relaxation, mult: Multipliers
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(const (B,), a_x (B, d), a_c (B, n))``: the constant and linear part of ``V``."""
    s, t = rel.upper_line()
    h = -mult.pre + mult.up * s                               # coefficient of zhat_j
    a_x = rel.g_x + (h[:, None, :] @ rel.inputs)[:, 0] + mult.box_in * (rel.lo + rel.hi)
    a_c = rel.g_c + (h[:, None, :] @ rel.hidden)[:, 0] + mult.pos + mult.pre - mult.up \
        + mult.box * rel.upper + mult.quad * rel.offset
    const = rel.g_0 + (h * rel.offset).sum(-1) + (mult.up * t).sum(-1) \
        - (mult.box_in * rel.lo * rel.hi).sum(-1)
    return const, a_x, a_c * rel.alive


def absolute_terms(rel: Relaxation, mult: Multipliers
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Upper bounds on the sums of absolute values that make up ``const``, ``a_x`` and
    ``a_c`` of :func:`linear_terms` (their rounding errors are at most a few ``eps``
    times these, whatever cancels)."""
    s, t = rel.upper_line()
    h = mult.pre.abs() + mult.up.abs() * s
    a_x = rel.g_x.abs() + (h[:, None, :] @ rel.inputs.abs())[:, 0] \
        + mult.box_in.abs() * (rel.lo.abs() + rel.hi.abs())
    a_c = rel.g_c.abs() + (h[:, None, :] @ rel.hidden.abs())[:, 0] + mult.pos.abs() \
        + mult.pre.abs() + mult.up.abs() + mult.box.abs() * rel.upper.abs() \
        + mult.quad.abs() * rel.offset.abs()
    const = rel.g_0.abs() + (h * rel.offset.abs()).sum(-1) + (mult.up.abs() * t.abs()).sum(-1) \
        + (mult.box_in.abs() * rel.lo.abs() * rel.hi.abs()).sum(-1)
    return const, a_x, a_c * rel.alive


def coupling(rel: Relaxation, mult: Multipliers, gamma: torch.Tensor) -> torch.Tensor:
    """``diag(quad) A diag(gamma)^-1 A^T diag(quad) / 4 (B, n, n)``: what eliminating the
    inputs (diagonal ``gamma (B, d)``) takes off the crossing units' block."""
    gram = (rel.inputs / gamma[:, None, :]) @ rel.inputs.transpose(1, 2)
    return 0.25 * mult.quad[:, :, None] * gram * mult.quad[:, None, :]


def hidden_block(rel: Relaxation, mult: Multipliers) -> torch.Tensor:
    """``S_cc (B, n, n)``; padding units get an identity row."""
    half = 0.5 * mult.quad[:, :, None] * rel.hidden
    diagonal = (mult.quad + mult.box) * rel.alive + (1 - rel.alive)
    return torch.diag_embed(diagonal) - half - half.transpose(1, 2)


def reduced_system(rel: Relaxation, mult: Multipliers
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(const' (B,), a' (B, n), S' (B, n, n))`` after eliminating ``x``:
    ``sup_x V = const' + a' . c - c^T S' c``."""
    const, a_x, a_c = linear_terms(rel, mult)
    gamma = mult.box_in
    system = hidden_block(rel, mult) - coupling(rel, mult, gamma)
    linear = a_c + 0.5 * mult.quad * (rel.inputs @ (a_x / gamma)[..., None])[..., 0]
    return const + 0.25 * (a_x ** 2 / gamma).sum(-1), linear * rel.alive, system


def dual_value(rel: Relaxation, mult: Multipliers, barrier: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sup V (B,), ok (B,) bool)``; ``+inf`` where ``S'`` is not positive definite.
    Differentiable in ``mult`` (the search's objective; not a certificate)."""
    const, linear, system = reduced_system(rel, mult)
    factor, info = torch.linalg.cholesky_ex(system)
    ok = info == 0
    solved = torch.cholesky_solve(linear[..., None], factor)[..., 0]
    value = const + 0.25 * (linear * solved).sum(-1)
    if barrier is not None:
        diag = torch.diagonal(factor, dim1=1, dim2=2).clamp(min=torch.finfo(factor.dtype).tiny)
        value = value - barrier * 2 * (torch.log(diag) * rel.alive).sum(-1)
    return torch.where(ok, value, torch.full_like(value, torch.inf)), ok


def repair(rel: Relaxation, mult: Multipliers, margin: float | None = None) -> Multipliers:
    """Raise the hidden box multipliers so that ``S'`` is positive definite: with ``margin``,
    until ``lambda_min(S') >= margin * scale`` (``scale`` the mean diagonal of ``S'``) on
    every problem; without, only where its Cholesky factorisation fails (cheap)."""
    with torch.no_grad():
        _, _, system = reduced_system(rel, mult)
        rows = torch.arange(rel.size)
        if margin is None:
            rows = rows[torch.linalg.cholesky_ex(system)[1] != 0]
            if len(rows) == 0:
                return mult
        rows = rows[torch.isfinite(system[rows]).all(-1).all(-1)]
        diag = torch.diagonal(system[rows], dim1=1, dim2=2)
        scale = diag.abs().mean(-1).clamp(min=1e-12)
        lowest = torch.linalg.eigvalsh(system[rows])[:, 0]
        need = torch.zeros(rel.size, dtype=system.dtype)
        need[rows] = ((margin or 1e-6) * scale - lowest).clamp(min=0)
    if not bool((need > 0).any()):
        return mult
    return Multipliers(mult.pos, mult.pre, mult.up, mult.quad,
                       mult.box + need[:, None] * rel.alive, mult.box_in)


def _products(rel: Relaxation, mult: Multipliers, x: torch.Tensor, c: torch.Tensor,
              absolute: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S w)_x (B, d)`` and ``(S w)_c (B, n)`` by structured products; with
    ``absolute``, ``|S| |w|`` for the rounding allowances."""
    f = torch.abs if absolute else (lambda t: t)
    sign = 1.0 if absolute else -1.0
    inputs, hidden, quad = f(rel.inputs), f(rel.hidden), f(mult.quad)
    s_x = f(mult.box_in) * x + sign * 0.5 * ((quad * c)[:, None, :] @ inputs)[:, 0]
    s_c = f(mult.quad + mult.box) * c + sign * 0.5 * (
        quad * (hidden @ c[..., None])[..., 0] + ((quad * c)[:, None, :] @ hidden)[:, 0]
        + quad * (inputs @ x[..., None])[..., 0])
    return s_x, s_c * rel.alive


def _scaled_floor(rel: Relaxation, mult: Multipliers, system: torch.Tensor,
                  hidden: torch.Tensor) -> torch.Tensor:
    """``sigma (B,)`` in ``(0, 1/2]`` with ``S >= sigma diag(S)`` certified in float64, or 0.

    With ``D`` the diagonal, ``S >= sigma D`` iff ``D_c^-1/2 (S' - K sigma/(1 - sigma))
    D_c^-1/2 - sigma I >= 0``, with ``K = S_cc - S'`` what eliminating the inputs took off
    (``hidden`` is ``S_cc``); its lowest eigenvalue must exceed a rounding allowance on
    the entries."""
    scale = torch.diagonal(hidden, dim1=1, dim2=2).rsqrt()
    scaled = system * scale[:, :, None] * scale[:, None, :]
    sigma = (0.5 * torch.linalg.eigvalsh(scaled)[:, 0]).clamp(min=0, max=0.5)
    taken = hidden - system
    unsigned = mult.quad.abs()[:, :, None] * rel.inputs.abs() / mult.box_in.sqrt()[:, None, :]
    absolute = hidden_block(rel, Multipliers(mult.pos, mult.pre, mult.up, mult.quad.abs(),
                                             mult.box, mult.box_in)).abs() \
        + 0.25 * unsigned @ unsigned.transpose(1, 2)
    count = rel.lo.shape[1] + system.shape[-1] + 8
    magnitude = torch.linalg.matrix_norm(absolute * scale[:, :, None] * scale[:, None, :])
    certified = torch.zeros(rel.size, dtype=torch.float64)
    for _ in range(6):
        trial = system - taken * (sigma / (1 - sigma))[:, None, None]
        trial = trial * scale[:, :, None] * scale[:, None, :] \
            - sigma[:, None, None] * torch.eye(system.shape[-1], dtype=torch.float64)
        allowance = 8 * count * EPS64 * magnitude / (1 - sigma)
        good = (certified == 0) & (sigma > 0) & \
            (torch.linalg.eigvalsh(trial)[:, 0] > allowance)
        certified = torch.where(good, sigma, certified)
        if bool((certified > 0).all()):
            break
        sigma = sigma / 8
    return certified


def certify(rel: Relaxation, mult: Multipliers, margin: float = 1e-7) -> torch.Tensor:
    """A certified upper bound ``(B,)`` on ``max spec . f(x)`` over each problem's box from
    any multipliers (signs enforced, then repaired); ``+inf`` where nothing is certified."""
    with torch.no_grad():
        floor = torch.full((rel.size, 1), 1e-12, dtype=torch.float64)
        mult = repair(rel, project(rel, mult, floor), margin)
        _, linear, system = reduced_system(rel, mult)
        factor, info = torch.linalg.cholesky_ex(system)
        c = 0.5 * torch.cholesky_solve(linear[..., None], factor)[..., 0] * rel.alive
        const, a_x, a_c = linear_terms(rel, mult)
        x = (a_x + ((mult.quad * c)[:, None, :] @ rel.inputs)[:, 0]) / (2 * mult.box_in)
        s_x, s_c = _products(rel, mult, x, c)
        value = const + (a_x * x).sum(-1) + (a_c * c).sum(-1) \
            - (x * s_x).sum(-1) - (c * s_c).sum(-1)
        abs_x, abs_c = _products(rel, mult, x.abs(), c.abs(), absolute=True)
        const_abs, a_x_abs, a_c_abs = absolute_terms(rel, mult)
        count = rel.lo.shape[1] + c.shape[1] + 8
        magnitude = const_abs + (a_x_abs * x.abs()).sum(-1) + (a_c_abs * c.abs()).sum(-1) \
            + (x.abs() * abs_x).sum(-1) + (c.abs() * abs_c).sum(-1)
        r_x = (a_x - 2 * s_x).abs() + count * EPS64 * (a_x_abs + 2 * abs_x)
        r_c = ((a_c - 2 * s_c).abs() + count * EPS64 * (a_c_abs + 2 * abs_c)) * rel.alive
        hidden = hidden_block(rel, mult)
        diag_c = torch.diagonal(hidden, dim1=1, dim2=2)
        sigma = _scaled_floor(rel, mult, system, hidden)
        residual = (r_x ** 2 / mult.box_in).sum(-1) + (r_c ** 2 / diag_c).sum(-1)
        bound = value + 4 * count * EPS64 * magnitude + residual / (4 * sigma)
        ok = (info == 0) & (sigma > 0) & torch.isfinite(bound)
        return torch.where(ok, bound, torch.full_like(bound, torch.inf))


def linear_start(rel: Relaxation, bounds: Bounds, linear: Optimised,
                 crossing: list[torch.Tensor], box_floor: float = 1e-3) -> Multipliers:
    """The LP family's dual point behind ``linear`` (the outcome of
    :func:`verifiers.linear.slope_optimisation.optimise_upper` on the same problems ``(N, S)``: its
    lower slopes and the float64 coefficients of its final backward pass), in ``rel``'s
    variables; its dual value is ``linear.upper`` plus the cost of the hidden box
    multipliers, ``box_floor`` times the unit's coefficient over its width (about
    ``box_floor / 4`` of the linear bound's spread)."""
    rows = linear.upper.shape[1]
    size, n = rel.size, rel.g_c.shape[1]
    groups = {name: torch.zeros(size, n + 1, dtype=torch.float64) for name in GROUPS}
    for k, coef in enumerate(linear.coefs):      # on z_k before its relaxation (N, S, m_k)
        alpha = lower_slopes(*bounds[k], linear.slopes[k].to(torch.float64))
        target = crossing[k][:, None, :].expand(-1, rows, -1).reshape(size, -1)
        target = torch.where(target >= 0, target, torch.full_like(target, n))
        coef, alpha = coef.reshape(size, -1), alpha.reshape(size, -1)
        negative = (-coef).clamp(min=0)
        groups["pos"].scatter_(1, target, (1 - alpha) * negative)
        groups["pre"].scatter_(1, target, alpha * negative)
        groups["up"].scatter_(1, target, coef.clamp(min=0))
        groups["box"].scatter_(1, target, box_floor * coef.abs())
    box = groups["box"][:, :n] / rel.upper.clamp(min=1e-6)
    coef_x = linear.input_coef.reshape(size, -1)
    box_in = coef_x.abs() / (rel.hi - rel.lo).clamp(min=1e-9)
    box_in = box_in.clamp(min=1e-9 * box_in.mean(-1, keepdim=True).clamp(min=1e-9))
    mult = Multipliers(groups["pos"][:, :n], groups["pre"][:, :n], groups["up"][:, :n],
                       torch.zeros(size, n, dtype=torch.float64), box, box_in)
    return project(rel, mult, torch.zeros(size, 1, dtype=torch.float64))


def optimise(rel: Relaxation, start: Multipliers, *, iterations: int, stages: int = 3,
             dtype: torch.dtype = torch.float32) -> Multipliers:
    """Minimise the dual value from ``start`` by L-BFGS, batched over the problems, and
    return the multipliers reached (the start where nothing better was found).

    The box multipliers are searched in log space (they range over orders of magnitude
    and matter most: searched linearly, the descent stalls); the others linearly, scaled
    by the typical coefficient (``quad``: over the typical box width), the nonnegative
    ones projected onto their bound (projected L-BFGS: a multiplier at zero whose
    gradient pushes it below is held there for the step). Outside the dual's domain the
    value is ``+inf``; a trial step there is repaired back into it before the
    backtracking (Armijo) line search judges it. The minimum sits on the domain's
    boundary, where plain steps stall, so ``stages`` rounds first minimise the value
    minus a log-det barrier on ``S'`` (weight ``BARRIER`` times the bound per unit,
    divided by 100 each round), then the value alone; ``iterations`` are shared
    equally between the rounds. The search runs in ``dtype`` (float32: 2.5x faster per
    step at MNIST size); the point it ends at is kept only if its float64 value is
    below the start's.
    """
    floor = torch.full((rel.size, 1), 1e-12, dtype=torch.float64)
    begin = repair(rel, project(rel, start, floor))
    codec = _Codec(rel, begin)
    first = codec.encode(begin)
    value = _value(rel, codec, first)
    work, work_codec = rel.to(dtype), codec.to(dtype)
    point = first.to(dtype)
    weight = (BARRIER * (1 + value.abs()) / rel.alive.sum(-1).clamp(min=1)).to(dtype)
    for stage in range(stages + 1):
        barrier = weight * 10.0 ** (-2 * stage) if stage < stages else None
        point = _lbfgs(work, work_codec, point, iterations // (stages + 1), barrier)
    point = point.to(torch.float64)
    worse = ~(_value(rel, codec, point) <= value)
    return codec.decode(torch.where(worse[:, None], first, point))


def _lbfgs(rel: Relaxation, codec: _Codec, point: torch.Tensor, iterations: int,
           barrier: torch.Tensor | None, memory: int = 12) -> torch.Tensor:
    """Projected L-BFGS on the (barrier-augmented) dual value from ``point``; batched,
    with a backtracking Armijo line search per problem; returns the point reached. A
    problem stops after two failed line searches in a row or five steps that gain less
    than ``STALL`` of ``1 + |value|``."""
    floor = torch.full((rel.size, 1), 1e-12, dtype=point.dtype)
    bounded = codec.bounded
    value, grad = _value_and_grad(rel, codec, point, barrier)
    steps: list[torch.Tensor] = []
    changes: list[torch.Tensor] = []
    strikes = torch.zeros(rel.size, dtype=torch.long)     # failed line searches in a row
    stalled = torch.zeros(rel.size, dtype=torch.long)     # iterations of no real progress
    for _ in range(iterations):
        pinned = bounded & (point <= 0) & (grad > 0)      # at zero, and pushed below it
        free_grad = torch.where(pinned, torch.zeros_like(grad), grad)
        direction = torch.where(pinned, torch.zeros_like(grad),
                                _two_loop(free_grad, steps, changes))
        slope = (free_grad * direction).sum(-1)
        uphill = ~(slope < 0)
        direction = torch.where(uphill[:, None], -free_grad, direction)
        fresh = torch.ones(rel.size, dtype=torch.bool) if not steps else \
            (steps[-1] == 0).all(-1)
        size = torch.where(fresh, 1e-2 / free_grad.abs().amax(-1).clamp(min=1e-12),
                           torch.ones(rel.size, dtype=point.dtype))
        searching = (free_grad != 0).any(-1) & (strikes < 2)
        new_point, new_value = point.clone(), value.clone()
        for _ in range(LINE_SEARCH):
            rows = torch.nonzero(searching).flatten()
            if len(rows) == 0:
                break
            every = len(rows) == rel.size
            sub = rel if every else rel.select(rows)
            sub_codec = codec if every else codec.select(rows)
            sub_barrier = barrier if barrier is None or every else barrier[rows]
            trial = point[rows] + size[rows, None] * direction[rows]
            trial = torch.where(bounded, trial.clamp(min=0), trial)
            trial_value = _value(sub, sub_codec, trial, sub_barrier)
            outside = ~torch.isfinite(trial_value)
            if bool(outside.any()):     # back into the domain along the box multipliers
                trial[outside] = sub_codec.select(outside).encode(repair(
                    sub.select(outside), project(sub.select(outside), sub_codec.select(
                        outside).decode(trial[outside]), floor[rows][outside])))
                trial_value[outside] = _value(sub.select(outside), sub_codec.select(outside),
                                              trial[outside], None if sub_barrier is None
                                              else sub_barrier[outside])
            decrease = (grad[rows] * (trial - point[rows])).sum(-1)
            good = torch.isfinite(trial_value) & (trial_value <= value[rows] + 1e-4 * decrease)
            new_point[rows[good]], new_value[rows[good]] = trial[good], trial_value[good]
            searching[rows[good]] = False
            size[rows[~good]] *= 0.3
        new_grad = grad.clone()
        rows = torch.nonzero(new_value < value).flatten()
        if len(rows):
            _, new_grad[rows] = _value_and_grad(rel.select(rows), codec.select(rows),
                                                new_point[rows], None if barrier is None
                                                else barrier[rows])
        moved = new_value < value
        strikes = torch.where(moved, torch.zeros_like(strikes), strikes + 1)
        slow = (value - new_value) <= STALL * (1 + value.abs())
        stalled = torch.where(slow, stalled + 1, torch.zeros_like(stalled))
        strikes = torch.where(stalled >= 5, torch.full_like(strikes, 2), strikes)
        if not bool((strikes < 2).any()):
            break
        stuck = (strikes > 0)[:, None]     # forget the curvature pairs of a failed search
        steps = [torch.where(stuck, torch.zeros_like(t), t) for t in steps]
        changes = [torch.where(stuck, torch.zeros_like(t), t) for t in changes]
        s_k, y_k = new_point - point, new_grad - grad
        curvature = (s_k * y_k).sum(-1) > 1e-12 * (y_k * y_k).sum(-1)
        keep = (moved & curvature)[:, None]
        steps.append(torch.where(keep, s_k, torch.zeros_like(s_k)))
        changes.append(torch.where(keep, y_k, torch.zeros_like(y_k)))
        if len(steps) > memory:
            steps.pop(0)
            changes.pop(0)
        point, value, grad = new_point, new_value, new_grad
    return point


class _Codec:
    """Multipliers <-> one flat search vector per problem ``(B, P)``."""

    def __init__(self, rel: Relaxation, start: Multipliers) -> None:
        count = rel.alive.sum(-1, keepdim=True).clamp(min=1)
        coefficient = ((start.pos + start.pre + start.up).sum(-1, keepdim=True) / count
                       ).clamp(min=1e-9)
        width = (rel.upper * rel.alive).sum(-1, keepdim=True) / count
        self.scale = {"pos": coefficient, "pre": coefficient, "up": coefficient,
                      "quad": coefficient / width.clamp(min=1e-6)}
        self.tiny = 1e-6 * coefficient
        self.sizes = [t.shape[1] for t in start.tensors()]
        self.names = list(GROUPS) + ["box_in"]
        self.bounded = torch.cat([torch.full((size,), name not in LOGGED | SIGNED)
                                  for name, size in zip(self.names, self.sizes)])

    def select(self, rows: torch.Tensor) -> "_Codec":
        """The codec of the problems ``rows`` (an index or mask tensor)."""
        return self._with(lambda t: t[rows])

    def to(self, dtype: torch.dtype) -> "_Codec":
        return self._with(lambda t: t.to(dtype))

    def _with(self, change) -> "_Codec":
        out = object.__new__(_Codec)
        out.scale = {name: change(value) for name, value in self.scale.items()}
        out.tiny, out.sizes, out.names, out.bounded = \
            change(self.tiny), self.sizes, self.names, self.bounded
        return out

    def encode(self, mult: Multipliers) -> torch.Tensor:
        parts = []
        for name, t in zip(self.names, mult.tensors()):
            parts.append(torch.log(torch.maximum(t, self.tiny)) if name in LOGGED else
                         t / self.scale[name])
        return torch.cat(parts, dim=1)

    def decode(self, point: torch.Tensor) -> Multipliers:
        parts, at = [], 0
        for name, size in zip(self.names, self.sizes):
            chunk = point[:, at:at + size]
            at += size
            parts.append(chunk.exp() if name in LOGGED else chunk * self.scale[name])
        return Multipliers(*parts)


def _two_loop(grad: torch.Tensor, steps: list[torch.Tensor], changes: list[torch.Tensor]
              ) -> torch.Tensor:
    """L-BFGS direction ``-H grad (B, P)`` from the stored pairs (zero pairs are skipped)."""
    q = grad.clone()
    alphas = []
    rhos = []
    for s_k, y_k in zip(reversed(steps), reversed(changes)):
        sy = (s_k * y_k).sum(-1)
        rho = torch.where(sy > 0, 1 / sy.clamp(min=torch.finfo(sy.dtype).tiny),
                          torch.zeros_like(sy))
        alpha = rho * (s_k * q).sum(-1)
        q = q - alpha[:, None] * y_k
        alphas.append(alpha)
        rhos.append(rho)
    if steps:
        s_k, y_k = steps[-1], changes[-1]
        yy = (y_k * y_k).sum(-1)
        gamma = torch.where(yy > 0, (s_k * y_k).sum(-1) / yy.clamp(
            min=torch.finfo(yy.dtype).tiny), torch.ones_like(yy))
        q = q * gamma[:, None]
    for (s_k, y_k), alpha, rho in zip(zip(steps, changes), reversed(alphas), reversed(rhos)):
        beta = rho * (y_k * q).sum(-1)
        q = q + (alpha - beta)[:, None] * s_k
    return -q


def _value(rel: Relaxation, codec: _Codec, point: torch.Tensor,
           barrier: torch.Tensor | None = None) -> torch.Tensor:
    """The dual value ``(B,)`` at a search point (``+inf`` off the domain)."""
    floor = torch.full((rel.size, 1), torch.finfo(point.dtype).tiny, dtype=point.dtype)
    with torch.no_grad():
        return dual_value(rel, project(rel, codec.decode(point), floor), barrier)[0]


def _value_and_grad(rel: Relaxation, codec: _Codec, point: torch.Tensor,
                    barrier: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The dual value ``(B,)`` at a search point (``+inf`` off the domain) and its gradient."""
    with torch.enable_grad():
        live = point.detach().requires_grad_(True)
        floor = torch.full((rel.size, 1), torch.finfo(point.dtype).tiny, dtype=point.dtype)
        value, ok = dual_value(rel, project(rel, codec.decode(live), floor), barrier)
        finite = torch.where(ok, value, torch.zeros_like(value))
        grad, = torch.autograd.grad(finite.sum(), live)
    return value.detach(), torch.nan_to_num(grad)
