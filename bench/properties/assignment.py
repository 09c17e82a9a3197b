"""The satisfying assignment of the VNN-LIB solver interface (section 5.3.1), written and
read back strictly.

After ``sat``, every declared variable in the query's order: a header line ``NAME TYPE
[d1,d2,...]`` (the declared type, dimensions without spaces), then its values one per
line, row-major. :func:`parse_assignment` refuses anything else with the reason (a
missing or reordered variable, a wrong shape or count, a value that is not a finite
number), so a solver's garbage is never taken for a counterexample.
"""

from __future__ import annotations

import math
import re

import numpy as np

from bench.errors import CertbenchError
from bench.properties.standard import Declaration

_HEADER = re.compile(r"^(\S+) (\S+) \[([0-9,]*)\]$")


class AssignmentError(CertbenchError, ValueError):
    """An assignment block that does not fit its query (one line: why)."""


def header(declaration: Declaration) -> str:
    return (f"{declaration.name} {declaration.element_type} "
            f"[{','.join(str(d) for d in declaration.shape)}]")


def assignment_text(declarations: tuple[Declaration, ...],
                    values: dict[str, np.ndarray]) -> str:
    """The block for ``values`` (per declared name, any shape with the declared size),
    numbers with ``repr`` (they read back exactly)."""
    lines = []
    for declaration in declarations:
        flat = np.asarray(values[declaration.name], dtype=np.float64).reshape(-1)
        if flat.size != declaration.size:
            raise AssignmentError(f"{declaration.name}: {flat.size} values for shape "
                                  f"{list(declaration.shape)}")
        lines.append(header(declaration))
        lines += [repr(float(v)) for v in flat]
    return "".join(line + "\n" for line in lines)


def parse_assignment(lines: list[str], declarations: tuple[Declaration, ...]
                     ) -> dict[str, np.ndarray]:
    """The values ``{name: (size,) float64}`` of an assignment block (the lines after
    ``sat``; blank lines at the end ignored). Raises :class:`AssignmentError`."""
    lines = [line.rstrip("\r") for line in lines]
    while lines and not lines[-1].strip():
        lines.pop()
    out: dict[str, np.ndarray] = {}
    position = 0
    for declaration in declarations:
        if position >= len(lines):
            raise AssignmentError(f"no values for {declaration.name} (the assignment ends "
                                  f"after {len(out)} of {len(declarations)} variables)")
        match = _HEADER.match(lines[position].strip())
        if match is None:
            raise AssignmentError(f"line {position + 2}: expected the header "
                                  f"{header(declaration)!r}, got {lines[position][:80]!r}")
        name, _, dims = match.groups()
        if name != declaration.name:
            raise AssignmentError(f"line {position + 2}: expected variable "
                                  f"{declaration.name}, got {name} (variables come in the "
                                  "query's order)")
        shape = tuple(int(d) for d in dims.split(",")) if dims else ()
        if shape != declaration.shape:
            raise AssignmentError(f"line {position + 2}: {name} has shape {list(shape)}, "
                                  f"declared {list(declaration.shape)}")
        block = lines[position + 1: position + 1 + declaration.size]
        if len(block) != declaration.size:
            raise AssignmentError(f"{name}: {len(block)} values, expected {declaration.size}")
        try:
            values = np.array([float(v) for v in block], dtype=np.float64)
        except ValueError:
            raise AssignmentError(f"{name}: a value is not a number") from None
        if not all(math.isfinite(v) for v in values):
            raise AssignmentError(f"{name}: a value is not finite")
        out[name] = values
        position += 1 + declaration.size
    if position != len(lines):
        raise AssignmentError(f"line {position + 2}: text after the last variable")
    return out
