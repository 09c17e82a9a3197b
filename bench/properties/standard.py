"""VNN-LIB 2.0 queries (the standard of vnnlib.org) to and from the property type.

Read with the standard's own parser (the ``vnnlib`` package: the grammar, scoping and
type checks, each assertion's disjunctive normal form and the linearisation of its
terms), then gathered into :class:`bench.contract.Property` cases by
:func:`bench.properties.cases.assemble_cases`. The package's own reachability transform
(``vnnlib.compat``) is not used: it reads each ``assert`` as a case of its own (a query
whose box and unsafe set are separate asserts comes out as two unrelated cases), where
the standard conjoins them.

What certbench verifies, in the standard's theories (chapter 4): one network (``SNET``),
one input and one output (``SIO``), no hidden node (``NH``), comparisons within one node
(``SNC``), inputs bounded by constants and outputs under linear constraints (``BND`` and
``OUTC``, and linear output constraints beyond them). Anything else is refused in one
line naming the construct: several networks, several inputs or outputs, hidden nodes,
``!=``, a product of variables, a linear constraint over several inputs, a comparison
between an input and an output. Strict and non-strict comparisons are read alike (the
closure of the unsafe set, the conservative reading for a verifier, as in the older
dialect); ``==`` is both.

Element types: the declared type of each variable is kept (:class:`Declaration`);
:mod:`bench.solver_cli` decides what to do with a type that is not ``real``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.contract import Property
from bench.properties.cases import Atom, VnnlibError, assemble_cases, conjoin

VERSION = "2.0"
HEADER = f"(vnnlib-version <{VERSION}>)"
_FIRST_FORM = re.compile(r"\A(?:\s|;[^\n]*\n?)*\(\s*vnnlib-version\b")

# the parser's element types (enum member names) in the standard's spelling
ELEMENT_TYPES = {
    "Real": "real", "F16": "float16", "F32": "float32", "F64": "float64",
    "BF16": "bfloat16", "F8E4M3FN": "float8e4m3fn", "F8E5M2": "float8e5m2",
    "F8E4M3FNUZ": "float8e4m3fnuz", "F8E5M2FNUZ": "float8e5m2fnuz", "F4E2M1": "float4e2m1",
    "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "C64": "complex64",
    "C128": "complex128", "Bool": "bool"}


@dataclass(frozen=True)
class Declaration:
    """One declared variable: ``kind`` "input" / "hidden" / "output", ``element_type`` in
    the standard's spelling (``real``, ``float32``, ...), ``shape`` as declared."""

    name: str
    kind: str
    element_type: str
    shape: tuple[int, ...]
    network: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass(frozen=True)
class Query:
    """A VNN-LIB 2.0 query certbench can verify: its one network's name, the input and
    output declarations (in the query's order) and the cases (one property per box)."""

    network: str
    declarations: tuple[Declaration, ...]
    cases: list[Property]

    @property
    def input(self) -> Declaration:
        return self.declarations[0]

    @property
    def output(self) -> Declaration:
        return self.declarations[-1]


def is_standard(text: str) -> bool:
    """Whether ``text`` is a VNN-LIB 2.0 query (its first form is ``(vnnlib-version ...)``;
    the older dialect has none)."""
    return bool(_FIRST_FORM.match(text))


