"""``certbench-solver``: certbench as a solver of the VNN-LIB standard's command line
(chapter 5 of VNN-LIB 2.0), so any tool that drives standard solvers can drive it.

- ``certbench-solver --name`` / ``--version``: one line each.
- ``certbench-solver verify QUERY --network NAME=FILE [--timeout S]
  [--serialise-assignments DIR]``: the portfolio of ``bench vnncomp`` (attacks, then
  ``ibp``/``crown``/``lp``, then branch and bound; :mod:`bench.vnncomp.portfolio`) on the
  query, printing one of ``sat``, ``unsat``, ``unknown``, ``timed-out``. After ``sat``
  the assignment (section 5.3.1: every declared variable in the query's order, a header
  ``NAME TYPE [dims]`` then one value per line), whose input was re-checked before it is
  printed: inside the box exactly, and violating the property by a float64 forward pass
  and by onnxruntime on the ONNX file (the outputs printed are onnxruntime's). With
  ``--serialise-assignments DIR`` the variables go to ``DIR/NAME.pb`` (ONNX
  TensorProto, float64) instead of stdout.
- ``certbench-solver supports --CAPABILITY``: each of the eleven capabilities, answered
  from the code (:data:`CAPABILITIES`): operators from the importer's table, theories
  from what :mod:`bench.properties.standard` reads.

Errors go to stderr, one line, and nothing to stdout; the exit code is 0 for an answer,
1 for a usage error or a query the standard says must be refused (section 5.3.2: a
network mapping that does not fit the declarations; a declared element type other than
``real``, since certbench's analysis is over the reals and does not model floating-point
rounding, so a query asking for sound float32 analysis is refused and ``real`` is how a
user consents), 2 for a failure while solving.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import IO, Callable, NoReturn

import numpy as np

NAME = "certbench"
EXIT_ANSWER, EXIT_REFUSED, EXIT_FAILED = 0, 1, 2
GRACE = 10.0     # seconds past --timeout before an uninterruptible stage is stopped


class Refusal(Exception):
    """The query or its arguments cannot be answered (stderr, exit 1)."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(NAME)
    except PackageNotFoundError:        # run from a checkout without installing it
        return "0+unknown"


def _operators() -> list[str]:
    """What either importer takes on variable tensors (the dense folding and the operator
    graph, each operator tested against onnxruntime in ``tests/test_onnx_operators.py``),
    and the constant producers."""
    from models.onnx_graph import GRAPH_OPERATORS
    from models.onnx_import import LIVE_OPERATORS

    return sorted({*LIVE_OPERATORS, *GRAPH_OPERATORS, "Constant", "Shape"})


def _opsets() -> list[str]:
    from models.onnx_import import OPSET_VERSIONS

    return [str(v) for v in OPSET_VERSIONS]


# capability flag -> the lines it prints (section 5.4), computed from the code
CAPABILITIES: dict[str, Callable[[], list[str]]] = {
    "--onnx-opset-versions": _opsets,
    "--onnx-element-types": lambda: ["real"],
    "--onnx-operators": _operators,
    "--vnnlib-versions": lambda: ["2.0", "2.0"],
    "--hidden-node-theories": lambda: ["NH"],
    "--multiple-input-output-theories": lambda: ["SIO"],
    "--multiple-network-theories": lambda: ["SNET"],
    "--multiple-node-comparison-theories": lambda: ["SNC"],
    "--arithmetic-complexity-theories": lambda: ["BND", "OUTC"],
    "--optimised-disjunctive-reasoning": lambda: ["false"],
    "--serialise-assignments": lambda: ["true"],
}
# the standard spells two things two ways (5.1 vs 5.4, 5.4.2's heading vs its example)
ALIASES = {"--multiple-inputs-output-theories": "--multiple-input-output-theories"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_REFUSED, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="certbench-solver", allow_abbrev=False,
                     description="certbench as a VNN-LIB 2.0 standard solver")
    identity = parser.add_mutually_exclusive_group()
    identity.add_argument("--name", action="store_true", help="print the solver's name")
    identity.add_argument("--version", action="store_true", help="print its version")
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    verify = commands.add_parser("verify", help="answer a VNN-LIB 2.0 query",
                                 allow_abbrev=False)
    verify.add_argument("query", type=Path, help="the VNN-LIB 2.0 query file")
    verify.add_argument("--network", action="append", default=[], metavar="NAME=FILE",
                        help="the ONNX file of the declared network NAME")
    verify.add_argument("--timeout", type=int, metavar="SECONDS",
                        help="whole seconds (default: none)")
    verify.add_argument("--threads", type=int, default=1, metavar="T",
                        help="torch threads (default 1; not in the standard, optional as "
                        "section 5.3 allows: a harness running solvers side by side on few "
                        "cores loses far more to oversubscribed threads than it gains)")
    verify.add_argument("--serialise-assignments", "--assignments", type=Path,
                        dest="serialise", metavar="DIR",
                        help="write a sat assignment as DIR/NAME.pb (ONNX TensorProto)")
    for command in ("supports", "capabilities"):
        sub = commands.add_parser(command, allow_abbrev=False,
                                  help="report a capability" if command == "supports"
                                  else argparse.SUPPRESS)
        flags = sub.add_mutually_exclusive_group(required=True)
        for flag in [*CAPABILITIES, *ALIASES]:
            flags.add_argument(flag, dest="capability", action="store_const",
                               const=ALIASES.get(flag, flag),
                               help=None if flag in CAPABILITIES else argparse.SUPPRESS)
    return parser


