"""From a query in disjunctive normal form to :class:`bench.contract.Property` cases, for
both dialects (:mod:`bench.properties.legacy`, :mod:`bench.properties.standard`).

An *atom* is ``({key: coefficient}, line)`` meaning ``sum coefficient * var >= 0`` with
``key`` ``("X", i)`` (input ``i``, flat row-major), ``("Y", j)`` (output ``j``) or ``""``
(the constant). A *disjunct* is a list of atoms (their conjunction); the query is the
disjunction of its disjuncts. Atoms over one input and a constant bound the input box;
atoms over outputs only are rows of the unsafe set ``C Y >= d``. The disjuncts of one box
make one property (a union of boxes, as ACAS Xu's property 6, gives one per box); the
query holds iff every case holds.
"""

from __future__ import annotations

import torch

from bench.contract import Property
from bench.errors import CertbenchError

MAX_GROUPS = 100_000

Atom = tuple[dict, int]


class VnnlibError(CertbenchError, ValueError):
    """A VNN-LIB file that cannot be read (one-line message with the file and line)."""


def conjoin(left: list[list[Atom]], right: list[list[Atom]], where: str) -> list[list[Atom]]:
    """``left and right`` for two formulas in DNF (refused past :data:`MAX_GROUPS`)."""
    out = [g + h for g in left for h in right]
    if len(out) > MAX_GROUPS:
        raise VnnlibError(f"{where}: more than {MAX_GROUPS} disjuncts")
    return out


def _bound(atom: dict, line: int, source: str, lower: dict, upper: dict) -> None:
    """``a x_i + b >= 0`` as a bound on input ``i``."""
    variables = [k for k in atom if k and atom[k] != 0.0]
    if len(variables) != 1 or variables[0][0] != "X":
        raise VnnlibError(f"{source}:{line}: an input constraint must bound one input "
                          "variable by a number")
    index = variables[0][1]
    value = -atom.get("", 0.0) / atom[variables[0]] + 0.0       # + 0.0: no -0.0
    if atom[variables[0]] > 0:
        lower[index] = max(lower.get(index, -float("inf")), value)
    else:
        upper[index] = min(upper.get(index, float("inf")), value)


def assemble_cases(source: str, disjuncts: list[list[Atom]], num_inputs: int,
                   num_outputs: int, label=lambda i: f"X_{i}") -> list[Property]:
    """One :class:`Property` (float64) per distinct input box of ``disjuncts``, over
    ``num_inputs`` inputs and ``num_outputs`` outputs; ``label(i)`` names input ``i`` in
    messages. An atom mixing inputs and outputs, an input without both bounds, an empty
    box or a disjunct without an output row is a :class:`VnnlibError`."""
    boxes: dict[tuple, tuple[dict, dict, list]] = {}
    for disjunct in disjuncts:
        lower: dict[int, float] = {}
        upper: dict[int, float] = {}
        rows = []
        for atom, line in disjunct:
            kinds = {k[0] for k in atom if k and atom[k] != 0.0}
            if kinds == {"X", "Y"}:
                raise VnnlibError(f"{source}:{line}: mixes input and output variables")
            if "X" in kinds:
                _bound(atom, line, source, lower, upper)
            else:
                rows.append((atom, line))
        key = (tuple(sorted(lower.items())), tuple(sorted(upper.items())))
        boxes.setdefault(key, (lower, upper, []))[2].append(rows)
    if not num_inputs or not num_outputs:
        raise VnnlibError(f"{source}: declares no input or no output variable")
    return [_case(source, lower, upper, groups, num_inputs, num_outputs, label)
            for lower, upper, groups in boxes.values()]


def _case(source: str, lower: dict, upper: dict, unsafe: list, num_inputs: int,
          num_outputs: int, label) -> Property:
    lo = torch.tensor([lower.get(i, -float("inf")) for i in range(num_inputs)],
                      dtype=torch.float64)
    hi = torch.tensor([upper.get(i, float("inf")) for i in range(num_inputs)],
                      dtype=torch.float64)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        missing = int((~(torch.isfinite(lo) & torch.isfinite(hi))).nonzero()[0])
        raise VnnlibError(f"{source}: input {label(missing)} has no lower or no upper bound")
    if (lo > hi).any():
        bad = int((lo > hi).nonzero()[0])
        raise VnnlibError(f"{source}: input {label(bad)} has lower bound {float(lo[bad])!r} "
                          f"above its upper bound {float(hi[bad])!r}")
    if not unsafe or any(not group for group in unsafe):
        raise VnnlibError(f"{source}: no output constraint (nothing to verify)")
    groups = []
    for group in unsafe:
        matrix = torch.zeros(len(group), num_outputs, dtype=torch.float64)
        offset = torch.zeros(len(group), dtype=torch.float64)
        for row, (atom, _) in enumerate(group):
            for key, coefficient in atom.items():
                if key == "":
                    offset[row] = -coefficient
                else:
                    matrix[row, key[1]] = coefficient
        groups.append((matrix, offset))
    return Property(lo, hi, tuple(groups))
