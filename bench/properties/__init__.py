"""VNN-LIB properties, both dialects: :mod:`bench.properties.standard` (VNN-LIB 2.0, the
standard's parser), :mod:`bench.properties.legacy` (the VNN-COMP 2021-2024 dialect, our
parser), one assembly into :class:`bench.contract.Property` cases
(:mod:`bench.properties.cases`), the solver interface's assignment format
(:mod:`bench.properties.assignment`), and :func:`read_vnnlib_cases`, which reads either
dialect by its first form."""

from __future__ import annotations

from pathlib import Path

from bench.contract import Property
from bench.properties.cases import VnnlibError
from bench.properties.legacy import read_legacy, vnnlib_text, write_vnnlib
from bench.properties.standard import is_standard, query_text, read_query

__all__ = ["VnnlibError", "read_vnnlib", "read_vnnlib_cases", "vnnlib_text", "write_vnnlib",
           "query_text", "read_query"]


def read_vnnlib_cases(path: Path | str, *, num_inputs: int | None = None,
                      num_outputs: int | None = None, text: str | None = None
                      ) -> list[Property]:
    """A VNN-LIB file, either dialect, as one :class:`Property` per input box (the file's
    property holds iff every one holds; most files have one box, ACAS Xu's property 6
    two), checking the variable counts against the network's when they are given."""
    source = str(path)
    if text is None:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise VnnlibError(f"{source}: cannot read ({exc})") from None
    if is_standard(text):
        return read_query(text, source, num_inputs=num_inputs, num_outputs=num_outputs).cases
    return read_legacy(text, source, num_inputs=num_inputs, num_outputs=num_outputs)


def read_vnnlib(path: Path | str, *, num_inputs: int | None = None,
                num_outputs: int | None = None, text: str | None = None) -> Property:
    """:func:`read_vnnlib_cases` for a file with one input box (a union of boxes is a
    one-line error here; ``bench vnncomp`` takes unions)."""
    cases = read_vnnlib_cases(path, num_inputs=num_inputs, num_outputs=num_outputs, text=text)
    if len(cases) != 1:
        raise VnnlibError(f"{path}: the input set is a union of {len(cases)} boxes; this "
                          "reader takes one box (bench vnncomp takes unions)")
    return cases[0]
