"""The competition's files, read and written, nothing read back trusted unchecked.

- ``instances.csv``: rows ``onnx,vnnlib,timeout`` (paths relative to its folder).
- ``results.csv``: the competition's columns ``onnx,vnnlib,prepare_time,result,run_time``
  and, after them, what a resumed run needs to re-check an answer: the instance's
  ``timeout``, the SHA-256 of its ONNX and VNNLIB files, and a digest of the answer with
  them (:func:`answer_digest`: a verdict edited by hand no longer matches it); last the
  ``reason`` (why an answer is ``error``, ``timeout`` or ``unknown``, e.g. what an
  external solver did wrong, or how ``unsat`` was found). Written with the csv module (a
  comma in a file name is quoted).
- ``counterexamples/KEY.counterexample``: ``((X_0 v) ... (Y_0 v) ...)`` per ``sat``,
  named by the instance's digests (:func:`counterexample_name`), never by its row.
- A reference: ``onnx,vnnlib,verdict`` with the competition's words (``sat``,
  ``unsat``, ``holds``, ``violated``, any case), one row per instance.

A file that cannot be read is one line (:class:`VnncompError`), raised before anything
is solved or written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.errors import CertbenchError
from bench.limits import MAX_INSTANCE_TIMEOUT
from models.files import atomic_write

RESULT_FIELDS = ["onnx", "vnnlib", "prepare_time", "result", "run_time"]   # the competition's
CHECK_FIELDS = ["timeout", "onnx_sha256", "vnnlib_sha256", "answer_sha256"]  # ours, to resume
NOTE_FIELDS = ["reason"]      # why an answer is error/timeout/unknown, or how it was found
VERDICT_WORDS = {"sat": "sat", "violated": "sat", "unsat": "unsat", "holds": "unsat"}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


class VnncompError(CertbenchError, ValueError):
    """An instances, results or reference file that cannot be read (one line)."""


@dataclass
class Instance:
    onnx: str
    vnnlib: str
    timeout: float

    @property
    def key(self) -> tuple[str, str]:
        return (self.onnx, self.vnnlib)


def _read_text(path: Path, what: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise VnncompError(f"{path}: cannot read the {what} ({reason})") from None


def read_instances(path: Path) -> list[Instance]:
    """The rows of an ``instances.csv`` (no header; ``onnx,vnnlib,timeout``)."""
    rows = [row for row in csv.reader(_read_text(path, "instances").splitlines()) if row]
    out = []
    for number, row in enumerate(rows, start=1):
        if len(row) != 3:
            raise VnncompError(f"{path}:{number}: expected onnx,vnnlib,timeout")
        try:
            timeout = float(row[2])
        except ValueError:
            raise VnncompError(f"{path}:{number}: timeout {row[2]!r} is not a number") from None
        if not math.isfinite(timeout) or not 0 < timeout <= MAX_INSTANCE_TIMEOUT:
            raise VnncompError(f"{path}:{number}: timeout must be above 0 and at most "
                               f"{MAX_INSTANCE_TIMEOUT:g} seconds, got {row[2]!r}")
        out.append(Instance(row[0].strip(), row[1].strip(), timeout))
    return out


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, or ``"unreadable: REASON"`` (which matches nothing)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


def read_results(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    """The rows of an earlier ``results.csv``, by ``(onnx, vnnlib)`` (a repeated instance:
    the last row). No file: none. A file that is not a results file (not text, or
    without the competition's columns) is a :class:`VnncompError`: it is not ours to
    overwrite. Rows are only read here; :func:`bench.vnncomp.competition.run` decides
    which it may keep."""
    if not Path(path).exists():
        return {}
    reader = csv.DictReader(io.StringIO(_read_text(path, "results of an earlier run")))
    missing = [field for field in RESULT_FIELDS if field not in (reader.fieldnames or [])]
    if missing:
        raise VnncompError(f"{path}: not a results file of bench vnncomp (no column "
                           f"{', '.join(missing)}); move it away or choose another --out")
    return {(row["onnx"] or "", row["vnnlib"] or ""): {k: v or "" for k, v in row.items()
                                                        if isinstance(k, str)}
            for row in reader}


def answer_digest(row: dict[str, str]) -> str:
    """A digest of a row's instance, answer, timeout and file digests: a row whose
    ``answer_sha256`` differs was not written as it reads now."""
    fields = ["onnx", "vnnlib", "result", "timeout", "onnx_sha256", "vnnlib_sha256"]
    return hashlib.sha256("\x1f".join(row.get(f, "") for f in fields).encode()).hexdigest()


def write_results(path: Path, rows: list[dict[str, str]]) -> None:
    """``results.csv``, atomically: the competition's columns, then ours."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_FIELDS + CHECK_FIELDS + NOTE_FIELDS,
                            extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    data = buffer.getvalue().encode()
    atomic_write(path, lambda handle: handle.write(data))


def counterexample_name(onnx_sha256: str, vnnlib_sha256: str, vnnlib: str) -> str:
    """The counterexample file of an instance: its VNNLIB's name (letters, digits,
    ``._-`` only) and a digest of both files, so it follows the instance, not its row."""
    stem = re.sub(r"[^\w.-]", "_", Path(vnnlib).stem)[:60]
    key = hashlib.sha256(f"{onnx_sha256}/{vnnlib_sha256}".encode()).hexdigest()[:16]
    return f"{stem}-{key}.counterexample"


def counterexample_text(x: np.ndarray, y: np.ndarray) -> str:
    """The competition's counterexample format."""
    parts = [f"(X_{i} {float(v)!r})" for i, v in enumerate(x)]
    parts += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(y)]
    return "(" + "\n".join(parts) + ")\n"


def read_counterexample(path: Path, num_inputs: int) -> np.ndarray | None:
    """The point ``X (num_inputs,)`` float64 of a counterexample file, or ``None`` if the
    file is missing, unreadable, or does not give every input exactly once."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    values: dict[int, float] = {}
    for index, value in re.findall(rf"\(\s*X_(\d+)\s+({_NUMBER})\s*\)", text):
        if int(index) in values:
            return None
        values[int(index)] = float(value)
    if sorted(values) != list(range(num_inputs)):
        return None
    point = np.array([values[i] for i in range(num_inputs)], dtype=np.float64)
    return point if np.isfinite(point).all() else None


def read_reference(path: Path) -> dict[tuple[str, str], str]:
    """Reference verdicts ``{(onnx, vnnlib): "sat" | "unsat"}`` (``holds`` is ``unsat``,
    ``violated`` is ``sat``, any case); another word, a missing verdict or a repeated
    instance is a :class:`VnncompError` naming the line."""
    reader = csv.DictReader(io.StringIO(_read_text(path, "reference")))
    missing = [f for f in ("onnx", "vnnlib", "verdict") if f not in (reader.fieldnames or [])]
    if missing:
        raise VnncompError(f"{path}: needs columns onnx,vnnlib,verdict (no "
                           f"{', '.join(missing)})")
    out: dict[tuple[str, str], str] = {}
    for number, row in enumerate(reader, start=2):
        word = (row.get("verdict") or "").strip().lower()
        if word not in VERDICT_WORDS:
            raise VnncompError(f"{path}:{number}: verdict must be one of sat, unsat, holds, "
                               f"violated, got {row.get('verdict')!r}")
        key = ((row.get("onnx") or "").strip(), (row.get("vnnlib") or "").strip())
        if key in out:
            raise VnncompError(f"{path}:{number}: {key[0]} {key[1]} has a verdict already")
        out[key] = VERDICT_WORDS[word]
    return out
