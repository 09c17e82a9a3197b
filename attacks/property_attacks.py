"""Attacks on a property's unsafe groups inside its input box (a
:class:`bench.contract.Property`, any network with a float64 forward pass).

Each maximises, per start, its group's **violation** ``v_g(x) = min_i (c_i . f(x) - d_i)``
(``>= 0``: the point satisfies every row of the group, a counterexample), each group
from the box's centre and random starts, all groups in one batch:

* :func:`attack_property`: fixed-step signed-gradient ascent (the complete search's
  first step: cheap, weak on narrow regions);
* :func:`apgd_property`: APGD (:func:`attacks.apgd.apgd_in_box`, the implementation
  ``apgd-ce``/``apgd-dlr`` use in ``bench run``) on the violation (``loss="margin"``) or
  on the violation divided by the outputs' DLR scale ``z_(1) - (z_(3) + z_(4)) / 2``
  (:func:`attacks.apgd.dlr_scale`, targeted APGD-DLR's; ``loss="dlr"``: invariant to
  scalings and shifts of the outputs; for a robustness property each group is one
  target class);
* :func:`square_property`: Square's random search over the box's vertices
  (:func:`attacks.square.square_search`, the implementation of ``bench run``'s
  ``square``), which reads outputs only;
* :func:`strongest_attack`: all of them in turn, the VNN-COMP portfolio's attack;
* :func:`apgd_from`: APGD on one group from given starts in given boxes (branch and
  bound's attacks on the maximisers of its most promising subdomains).

The searches run on a float32 copy of the network (:func:`search_twin`); a returned
point is the one of largest float64 violation among those the search ends on, and the
violation returned is its float64 one; the point lies in the box.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch

from attacks.apgd import apgd_in_box, dlr_scale
from attacks.square import image_layout, square_search
from bench.contract import Property, signed_ascent, split_rows
from models import MLP
from models.graph import GraphNet

Violation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# strongest_attack's budget, per group: starts and steps of each gradient attack, and
# Square's queries (from the centre-free stripes of the box's vertices).
STRONG_RESTARTS = 16
STRONG_STEPS = 100
SQUARE_QUERIES = 200
SQUARE_P_INIT = 0.3
MIN_STEPS = 10           # the fewest steps (and queries) a budget shrinks an attack to
ATTACK_MEMORY = 2 * 2 ** 30   # bytes the starts of one attack may take, about
BYTES_PER_FLOAT = 32          # per number of a forward pass: float64, kept for autograd,
                              # its gradient and APGD's copies


def search_twin(net64: torch.nn.Module) -> torch.nn.Module:
    """A float32 copy of a float64 network, for the attacks' gradient steps and queries
    (on convolutions several times faster than float64, whose transposed convolutions
    take torch's slow path); the points an attack returns are chosen, and their
    violations computed, by the float64 network."""
    if next(net64.parameters()).dtype != torch.float64:
        return net64
    twin = copy.deepcopy(net64).float()
    if isinstance(twin, GraphNet):
        twin.certificates = {}
    return twin


def group_violation(net64: torch.nn.Module, prop: Property, group_of_row: torch.Tensor
                    ) -> Callable[..., torch.Tensor]:
    """``violation(points (M, d), which (M,)) -> (M,)``: at each point, the violation
    of the group ``group_of_row[which]``; with ``dlr=True`` ``(2, M)``: the violation and
    the violation divided by :func:`dlr_scale` of the outputs (one forward pass). The
    points are cast to the network's dtype, the outputs to float64."""
    dtype = next(net64.parameters()).dtype
    rows, offsets, sizes = split_rows(prop)
    device = group_of_row.device
    owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(device)
    rows, offsets = rows.to(device, torch.float64), offsets.to(device, torch.float64)
    foreign = group_of_row[:, None] != owner[None, :]              # (P, R): not its rows

    def violation(points: torch.Tensor, which: torch.Tensor, dlr: bool = False
                  ) -> torch.Tensor:
        outputs = net64(points.to(dtype)).to(torch.float64)
        values = (outputs @ rows.T - offsets).masked_fill(foreign[which], torch.inf).amin(1)
        return torch.stack([values, values / dlr_scale(outputs)]) if dlr else values

    return violation


def activation_floats(net: torch.nn.Module) -> int:
    """Numbers a forward pass of one sample holds: every node's output on an operator
    graph, every layer's on an MLP (and the input)."""
    if isinstance(net, GraphNet):
        return sum(math.prod(node.shape) for node in net.nodes)
    assert isinstance(net, MLP)
    return net.input_dim + sum(layer.out_features for layer in net.linears)


def starts_that_fit(net: torch.nn.Module, starts: int, groups: int = 1) -> int:
    """``starts`` per group, or fewer (at least 1) so that ``groups`` times that many
    samples' forward and backward passes (about :data:`BYTES_PER_FLOAT` bytes per number
    a forward pass holds) stay within :data:`ATTACK_MEMORY` bytes: a large network gets
    fewer starts instead of exhausting the machine's memory."""
    per_start = activation_floats(net) * BYTES_PER_FLOAT * groups
    return max(1, min(starts, ATTACK_MEMORY // max(per_start, 1)))


def _starts(net64: torch.nn.Module, prop: Property, restarts: int, seed: int):
    """Per group the box's centre and ``restarts - 1`` uniform random points (fewer where
    they would not fit in memory, :func:`starts_that_fit`): ``(starts (P, d), lo (d,),
    hi (d,), search, violation)`` on the network's device, ``violation`` as
    :func:`group_violation` for start ``which``'s group and ``search`` the same on the
    network's :func:`search_twin`."""
    restarts = starts_that_fit(net64, max(restarts, 1), len(prop.groups))
    device = next(net64.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    lo, hi = prop.lo.to(torch.float64), prop.hi.to(torch.float64)
    groups = len(prop.groups)
    per_group = torch.cat([((lo + hi) / 2)[None], lo + (hi - lo) * torch.rand(
        max(restarts - 1, 0), len(lo), generator=generator, dtype=torch.float64)])
    starts = per_group.repeat(groups, 1).to(device)
    group_of_start = torch.arange(groups).repeat_interleave(len(per_group)).to(device)
    return (starts, lo.to(device), hi.to(device),
            group_violation(search_twin(net64), prop, group_of_start),
            group_violation(net64, prop, group_of_start))


def _best(violation: Violation, found: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The point of ``found (P, d)`` of largest violation (its own group's), float64."""
    with torch.no_grad():
        values = violation(found, torch.arange(len(found), device=found.device))
    best = int(values.argmax())
    return found[best], float(values[best])


def attack_property(net64: torch.nn.Module, prop: Property, *, restarts: int, steps: int,
                    seed: int = 0) -> tuple[torch.Tensor, float]:
    """The most violating point found in the box, ``(d,)`` float64, and its violation
    ``max_g v_g`` (``>= 0``: a counterexample by a float64 forward pass).

    Signed-gradient ascent (:func:`bench.contract.signed_ascent`) on each group's smallest
    row, from the box's centre and ``restarts - 1`` uniform random starts per group, all
    groups in one batch; step ``max(hi - lo) / 8``.
    """
    starts, lo, hi, search, violation = _starts(net64, prop, restarts, seed)
    everyone = torch.arange(len(starts), device=starts.device)
    step = float((hi - lo).max()) / 8 or 1e-3
    found = signed_ascent(lambda points: search(points, everyone), starts,
                          lo.expand_as(starts), hi.expand_as(starts), step=step, steps=steps,
                          keep_best=True)
    return _best(violation, found)


def _apgd(violation: Callable[..., torch.Tensor], starts: torch.Tensor, lo: torch.Tensor,
          hi: torch.Tensor, steps: int, dlr: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD from ``starts (P, d)`` in the boxes ``[lo, hi] (P, d)`` on the violation (or
    its DLR form, ``dlr``), first step the widest side of each box: per start the point
    of largest violation and that violation (float64)."""
    def objective(points: torch.Tensor, active: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        points = points.detach().requires_grad_(True)
        with torch.enable_grad():
            if dlr:
                value, loss = violation(points, active, True)
            else:
                value = loss = violation(points, active)
            grad, = torch.autograd.grad(loss.sum(), points)
        return loss.detach(), value.detach(), grad.detach()

    first = (hi - lo).amax(dim=1, keepdim=True).clamp(min=1e-3)
    return apgd_in_box(objective, starts, lo.clone(), hi.clone(), first, steps=steps)


def apgd_property(net64: torch.nn.Module, prop: Property, *, restarts: int, steps: int,
                  seed: int = 0, loss: str = "margin") -> tuple[torch.Tensor, float]:
    """As :func:`attack_property`, by APGD (momentum, step halved at checkpoints when the
    loss stalls, restarting from the best point) on each group's violation
    (``loss="margin"``) or on its DLR form (``loss="dlr"``, see the module doc), first
    step ``max(hi - lo)``; a start stops once it finds a counterexample."""
    if loss not in ("margin", "dlr"):
        raise ValueError(f"loss must be 'margin' or 'dlr', got {loss!r}")
    starts, lo, hi, search, violation = _starts(net64, prop, restarts, seed)
    found, _ = _apgd(search, starts, lo.expand_as(starts), hi.expand_as(starts), steps,
                     loss == "dlr")
    return _best(violation, found)


def square_property(net64: torch.nn.Module, prop: Property, *, restarts: int, queries: int,
                    seed: int = 0, p_init: float = SQUARE_P_INIT
                    ) -> tuple[torch.Tensor, float]:
    """As :func:`attack_property`, by Square's random search over the box's vertices
    (:func:`attacks.square.square_search`; windows on the image layout of ``d`` inputs
    when ``d`` is ``c s^2``, else runs of coordinates), ``restarts`` independent runs
    per group, ``queries`` forward passes each at most."""
    starts, lo, hi, search, violation = _starts(net64, prop, restarts, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    layout = image_layout(len(lo), "auto")
    found, _ = square_search(search, lo.expand_as(starts).clone(),
                             hi.expand_as(starts).clone(), queries=queries, p_init=p_init,
                             layout=layout, generator=generator)
    return _best(violation, found)


def affordable_steps(net64: torch.nn.Module, prop: Property, restarts: int, steps: int,
                     budget: float | None) -> int:
    """``steps``, or fewer (at least :data:`MIN_STEPS`) when one gradient step on every
    start, timed once, says that the attacks' steps would not fit in ``budget`` seconds
    (about 3.5 gradient attacks' worth: three of them and Square)."""
    if budget is None:
        return steps
    starts, _, _, search, _ = _starts(net64, prop, restarts, 0)
    began = time.perf_counter()
    points = starts.detach().requires_grad_(True)
    with torch.enable_grad():
        torch.autograd.grad(search(points, torch.arange(len(points),
                                                           device=points.device)).sum(),
                            points)
    per_step = time.perf_counter() - began
    return max(MIN_STEPS, min(steps, int(budget / (3.5 * max(per_step, 1e-9)))))


def strongest_attack(net64: torch.nn.Module, prop: Property, *, seed: int = 0,
                     restarts: int = STRONG_RESTARTS, steps: int = STRONG_STEPS,
                     queries: int = SQUARE_QUERIES, budget: float | None = None
                     ) -> tuple[torch.Tensor, float, str]:
    """Signed ascent, APGD on the violation, APGD on its DLR form, then Square, each
    per group with ``restarts`` starts (``steps`` steps; Square ``queries`` queries),
    stopping at the first counterexample: ``(point (d,), violation, name of the attack
    that found it)``, or the most violating point of all and ``"none"``. With ``budget``
    (seconds) the steps, and Square's queries with them, shrink to what a timed step says
    fits (:func:`affordable_steps`: a large network gets fewer steps, never fewer than
    :data:`MIN_STEPS`), and no attack starts once the budget is spent."""
    began = time.perf_counter()
    fitted = affordable_steps(net64, prop, restarts, steps, budget)
    if fitted < steps:
        steps, queries = fitted, max(MIN_STEPS, queries * fitted // steps)
    attempts: list[tuple[str, Callable[[], tuple[torch.Tensor, float]]]] = [
        ("ascent", lambda: attack_property(net64, prop, restarts=restarts, steps=steps,
                                           seed=seed)),
        ("apgd-margin", lambda: apgd_property(net64, prop, restarts=restarts, steps=steps,
                                              seed=seed)),
        ("apgd-dlr", lambda: apgd_property(net64, prop, restarts=restarts, steps=steps,
                                           seed=seed + 1, loss="dlr")),
        ("square", lambda: square_property(net64, prop, restarts=restarts, queries=queries,
                                           seed=seed)),
    ]
    best_point, best_value = None, -torch.inf
    for name, attempt in attempts:
        if budget is not None and best_point is not None \
                and time.perf_counter() - began > budget:
            break
        point, value = attempt()
        if value >= 0:
            return point, value, name
        if value > best_value:
            best_point, best_value = point, value
    assert best_point is not None
    return best_point, best_value, "none"


def apgd_from(net64: torch.nn.Module, rows: torch.Tensor, offsets: torch.Tensor,
              starts: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *, steps: int
              ) -> tuple[torch.Tensor, float]:
    """APGD on one group ``rows (S, K) . f(x) >= offsets (S,)`` from ``starts (P, d)``,
    each in its own box ``[lo, hi] (P, d)`` (a sub-box of the property's; only the first
    :func:`starts_that_fit` of them): the most violating point found ``(d,)`` and its
    float64 violation ``min_i (c_i . f - d_i)``."""
    keep = starts_that_fit(net64, len(starts))
    starts, lo, hi = starts[:keep], lo[:keep], hi[:keep]
    twin = search_twin(net64)
    dtype = next(twin.parameters()).dtype

    def search(points: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        return (twin(points.to(dtype)).to(torch.float64) @ rows.T - offsets).amin(dim=1)

    def violation(points: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        return (net64(points) @ rows.T - offsets).amin(dim=1)

    found, _ = _apgd(search, starts, lo, hi, steps, False)
    return _best(violation, found)
