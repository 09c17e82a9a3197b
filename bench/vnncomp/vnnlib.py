"""VNNLIB properties (the subset VNN-COMP uses) to and from :class:`bench.contract.Property`.

Read: ``(declare-const X_i Real)`` / ``(declare-const Y_j Real)``; ``(assert ...)`` with
atoms ``(<= a b)``, ``(>= a b)``, ``(< a b)``, ``(> a b)`` over linear terms (numbers,
variables, ``(+ ...)``, ``(- ...)``, ``(* number term)``), combined by ``and`` and ``or``.
Atoms over one input variable and a number bound the input box; atoms over outputs
describe the unsafe set. The conjunction of the asserts is brought into disjunctive
normal form; each disjunct is an input box and a group of rows ``c . Y >= d``, and the
disjuncts of one box make one property (:func:`read_vnnlib_cases`: a union of input
boxes, as ACAS Xu's property 6, is one property per box). Strict and non-strict
inequalities are the same here (the closure of the unsafe set, the conservative reading
for a verifier). Anything else is a one-line
:class:`VnnlibError` naming the line.

Write: the box as one ``<=`` and one ``>=`` per input, numbers printed with ``repr`` (so
they read back exactly), and the unsafe set as one ``(or (and ...) ...)``.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import torch

from bench.contract import Property
from bench.errors import CertbenchError
from models.files import atomic_write

MAX_GROUPS = 100_000
_VARIABLE = re.compile(r"^([XY])_(\d+)$")


class VnnlibError(CertbenchError, ValueError):
    """A VNNLIB file that cannot be read (one-line message with the file and line)."""


def _tokens(text: str, source: str) -> list[tuple[str, int]]:
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split(";", 1)[0]
        for token in re.findall(r"\(|\)|[^\s()]+", line):
            out.append((token, number))
    return out


def _parse(tokens: list[tuple[str, int]], source: str) -> list[tuple[object, int]]:
    """S-expressions, each with the line it starts on."""
    stack: list[list] = [[]]
    lines: list[int] = []
    for token, line in tokens:
        if token == "(":
            stack.append([])
            lines.append(line)
        elif token == ")":
            if len(stack) == 1:
                raise VnnlibError(f"{source}:{line}: unbalanced ')'")
            done = stack.pop()
            start = lines.pop()
            stack[-1].append((done, start))
        else:
            stack[-1].append((token, line))
    if len(stack) != 1:
        raise VnnlibError(f"{source}:{lines[-1]}: unbalanced '(' (never closed)")
    return stack[0]


def _linear(term, line: int, source: str, declared: set[str]) -> dict[str, float]:
    """A linear term as ``{variable or '': coefficient}`` ('' is the constant)."""
    value, _ = term if isinstance(term, tuple) else (term, line)
    if isinstance(value, str):
        if value in declared:
            return {value: 1.0}
        try:
            number = float(value)
        except ValueError:
            raise VnnlibError(f"{source}:{line}: unknown symbol {value!r}") from None
        if not math.isfinite(number):
            raise VnnlibError(f"{source}:{line}: {value!r} is not a finite number")
        return {"": number}
    if not value:
        raise VnnlibError(f"{source}:{line}: empty expression")
    head, args = value[0][0], value[1:]
    parts = [_linear(a, line, source, declared) for a in args]
    out: dict[str, float] = {}
    if head == "+" or (head == "-" and len(parts) == 1):
        sign = -1.0 if head == "-" else 1.0
        for part in parts:
            for k, v in part.items():
                out[k] = out.get(k, 0.0) + sign * v
        return out
    if head == "-":
        for index, part in enumerate(parts):
            for k, v in part.items():
                out[k] = out.get(k, 0.0) + (v if index == 0 else -v)
        return out
    if head == "*":
        constant = 1.0
        variable: dict[str, float] | None = None
        for part in parts:
            if set(part) <= {""}:
                constant *= part.get("", 0.0)
            elif variable is None:
                variable = part
            else:
                raise VnnlibError(f"{source}:{line}: a product of two variables is not linear")
        return {k: constant * v for k, v in (variable or {"": 1.0}).items()}
    raise VnnlibError(f"{source}:{line}: unsupported operator {head!r} in a term")


def _formula(expr, source: str, declared: set[str]) -> list[list[tuple[dict, int]]]:
    """A formula in DNF: a list of groups, each a list of ``(linear >= 0, line)`` atoms."""
    value, line = expr
    if not isinstance(value, list) or not value or not isinstance(value[0][0], str):
        raise VnnlibError(f"{source}:{line}: expected a comparison, 'and' or 'or'")
    head, args = value[0][0], value[1:]
    if head in ("<=", ">=", "<", ">"):
        if len(args) != 2:
            raise VnnlibError(f"{source}:{line}: {head} takes two arguments")
        left, right = (_linear(a, line, source, declared) for a in args)
        difference = dict(left)
        for k, v in right.items():
            difference[k] = difference.get(k, 0.0) - v
        if head in ("<=", "<"):
            difference = {k: -v for k, v in difference.items()}
        return [[(difference, line)]]
    if head in ("and", "or") and not args:
        raise VnnlibError(f"{source}:{line}: '{head}' with nothing to combine")
    if head == "and":
        groups: list[list] = [[]]
        for arg in args:
            groups = [g + h for g, h in itertools.product(groups, _formula(arg, source,
                                                                            declared))]
            if len(groups) > MAX_GROUPS:
                raise VnnlibError(f"{source}:{line}: more than {MAX_GROUPS} disjuncts")
        return groups
    if head == "or":
        return [g for arg in args for g in _formula(arg, source, declared)]
    raise VnnlibError(f"{source}:{line}: unsupported operator {head!r}")


def read_vnnlib(path: Path | str, *, num_inputs: int | None = None,
                num_outputs: int | None = None, text: str | None = None) -> Property:
    """Read a VNNLIB file into a :class:`Property` (float64), checking the variable counts
    against the network's when they are given. A file whose input set is a union of
    boxes is a one-line error here; :func:`read_vnnlib_cases` reads it."""
    cases = read_vnnlib_cases(path, num_inputs=num_inputs, num_outputs=num_outputs,
                              text=text)
    if len(cases) != 1:
        raise VnnlibError(f"{path}: the input set is a union of {len(cases)} boxes; this "
                          "reader takes one box (bench vnncomp takes unions)")
    return cases[0]


def read_vnnlib_cases(path: Path | str, *, num_inputs: int | None = None,
                      num_outputs: int | None = None, text: str | None = None
                      ) -> list[Property]:
    """Read a VNNLIB file as one :class:`Property` per input box: the asserts' conjunction
    in disjunctive normal form, each disjunct an input box (its bounds on ``X_i``) and an
    unsafe group (its rows on ``Y_j``), disjuncts of the same box gathered into one
    property. The file's property holds iff every returned property holds (a file with
    one box, as most, gives one). ACAS Xu's property 6 (two boxes) gives two."""
    source = str(path)
    if text is None:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise VnnlibError(f"{source}: cannot read ({exc})") from None
    commands = _parse(_tokens(text, source), source)
    inputs: dict[int, str] = {}
    outputs: dict[int, str] = {}
    conjunction: list[list] = [[]]          # the asserts so far, in DNF
    for command, line in commands:
        if not isinstance(command, list) or not command:
            raise VnnlibError(f"{source}:{line}: expected a command in parentheses")
        head = command[0][0]
        if head == "declare-const":
            if len(command) != 3 or command[2][0] != "Real":
                raise VnnlibError(f"{source}:{line}: expected (declare-const NAME Real)")
            name = command[1][0]
            match = _VARIABLE.match(name) if isinstance(name, str) else None
            if match is None:
                raise VnnlibError(f"{source}:{line}: variables are X_i or Y_j, got {name!r}")
            (inputs if match.group(1) == "X" else outputs)[int(match.group(2))] = name
        elif head == "assert":
            if len(command) != 2:
                raise VnnlibError(f"{source}:{line}: assert takes one formula")
            declared = set(inputs.values()) | set(outputs.values())
            dnf = _formula(command[1], source, declared)
            conjunction = [g + h for g, h in itertools.product(conjunction, dnf)]
            if len(conjunction) > MAX_GROUPS:
                raise VnnlibError(f"{source}:{line}: more than {MAX_GROUPS} disjuncts")
        else:
            raise VnnlibError(f"{source}:{line}: unsupported command {head!r}")
    boxes: dict[tuple, tuple[dict, dict, list[list]]] = {}
    for disjunct in conjunction:
        lower: dict[str, float] = {}
        upper: dict[str, float] = {}
        rows = []
        for atom, atom_line in disjunct:
            if any(k.startswith("X_") for k in atom):
                _bound(atom, atom_line, source, lower, upper)
            else:
                rows.append((atom, atom_line))
        key = (tuple(sorted(lower.items())), tuple(sorted(upper.items())))
        boxes.setdefault(key, (lower, upper, []))[2].append(rows)
    return [_assemble(source, inputs, outputs, lower, upper, groups, num_inputs, num_outputs)
            for lower, upper, groups in boxes.values()]


