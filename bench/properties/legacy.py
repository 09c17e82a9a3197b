"""The VNN-LIB dialect of VNN-COMP 2021-2024 (before VNN-LIB 2.0), read by our own parser
and written. The standard's parser (``vnnlib``) reads only 2.0 (a file of this dialect is
a syntax error at its first ``declare-const``), so this one stays for the competition's
files.

Read: ``(declare-const X_i Real)`` / ``(declare-const Y_j Real)``; ``(assert ...)`` with
atoms ``(<= a b)``, ``(>= a b)``, ``(< a b)``, ``(> a b)`` over linear terms (numbers,
variables, ``(+ ...)``, ``(- ...)``, ``(* number term)``), combined by ``and`` and ``or``.
Atoms over one input variable and a number bound the input box; atoms over outputs
describe the unsafe set. The conjunction of the asserts is brought into disjunctive
normal form; each disjunct is an input box and a group of rows ``c . Y >= d``, and the
disjuncts of one box make one property (:mod:`bench.properties.cases`: a union of input
boxes, as ACAS Xu's property 6, is one property per box). Strict and non-strict
inequalities are the same here (the closure of the unsafe set, the conservative reading
for a verifier). Anything else is a one-line
:class:`VnnlibError` naming the line.

Write: the box as one ``<=`` and one ``>=`` per input, numbers printed with ``repr`` (so
they read back exactly), and the unsafe set as one ``(or (and ...) ...)``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from bench.contract import Property
from bench.properties.cases import VnnlibError, assemble_cases, conjoin
from models.files import atomic_write

_VARIABLE = re.compile(r"^([XY])_(\d+)$")


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
            groups = conjoin(groups, _formula(arg, source, declared), f"{source}:{line}")
        return groups
    if head == "or":
        return [g for arg in args for g in _formula(arg, source, declared)]
    raise VnnlibError(f"{source}:{line}: unsupported operator {head!r}")


def read_legacy(text: str, source: str, *, num_inputs: int | None = None,
                num_outputs: int | None = None) -> list[Property]:
    """The cases of a file in this dialect (:func:`bench.properties.cases.assemble_cases`),
    checking the variable counts against the network's when they are given."""
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
            conjunction = conjoin(conjunction, _formula(command[1], source, declared),
                                  f"{source}:{line}")
        else:
            raise VnnlibError(f"{source}:{line}: unsupported command {head!r}")
    for kind, found, wanted in (("input", inputs, num_inputs), ("output", outputs, num_outputs)):
        if sorted(found) != list(range(len(found))):
            raise VnnlibError(f"{source}: {kind} variables are not numbered 0..{len(found) - 1}")
        if wanted is not None and found and len(found) != wanted:
            raise VnnlibError(f"{source}: declares {len(found)} {kind}s but the network has "
                              f"{wanted}")
    disjuncts = [[({_key(k): v for k, v in atom.items()}, line) for atom, line in disjunct]
                 for disjunct in conjunction]
    return assemble_cases(source, disjuncts, len(inputs), len(outputs))


def _key(name: str) -> str | tuple[str, int]:
    """``X_3`` as ``("X", 3)``; the constant ``""`` stays."""
    match = _VARIABLE.match(name)
    return (match.group(1), int(match.group(2))) if match else name


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