def _explain(exc: Exception) -> str:
    """The parser's message: plain text for a syntax error, a JSON report for a semantic
    one (its first error, with line and hint)."""
    body = str(exc)
    try:
        report = json.loads(body)
        first = report["errors"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return body.splitlines()[0] if body else type(exc).__name__
    parts = [f"line {first['line']}" if first.get("line") is not None else "",
             first.get("message", ""), first.get("hint", "")]
    extra = len(report["errors"]) - 1
    return ": ".join(p for p in parts if p) + (f" (and {extra} more)" if extra else "")


def parse(text: str, source: str):
    """The parser's typed AST of ``text`` (a :class:`VnnlibError` naming the problem)."""
    import vnnlib

    try:
        parsed = vnnlib.parse_query_string(text)
    except vnnlib.VNNLibException as exc:
        raise VnnlibError(f"{source}: not a valid VNN-LIB 2.0 query: {_explain(exc)}") from None
    if parsed is None:
        raise VnnlibError(f"{source}: the VNN-LIB parser could not read it")
    return parsed


def _declaration(definition, kind: str, network: str, source: str) -> Declaration:
    element_type = ELEMENT_TYPES.get(definition.dtype.name)
    if element_type is None:
        raise VnnlibError(f"{source}: {kind} {definition.name!r} has an element type the "
                          f"standard does not define (they are lower case: real, float32, "
                          f"...)")
    return Declaration(definition.name, kind, element_type,
                       tuple(int(d) for d in definition.shape), network)


def _atom(comparison, index: dict[str, Declaration], source: str) -> list[Atom]:
    """A comparison as atoms ``sum c * var + k >= 0`` (two for ``==``)."""
    import vnnlib

    kind = type(comparison).__name__
    if kind == "NotEqual":
        raise VnnlibError(f"{source}: '!=' is not supported (its closure is every value, so "
                          "it cannot be verified as a set)")
    try:
        sides = [comparison.lhs.to_linear_expr(), comparison.rhs.to_linear_expr()]
    except vnnlib.VNNLibException as exc:
        raise VnnlibError(f"{source}: {exc} (certbench takes linear constraints; "
                          "polynomial ones, theory POLY, are not supported)") from None
    difference: dict = {"": sides[0].constant - sides[1].constant}
    line = 0
    for sign, side in ((1.0, sides[0]), (-1.0, sides[1])):
        for term in side.terms:
            var = term.var
            line = line or int(var.line)
            declared = index[var.name]
            flat = int(np.ravel_multi_index(tuple(var.indices), declared.shape)) \
                if declared.shape else 0
            key = ("X" if declared.kind == "input" else "Y", flat)
            difference[key] = difference.get(key, 0.0) + sign * float(term.coeff)
    if kind in ("LessThan", "LessEqual"):
        return [({k: -v for k, v in difference.items()}, line)]
    if kind == "Equal":
        return [(difference, line), ({k: -v for k, v in difference.items()}, line)]
    return [(difference, line)]


def read_query(text: str, source: str, *, num_inputs: int | None = None,
               num_outputs: int | None = None, parsed=None) -> Query:
    """Read a VNN-LIB 2.0 query (see the module doc for what is refused), checking the
    input and output sizes against the network's when they are given; ``parsed``: the
    text's :func:`parse`, if the caller has it already."""
    parsed = parsed if parsed is not None else parse(text, source)
    networks = list(parsed.networks)
    if len(networks) != 1:
        names = ", ".join(n.name for n in networks)
        raise VnnlibError(f"{source}: declares {len(networks)} networks ({names}); certbench "
                          "verifies queries over one network (theory SNET)")
    network = networks[0]
    if list(network.hidden):
        raise VnnlibError(f"{source}: declares hidden node {network.hidden[0].name!r}; "
                          "certbench verifies queries without hidden nodes (theory NH)")
    if len(network.inputs) != 1 or len(network.outputs) != 1:
        raise VnnlibError(f"{source}: network {network.name!r} declares {len(network.inputs)} "
                          f"inputs and {len(network.outputs)} outputs; certbench verifies "
                          "one of each (theory SIO)")
    declarations = (_declaration(network.inputs[0], "input", network.name, source),
                    _declaration(network.outputs[0], "output", network.name, source))
    for declaration, wanted in zip(declarations, (num_inputs, num_outputs)):
        if wanted is not None and declaration.size != wanted:
            raise VnnlibError(f"{source}: {declaration.kind} {declaration.name} has "
                              f"{declaration.size} elements but the network has {wanted}")
    index = {d.name: d for d in declarations}
    disjuncts: list[list[Atom]] = [[]]
    for number, assertion in enumerate(parsed.assertions, start=1):
        dnf = [[atom for comparison in conjunct for atom in _atom(comparison, index, source)]
               for conjunct in assertion.expr.to_dnf()]
        disjuncts = conjoin(disjuncts, dnf, f"{source}: assert {number}")
    name = declarations[0].name
    shape = declarations[0].shape
    label = (lambda i: _element(name, shape, i))
    return Query(network.name, declarations,
                 assemble_cases(source, disjuncts, declarations[0].size,
                                declarations[1].size, label=label))


def _element(name: str, shape: tuple[int, ...], flat: int) -> str:
    if not shape:
        return name
    return f"{name}[{','.join(str(int(i)) for i in np.unravel_index(int(flat), shape))}]"


def query_declarations(input_shape: tuple[int, ...], output_shape: tuple[int, ...], *,
                       network: str = "net", element_type: str = "real"
                       ) -> tuple[Declaration, Declaration]:
    """The input ``X`` and output ``Y`` that :func:`query_text` declares."""
    return (Declaration("X", "input", element_type, tuple(input_shape), network),
            Declaration("Y", "output", element_type, tuple(output_shape), network))


def query_text(cases: list[Property], input_shape: tuple[int, ...],
               output_shape: tuple[int, ...], *, network: str = "net",
               element_type: str = "real") -> str:
    """``cases`` (one property per input box; the query is violated iff some case is) as a
    VNN-LIB 2.0 query over ``network`` with input ``X`` of ``input_shape`` and output ``Y``
    of ``output_shape`` (numbers with ``repr``, so it reads back exactly). One box: its
    bounds and the unsafe set as separate asserts; several: one ``or`` of the boxes."""
    lines = [HEADER, f"(declare-network {network}"]
    for d in query_declarations(input_shape, output_shape, network=network,
                                element_type=element_type):
        lines.append(f"    (declare-{d.kind} {d.name} {d.element_type} "
                     f"[{','.join(map(str, d.shape))}])")
    lines.append(")")

    def box(prop: Property) -> list[str]:
        out = []
        for i in range(prop.num_inputs):
            x = _element("X", input_shape, i)
            out += [f"(>= {x} {float(prop.lo[i])!r})", f"(<= {x} {float(prop.hi[i])!r})"]
        return out

    def row(coefficients: list[float], bound: float) -> str:
        terms = [f"(* {c!r} {_element('Y', output_shape, j)})"
                 for j, c in enumerate(coefficients) if c]
        if not terms:
            return f"(>= 0.0 {bound!r})"
        total = terms[0] if len(terms) == 1 else f"(+ {' '.join(terms)})"
        return f"(>= {total} {bound!r})"

    def unsafe(prop: Property) -> str:
        groups = [[row(m[r].tolist(), float(d[r])) for r in range(len(d))]
                  for m, d in prop.groups]
        parts = [g[0] if len(g) == 1 else f"(and {' '.join(g)})" for g in groups]
        return parts[0] if len(parts) == 1 else f"(or {' '.join(parts)})"

    if len(cases) == 1:
        lines += [f"(assert {atom})" for atom in box(cases[0])]
        lines.append(f"(assert {unsafe(cases[0])})")
    else:
        lines.append("(assert (or " + " ".join(
            f"(and {' '.join(box(case))} {unsafe(case)})" for case in cases) + "))")
    return "\n".join(lines) + "\n"


def read_query_file(path: Path | str, **sizes: int | None) -> Query:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise VnnlibError(f"{path}: cannot read ({exc})") from None
    return read_query(text, str(path), **sizes)
