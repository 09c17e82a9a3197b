"""Running any solver of the VNN-LIB standard's command line (chapter 5) on one query,
trusting nothing it prints.

``SOLVER verify QUERY --network NAME=FILE --timeout S`` in a process group of its own.
Its answer is the first line of stdout, one of ``sat``, ``unsat``, ``unknown``,
``timed-out``; after ``sat`` the assignment (section 5.3.1), parsed strictly against the
query's declarations (:func:`bench.properties.assignment.parse_assignment`). What a
solver does wrong is an :class:`Outcome` with status ``error`` and the reason, never a
verdict: an empty or unknown first line, an exit code other than 0 beside an answer, an
abnormal termination (a signal), an assignment that does not parse, or a command that
cannot be started. A solver still running :data:`GRACE` seconds after the timeout it was
given is stopped (its whole process group) and the outcome is ``timeout``. Whatever it
writes on stderr is kept (its last line, in the reason of an error) and otherwise
ignored.

Whether a ``sat`` assignment really violates the property is for the caller to check
(:mod:`bench.vnncomp.external` re-checks it in float64 and by onnxruntime; the ``external``
verifier by a float64 forward pass): a claim is not a counterexample.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.properties.assignment import AssignmentError, parse_assignment
from bench.properties.standard import Declaration

GRACE = 5.0            # seconds past the timeout given before the solver is stopped
RESULTS = {"sat": "sat", "unsat": "unsat", "unknown": "unknown", "timed-out": "timeout"}


@dataclass
class Outcome:
    """What a solver said, checked: ``status`` is ``sat``, ``unsat``, ``unknown``,
    ``timeout`` or ``error``; ``values`` the parsed assignment (per declared name, flat
    float64) of a ``sat``; ``reason`` why an outcome is ``error``/``timeout`` (or empty)."""

    status: str
    seconds: float
    values: dict[str, np.ndarray] = field(default_factory=dict)
    reason: str = ""
    exit_code: int | None = None


def command_words(command: str | list[str]) -> list[str]:
    """A solver's command as argv words (a string is split as a POSIX shell would)."""
    words = shlex.split(command) if isinstance(command, str) else [str(w) for w in command]
    if not words:
        raise ValueError("the solver command is empty")
    return words


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def run_solver(command: str | list[str], query: Path, networks: dict[str, Path],
               timeout: float, declarations: tuple[Declaration, ...],
               cwd: Path | None = None, grace: float = GRACE) -> Outcome:
    """Run ``command verify QUERY --network ... --timeout S`` and check its answer (see
    the module doc). ``timeout`` in seconds (rounded up to whole seconds for the solver);
    the solver is stopped ``grace`` seconds after it."""
    argv = [*command_words(command), "verify", str(query)]
    for name, path in networks.items():
        argv += ["--network", f"{name}={path}"]
    argv += ["--timeout", str(max(0, int(np.ceil(timeout))))]
    began = time.perf_counter()
    try:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL, cwd=cwd, text=True,
                                   start_new_session=True)
    except OSError as exc:
        return Outcome("error", 0.0, reason=f"cannot start {argv[0]!r}: {exc.strerror or exc}")
    try:
        stdout, stderr = process.communicate(timeout=timeout + grace)
    except subprocess.TimeoutExpired:
        _stop(process)
        return Outcome("timeout", time.perf_counter() - began,
                       reason=f"no answer {timeout + grace:g} s after it started (timeout "
                              f"{timeout:g} s); stopped")
    except BaseException:           # our own limit or an interrupt: leave no solver behind
        _stop(process)
        raise
    seconds = time.perf_counter() - began
    code = process.returncode
    if code < 0:
        return Outcome("error", seconds, exit_code=code, reason=f"terminated by signal "
                       f"{signal.Signals(-code).name}" + _stderr_note(stderr))
    lines = stdout.splitlines()
    first = lines[0].strip() if lines else ""
    if first not in RESULTS:
        return Outcome("error", seconds, exit_code=code, reason=(
            f"first line of stdout is {first[:80]!r}, not sat, unsat, unknown or timed-out"
            if lines else "printed nothing on stdout") + _stderr_note(stderr))
    if code != 0:
        return Outcome("error", seconds, exit_code=code, reason=f"answered {first!r} but "
                       f"exited with code {code}" + _stderr_note(stderr))
    if first != "sat":
        return Outcome(RESULTS[first], seconds, exit_code=code)
    try:
        values = parse_assignment(lines[1:], declarations)
    except AssignmentError as exc:
        return Outcome("error", seconds, exit_code=code, reason=f"sat, but its assignment "
                       f"does not parse: {exc}")
    return Outcome("sat", seconds, values=values, exit_code=code)


def _stderr_note(stderr: str) -> str:
    last = _last_line(stderr)
    return f" (stderr: {last})" if last else ""


def _stop(process: subprocess.Popen) -> None:
    """End the solver and everything it started (its process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            process.communicate(timeout=2.0)
            return
        except subprocess.TimeoutExpired:
            continue