def _networks(pairs: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pair in pairs:
        name, sep, file = pair.partition("=")
        if not sep or not name or not file:
            raise Refusal(f"--network takes NAME=FILE, got {pair!r}")
        if name in out:
            raise Refusal(f"--network maps {name!r} twice")
        out[name] = Path(file)
    return out


def _load(args: argparse.Namespace):
    """The query, its network and the ONNX path, after every check of section 5.3.2."""
    from bench.properties.cases import VnnlibError
    from bench.properties.standard import is_standard, parse, read_query
    from models.card import ModelError
    from models.onnx_network import load_onnx

    try:
        text = args.query.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise Refusal(f"cannot read the query {args.query} ({exc})") from None
    if not is_standard(text):
        raise Refusal(f"{args.query} is not a VNN-LIB 2.0 query (its first form is not "
                      "(vnnlib-version <2.0>))")
    mapping = _networks(args.network)
    try:
        parsed = parse(text, str(args.query))
    except VnnlibError as exc:
        raise Refusal(str(exc)) from None
    declared = {network.name: network.equal_to for network in parsed.networks}
    for name in mapping:
        if name not in declared:
            raise Refusal(f"--network maps {name!r}, which {args.query} does not declare "
                          f"(it declares {', '.join(declared)})")
        if declared[name]:
            raise Refusal(f"--network maps {name!r}, declared equal to {declared[name]!r}; "
                          "it takes no model file of its own")
    missing = [name for name, equal in declared.items() if not equal and name not in mapping]
    if missing:
        raise Refusal(f"no model file for network {missing[0]!r}: give --network "
                      f"{missing[0]}=FILE")
    try:
        query = read_query(text, str(args.query), parsed=parsed)
    except VnnlibError as exc:
        raise Refusal(str(exc)) from None
    unsound = [d for d in query.declarations if d.element_type != "real"]
    if unsound:
        d = unsound[0]
        raise Refusal(f"{d.kind} {d.name} is declared {d.element_type}: certbench's analysis "
                      "is over the reals and does not model floating-point rounding, so it "
                      "cannot promise sound analysis for that type; declare the variables "
                      "real to consent to analysis over the reals (VNN-LIB 2.0 section 3.5)")
    onnx_path = mapping[query.network]
    try:
        net, _ = load_onnx(onnx_path)
    except ModelError as exc:
        raise Refusal(str(exc)) from None
    for declaration, size in ((query.input, net.input_dim), (query.output, net.num_classes)):
        if declaration.size != size:
            raise Refusal(f"{declaration.kind} {declaration.name} has {declaration.size} "
                          f"elements but {onnx_path} has {size}")
    return query, net, onnx_path


def _serialise(folder: Path, values: dict[str, np.ndarray], query) -> None:
    from onnx import numpy_helper

    from models.files import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    for declaration in query.declarations:
        array = np.asarray(values[declaration.name], np.float64).reshape(declaration.shape)
        payload: bytes = numpy_helper.from_array(array, declaration.name).SerializeToString()

        def write(handle: IO, data: bytes = payload) -> None:
            handle.write(data)

        atomic_write(folder / f"{declaration.name}.pb", write)


def verify(args: argparse.Namespace) -> int:
    from bench.limits import MAX_INSTANCE_TIMEOUT, PluginTimeout, time_limit
    from bench.properties.assignment import assignment_text
    from bench.vnncomp.portfolio import default_verifiers, solve_cases

    if args.timeout is not None and not 0 <= args.timeout <= MAX_INSTANCE_TIMEOUT:
        raise Refusal(f"--timeout must be between 0 and {MAX_INSTANCE_TIMEOUT:g} seconds, "
                      f"got {args.timeout}")
    if args.threads < 1:
        raise Refusal(f"--threads must be at least 1, got {args.threads}")
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    query, net, onnx_path = _load(args)
    timeout = float(MAX_INSTANCE_TIMEOUT if args.timeout is None else args.timeout)
    left = timeout - (time.perf_counter() - started)
    if left <= 0:
        print("timed-out")
        return EXIT_ANSWER
    try:
        with time_limit(left + GRACE):
            answer = solve_cases(net, query.cases, left, onnx_path, default_verifiers())
    except PluginTimeout:
        print("timed-out")
        return EXIT_ANSWER
    if answer.result != "sat" or answer.counterexample is None:
        print({"unsat": "unsat", "timeout": "timed-out"}.get(answer.result, "unknown"))
        return EXIT_ANSWER
    x, y = answer.counterexample
    values = {query.input.name: x, query.output.name: y}
    if args.serialise is not None:
        _serialise(args.serialise, values, query)
        print("sat")
    else:
        sys.stdout.write("sat\n" + assignment_text(query.declarations, values))
    return EXIT_ANSWER


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:                 # a usage error (argparse printed why), --help
        return int(exc.code or 0)
    if args.command is not None and (args.name or args.version):
        print("certbench-solver: --name and --version are global options and take no "
              "command", file=sys.stderr)
        return EXIT_REFUSED
    if args.name or args.version:
        print(NAME if args.name else _version())
        return EXIT_ANSWER
    if args.command in ("supports", "capabilities"):
        sys.stdout.write("".join(line + "\n" for line in CAPABILITIES[args.capability]()))
        return EXIT_ANSWER
    if args.command != "verify":
        build_parser().print_usage(sys.stderr)
        print("certbench-solver: give --name, --version, verify or supports", file=sys.stderr)
        return EXIT_REFUSED
    try:
        return verify(args)
    except Refusal as exc:
        print(f"certbench-solver: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except Exception as exc:    # noqa: BLE001 - a failure while solving: stderr, exit 2
        print(f"certbench-solver: failed while solving: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
