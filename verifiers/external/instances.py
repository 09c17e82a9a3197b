"""One VNN-COMP instance (an ONNX file and its property cases) handed to a standard
solver: the cases written as a VNN-LIB 2.0 query over the file's own input and output
shapes, with ``real`` declarations (:func:`bench.properties.standard.query_text`), and
the solver run on it (:func:`verifiers.external.standard_solver.run_solver`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bench.contract import Property
from bench.properties.standard import Declaration, query_declarations, query_text
from models.files import atomic_write
from models.onnx_import import onnx_io_shapes
from verifiers.external.standard_solver import GRACE, Outcome, run_solver

NETWORK = "net"


def write_query(cases: list[Property], onnx_path: Path, folder: Path
                ) -> tuple[Path, tuple[Declaration, ...]]:
    """The VNN-LIB 2.0 query of ``cases`` on ``onnx_path``, in ``folder`` (named by its
    content, so an instance's query is written once), and its declarations."""
    shapes = onnx_io_shapes(onnx_path, cases[0].num_inputs, cases[0].num_outputs)
    text = query_text(cases, *shapes, network=NETWORK)
    path = Path(folder) / f"query-{hashlib.sha256(text.encode()).hexdigest()[:16]}.vnnlib"
    if not path.exists():
        atomic_write(path, lambda handle: handle.write(text.encode()))
    return path, query_declarations(*shapes, network=NETWORK)


def solve_instance(command: str | list[str], onnx_path: Path, cases: list[Property],
                   timeout: float, folder: Path, grace: float = GRACE) -> Outcome:
    """Run the standard solver ``command`` on the instance; ``outcome.values["X"]`` is a
    ``sat`` point, flat (not yet re-checked: the caller does that)."""
    query, declarations = write_query(cases, onnx_path, folder)
    return run_solver(command, query, {NETWORK: Path(onnx_path).resolve()}, timeout,
                      declarations, grace=grace)
