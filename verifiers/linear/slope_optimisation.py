"""Optimised linear bounds: alpha-CROWN slopes and beta-CROWN split multipliers.

Every lower ReLU slope in ``[0, 1]`` gives a sound upper bound
(:func:`verifiers.linear.propagation.backward_upper`), and so does every multiplier
``beta >= 0`` of a split constraint ``sigma * zhat >= 0``. alpha-CROWN (Xu et al.,
ICLR 2021) treats the slopes, one per unit *and* specification row, as parameters and
minimises the bound by projected gradient steps; beta-CROWN (Wang et al., NeurIPS 2021)
adds the split multipliers of a branch-and-bound subdomain.

The search runs in float32 (speed); the bound returned is re-evaluated once in float64
with the best parameters found per row, so its soundness never depends on the search.
Shapes: ``N`` problems (samples or subdomains), ``S`` specification rows, ``m_k`` units
of hidden layer ``k``. Every bound here is an *upper* bound on ``spec . g(x)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from verifiers.linear.propagation import (
    Bounds,
    backward_upper,
    crown_slope,
    fixed_relaxation,
    interval_bounds,
    projected,
)

LR_SLOPES = 0.1
LR_BETAS = 0.05


@dataclass
class Optimised:
    """The outcome of :func:`optimise_upper`.

    ``upper (N, S)`` float64, sound; ``slopes``/``betas`` per hidden layer
    ``(N, S, m_k)`` float32, the best found per row (warm starts for children);
    ``coefs`` per hidden layer, the float64 coefficients on ``z_k`` ``(N, S, m_k)`` of
    the final pass (branching scores), and ``input_coef (N, S, d)``.
    """

    upper: torch.Tensor
    slopes: list[torch.Tensor]
    betas: list[torch.Tensor] | None
    coefs: list[torch.Tensor]
    input_coef: torch.Tensor


def adam_step(tensor: torch.Tensor, grad: torch.Tensor, first: torch.Tensor,
              second: torch.Tensor, rate: float, step: int, betas=(0.9, 0.999),
              eps: float = 1e-8) -> None:
    """One Adam step (Kingma & Ba 2015) in place; ``first``/``second`` are its moments.
    (``torch.optim.Adam`` would cost a multi-second import of ``torch._dynamo``.)"""
    first.mul_(betas[0]).add_(grad, alpha=1 - betas[0])
    second.mul_(betas[1]).addcmul_(grad, grad, value=1 - betas[1])
    scale = rate * (1 - betas[1] ** step) ** 0.5 / (1 - betas[0] ** step)
    tensor.sub_(scale * first / (second.sqrt() + eps))


def _split_coef(betas: list[torch.Tensor] | None, sigmas: list[torch.Tensor] | None
                ) -> list[torch.Tensor | None] | None:
    if betas is None or sigmas is None:
        return None
    return [projected(beta, 0) * sigma.to(beta.dtype).unsqueeze(1)
            for beta, sigma in zip(betas, sigmas)]


def _cast(params, bounds: Bounds, dtype: torch.dtype):
    return ([(w.to(dtype), b.to(dtype)) for w, b in params],
            [(lo.to(dtype), hi.to(dtype)) for lo, hi in bounds])


def optimise_upper(params, bounds: Bounds, spec: torch.Tensor, lo: torch.Tensor,
                   hi: torch.Tensor, *, iterations: int,
                   slopes: list[torch.Tensor] | None = None,
                   sigmas: list[torch.Tensor] | None = None,
                   betas: list[torch.Tensor] | None = None,
                   settle_below: torch.Tensor | None = None) -> Optimised:
    """Minimise the upper bound on ``spec (N, S, out) . g(x)`` over the box ``lo, hi
    (N, d)`` by the lower slopes (and, with ``sigmas``, the split multipliers).

    ``params``/``bounds`` as for ``backward_upper`` (float64); ``slopes`` warm-start
    the search (default: CROWN's); ``sigmas`` per hidden layer ``(N, m_k)`` in
    ``{-1, 0, +1}`` mark split units (``+1``: ``zhat >= 0`` imposed, ``-1``:
    ``zhat <= 0``), whose ``bounds`` must already be clamped to the split; ``betas``
    warm-start their multipliers (default zero). ``iterations = 0`` evaluates the start.
    ``settle_below (N, S)``: a problem whose search bound on some row falls below its
    entry there is settled (a subdomain that closes) and its search stops; once an
    eighth of the problems searched are settled, the search goes on with the others
    only. The returned bound is the float64 one, whatever the search did.
    """
    n, rows = spec.shape[:2]
    params32, bounds32 = _cast(params, bounds, torch.float32)
    spec32, lo32, hi32 = spec.float(), lo.float(), hi.float()
    if slopes is None:
        slopes = [crown_slope(low, up).float().unsqueeze(1).expand(n, rows, -1)
                  for low, up in bounds32]
    free = [slope.detach().float().expand(n, rows, -1).clone().requires_grad_(True)
            for slope in slopes]
    multipliers = None
    if sigmas is not None:
        starts = betas if betas is not None else [
            torch.zeros(n, rows, sigma.shape[1], device=lo.device) for sigma in sigmas]
        multipliers = [beta.detach().float().clone().requires_grad_(True) for beta in starts]
    best_value = torch.full((n, rows), torch.inf, device=lo.device)
    best_slopes = [slope.detach().clone() for slope in free]
    best_betas = None if multipliers is None else [b.detach().clone() for b in multipliers]
    rates = [LR_SLOPES] * len(free) + [LR_BETAS] * len(multipliers or [])
    slope_count = len(free)
    tensors = free + (multipliers or [])
    moments = [(torch.zeros_like(t), torch.zeros_like(t)) for t in tensors]
    live = torch.arange(n, device=lo.device)       # the problems still searched
    sigmas32 = None if sigmas is None else [sigma.float() for sigma in sigmas]
    problem = (fixed_relaxation(bounds32), spec32, lo32, hi32, sigmas32)
    found = None     # full-size bests, once the search goes on with fewer problems
    for step in range(iterations + 1):
        now_relaxed, now_spec, now_lo, now_hi, now_sigmas = problem
        free, multipliers = tensors[:slope_count], tensors[slope_count:] or None
        with torch.enable_grad():
            value = backward_upper(params32, bounds32, now_spec, now_lo, now_hi,
                                   slopes=free, relaxed=now_relaxed,
                                   split_coef=_split_coef(multipliers, now_sigmas))
            grads = (torch.autograd.grad(value.sum(), tensors, allow_unused=True)
                     if step < iterations else [])
        with torch.no_grad():
            better = value.detach() < best_value
            best_value = torch.where(better, value.detach(), best_value)
            mask = better.unsqueeze(-1)
            for keep, now in zip(best_slopes, free):
                keep.copy_(torch.where(mask, now.clamp(0, 1), keep))
            if best_betas is not None:
                for keep, now in zip(best_betas, multipliers):
                    keep.copy_(torch.where(mask, now.clamp(min=0), keep))
            for tensor, grad, rate, (first, second) in zip(tensors, grads, rates, moments):
                if grad is not None:
                    adam_step(tensor, grad, first, second, rate, step + 1)
            for slope in free:
                slope.clamp_(0, 1)
            for beta in multipliers or []:
                beta.clamp_(min=0)
            if settle_below is None or step == iterations:
                continue
            open_ = ~(best_value < settle_below[live]).any(dim=1)
            if 8 * int((~open_).sum()) < len(live):
                continue
            found = _store(found, live, best_value, best_slopes, best_betas)
            if not bool(open_.any()):
                break
            keep = torch.nonzero(open_).flatten()
            live = live[keep]
            best_value = best_value[keep]
            best_slopes = [best[keep] for best in best_slopes]
            best_betas = None if best_betas is None else [best[keep] for best in best_betas]
            problem = _restrict(problem, keep)
            tensors = [t.detach()[keep].requires_grad_(True) for t in tensors]
            moments = [(first[keep], second[keep]) for first, second in moments]
    _, best_slopes, best_betas = _store(found, live, best_value, best_slopes, best_betas)
    record: list[torch.Tensor] = []
    with torch.no_grad():
        upper = backward_upper(params, bounds, spec, lo, hi,
                               slopes=[s.to(lo.dtype) for s in best_slopes],
                               split_coef=_split_coef(
                                   None if best_betas is None else
                                   [b.to(lo.dtype) for b in best_betas], sigmas),
                               record=record)
    coefs = record[:-1][::-1]
    return Optimised(upper, best_slopes, best_betas, coefs, record[-1])


def _store(found, live: torch.Tensor, value: torch.Tensor, slopes: list[torch.Tensor],
           betas: list[torch.Tensor] | None):
    """The best ``(value, slopes, betas)`` of all problems: those of the problems ``live``
    written into ``found`` (full size), or, before the search first narrowed (``found``
    None, ``live`` all problems), these themselves. Writing ``found`` into itself (the
    search stopped where it was stored) changes nothing."""
    if found is None:
        return value, slopes, betas
    if found[0] is value:
        return found
    found_value, found_slopes, found_betas = found
    found_value[live] = value
    for into, part in zip(found_slopes, slopes):
        into[live] = part
    for into, part in zip(found_betas or [], betas or []):
        into[live] = part
    return found


def _restrict(problem, keep: torch.Tensor):
    """The problems ``keep`` of ``(relaxed, spec, lo, hi, sigmas)`` (each indexed on its
    first axis)."""
    relaxed, spec, lo, hi, sigmas = problem
    return ([tuple(part[keep] for part in layer) for layer in relaxed], spec[keep],
            lo[keep], hi[keep], None if sigmas is None else [sigma[keep] for sigma in sigmas])


def optimised_layer_bounds(params, lo: torch.Tensor, hi: torch.Tensor, *,
                           iterations: int, tighten_with: Bounds | None = None) -> Bounds:
    """Pre-activation bounds ``[(l, u) (N, m_k)]`` of every hidden layer, each layer's
    from the ``±I`` specification with slopes optimised for it (alpha-CROWN's
    intermediate bounds), intersected with interval and CROWN bounds and, layer by
    layer before the next is bounded, with ``tighten_with`` (any sound bounds). float64.
    """
    intervals = interval_bounds(params, lo, hi)
    bounds: Bounds = []
    for k in range(len(params) - 1):
        if k == 0:    # affine in the box: the interval is exact
            bounds.append(intervals[0])
            continue
        width = params[k][0].shape[0]
        eye = torch.eye(width, dtype=lo.dtype, device=lo.device)
        eye = eye.expand(lo.shape[0], width, width)
        spec = torch.cat([eye, -eye], dim=1)
        with torch.no_grad():
            both = backward_upper(params[:k + 1], bounds, spec, lo, hi, crown_slope)
        if iterations > 0:
            both = torch.minimum(both, optimise_upper(params[:k + 1], bounds, spec, lo, hi,
                                                      iterations=iterations).upper)
        lower = torch.maximum(-both[:, width:], intervals[k][0])
        upper = torch.minimum(both[:, :width], intervals[k][1])
        if tighten_with is not None:
            lower = torch.maximum(lower, tighten_with[k][0])
            upper = torch.minimum(upper, tighten_with[k][1])
        bounds.append((lower, upper))
    return bounds
