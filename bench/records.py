"""Per-sample records, persisted as JSON lines as they are produced.

One record per (model, method, eps, sample)::

    model, model_sha256, method, kind ("verifier" | "attack"), eps, sample, label,
    bound      float64 max over wrong classes j of U[n, j] (verifier, upper bound) or
               of L[n, j] (attack, lower bound); null when there is none,
    decided    verifier: certified (bound < 0); attack: broken (bound >= 0); null if n/a,
    seconds    this sample's share of its batch's wall time,
    status     "ok" | "error" | "timeout" | "n/a",
    message    why, when the status is not ok,
    config     the plugin's repr, version  the providing distribution and version,
    seed       the batch seed,
    schema     the record format (:data:`SCHEMA`),
    code       the fingerprint of the plugin's source (:mod:`bench.fingerprint`).

Records of schema 1 (before ``schema`` and ``code`` existed) are read as such, with
``code`` empty: they carry no fingerprint, so they are reused on the version alone.

A batch of records is appended with one write, flushed and fsynced, so a killed
run loses at most the batch in flight; a torn last line is ignored on reading.
A run holds an exclusive lock on the folder, so two runs cannot interleave.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from bench.errors import CertbenchError

RECORDS_NAME = "records.jsonl"
LOCK_NAME = ".lock"
SCHEMA = 2
FIELDS_V1 = ("model", "model_sha256", "method", "kind", "eps", "sample", "label", "bound",
             "decided", "seconds", "status", "message", "config", "version", "seed")
FIELDS = FIELDS_V1 + ("schema", "code")
STATUSES = ("ok", "error", "timeout", "n/a")

Key = tuple[str, str, float, int]


class RecordsError(CertbenchError, RuntimeError):
    """The records file is corrupt, foreign, or locked by another run (one-line message)."""


def key_of(record: dict[str, Any]) -> Key:
    return (record["model"], record["method"], float(record["eps"]), int(record["sample"]))


def _encode(record: dict[str, Any]) -> str:
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in record.items()}
    return json.dumps(clean, sort_keys=True, allow_nan=False)


def _is_number(value: Any, finite: bool = True) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and (not finite or math.isfinite(value)))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


TYPES = {  # field -> (check, what it must be)
    "model": (lambda v: isinstance(v, str), "a string"),
    "model_sha256": (lambda v: isinstance(v, str), "a string"),
    "method": (lambda v: isinstance(v, str), "a string"),
    "config": (lambda v: isinstance(v, str), "a string"),
    "version": (lambda v: isinstance(v, str), "a string"),
    "message": (lambda v: isinstance(v, str), "a string"),
    "eps": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "sample": (_is_count, "an integer >= 0"),
    "label": (_is_count, "an integer >= 0"),
    "seed": (_is_count, "an integer >= 0"),
    "bound": (lambda v: v is None or _is_number(v), "a finite number or null"),
    "decided": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    "seconds": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "schema": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= SCHEMA,
               f"an integer from 1 to {SCHEMA} (a newer certbench wrote it?)"),
    "code": (lambda v: isinstance(v, str), "a string"),
}


def _validate(record: Any, where: str) -> dict[str, Any]:
    if isinstance(record, dict) and set(record) == set(FIELDS_V1):
        record = {**record, "schema": 1, "code": ""}
    if not isinstance(record, dict) or set(record) != set(FIELDS):
        raise RecordsError(f"{where}: not a certbench record (fields differ)")
    if record["status"] not in STATUSES or record["kind"] not in ("verifier", "attack"):
        raise RecordsError(f"{where}: unknown status or kind")
    for name, (check, what) in TYPES.items():
        if not check(record[name]):
            raise RecordsError(f"{where}: {name} must be {what}, got {record[name]!r}; "
                               "move the records file away to start afresh")
    return record


class RecordStore:
    """The records of one results folder; use as a context manager to hold its lock."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / RECORDS_NAME
        self._lock_file: Any = None

    def __enter__(self) -> "RecordStore":
        if self.folder.exists() and not self.folder.is_dir():
            raise RecordsError(f"{self.folder} is not a folder; choose another --out")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.folder / LOCK_NAME, "w")
        except OSError as exc:
            raise RecordsError(f"cannot write to {self.folder} ({exc.strerror}); choose "
                               "another --out") from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise RecordsError(f"another run is writing to {self.folder}; wait for it or "
                               "choose another --out") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def load(self) -> dict[Key, dict[str, Any]]:
        """Every record by key, the latest winning; a torn final line is dropped."""
        if not self.path.exists():
            return {}
        try:
            lines = self.path.read_bytes().split(b"\n")
        except OSError as exc:
            raise RecordsError(f"{self.path}: unreadable ({exc.strerror})") from None
        found: dict[Key, dict[str, Any]] = {}
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = _validate(json.loads(line), f"{self.path}:{number + 1}")
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                if number == len(lines) - 1:
                    break  # torn write of an interrupted run (no final newline): redone
                raise RecordsError(f"{self.path}:{number + 1}: corrupt records file "
                                   f"({type(exc).__name__}); move it away to start "
                                   "afresh") from None
            found[key_of(record)] = record
        return found

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records durably: one write, flush, fsync."""
        payload = "".join(_encode(r) + "\n" for r in records).encode()
        if not payload:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as handle:
            self._drop_torn_tail(handle)
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())

    @staticmethod
    def _drop_torn_tail(handle: Any) -> None:
        """Cut a partial last line (from a killed run) back to the last newline."""
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        with open(handle.name, "rb") as reader:
            reader.seek(max(0, size - (1 << 20)))
            tail = reader.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        handle.truncate(size - len(tail) + cut + 1 if cut >= 0 else 0)
        handle.seek(0, os.SEEK_END)