def _bound(atom: dict[str, float], line: int, source: str, lower: dict, upper: dict) -> None:
    """``a X_i + b >= 0`` as a bound on ``X_i``."""
    variables = [k for k in atom if k and atom[k] != 0.0]
    if len(variables) != 1 or not variables[0].startswith("X_"):
        raise VnnlibError(f"{source}:{line}: an input constraint must bound one input "
                          "variable by a number")
    name = variables[0]
    value = -atom.get("", 0.0) / atom[name] + 0.0       # + 0.0: no -0.0
    if atom[name] > 0:
        lower[name] = max(lower.get(name, -float("inf")), value)
    else:
        upper[name] = min(upper.get(name, float("inf")), value)


def _assemble(source, inputs, outputs, lower, upper, unsafe, num_inputs, num_outputs
              ) -> Property:
    for kind, found, wanted in (("input", inputs, num_inputs), ("output", outputs, num_outputs)):
        if sorted(found) != list(range(len(found))):
            raise VnnlibError(f"{source}: {kind} variables are not numbered 0..{len(found) - 1}")
        if wanted is not None and len(found) != wanted:
            raise VnnlibError(f"{source}: declares {len(found)} {kind}s but the network has "
                              f"{wanted}")
    if not inputs or not outputs:
        raise VnnlibError(f"{source}: declares no input or no output variable")
    lo = torch.tensor([lower.get(inputs[i], -float("inf")) for i in range(len(inputs))],
                      dtype=torch.float64)
    hi = torch.tensor([upper.get(inputs[i], float("inf")) for i in range(len(inputs))],
                      dtype=torch.float64)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        missing = int((~(torch.isfinite(lo) & torch.isfinite(hi))).nonzero()[0])
        raise VnnlibError(f"{source}: input X_{missing} has no lower or no upper bound")
    if (lo > hi).any():
        bad = int((lo > hi).nonzero()[0])
        raise VnnlibError(f"{source}: input X_{bad} has lower bound {float(lo[bad])!r} above "
                          f"its upper bound {float(hi[bad])!r}")
    if not unsafe or any(not group for group in unsafe):
        raise VnnlibError(f"{source}: no output constraint (nothing to verify)")
    groups = []
    index = {outputs[j]: j for j in range(len(outputs))}
    for group in unsafe:
        matrix = torch.zeros(len(group), len(outputs), dtype=torch.float64)
        offset = torch.zeros(len(group), dtype=torch.float64)
        for row, (atom, line) in enumerate(group):
            for name, coefficient in atom.items():
                if name == "":
                    offset[row] = -coefficient
                elif name in index:
                    matrix[row, index[name]] = coefficient
                else:
                    raise VnnlibError(f"{source}:{line}: mixes input and output variables")
        groups.append((matrix, offset))
    return Property(lo, hi, tuple(groups))


def vnnlib_text(prop: Property) -> str:
    """The property as VNNLIB text that :func:`read_vnnlib` reads back exactly."""
    lines = [f"(declare-const X_{i} Real)" for i in range(prop.num_inputs)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(prop.num_outputs)]
    for i in range(prop.num_inputs):
        lines.append(f"(assert (<= X_{i} {float(prop.hi[i])!r}))")
        lines.append(f"(assert (>= X_{i} {float(prop.lo[i])!r}))")

    def row_text(coefficients: torch.Tensor, bound: float) -> str:
        terms = [f"(* {float(c)!r} Y_{j})" for j, c in enumerate(coefficients.tolist()) if c]
        return f"(>= (+ {' '.join(terms)}) {bound!r})" if terms else f"(>= 0.0 {bound!r})"
    groups = [f"(and {' '.join(row_text(m[r], float(d[r])) for r in range(len(d)))})"
              for m, d in prop.groups]
    lines.append(f"(assert (or {' '.join(groups)}))")
    return "\n".join(lines) + "\n"


def write_vnnlib(prop: Property, path: Path) -> Path:
    text = vnnlib_text(prop).encode()
    return atomic_write(Path(path), lambda handle: handle.write(text))
