"""``bench vnncomp``: a VNN-COMP benchmark in the competition's format.

Input: ``instances.csv`` rows ``onnx,vnnlib,timeout`` (paths relative to the CSV's
folder). Output, in ``OUT``: ``results.csv`` rows ``onnx,vnnlib,prepare_time,result,
run_time`` with result ``sat`` / ``unsat`` / ``timeout`` / ``unknown`` / ``error``, and for
each ``sat`` a counterexample file ``counterexamples/INDEX.counterexample`` in the
competition's form ``((X_0 v) ... (Y_0 v) ...)``.

The portfolio per instance, cheapest first, stopping at the first decisive answer; the
instance's timeout is checked between stages and inside branch and bound. A stage that
cannot be interrupted there (one long bound computation) is stopped by the executor
:data:`GRACE` seconds past the timeout (``SIGALRM`` in process; on Dask workers the
worker process is ended) and the answer is ``timeout``. With ``--executor local`` or
``dask`` the instances run in parallel on the workers:

1. an attack: signed-gradient ascent inside the box on each unsafe group's smallest row
   ``min_i c_i . f(x) - d_i``, from the box's centre and random starts
   (:func:`attacks.property_ascent.attack_property`). A candidate counts only after the harness
   re-checks it: inside the box, and violating the property by a float64 forward pass
   *and* by onnxruntime on the ONNX file itself. Then the answer is ``sat``.
2. the verifiers that bound general specifications (``bound_property``), cheapest first
   (``ibp``, ``crown``, ``lp``): when every group has a row whose upper bound is ``< 0``
   the answer is ``unsat``.
3. complete verification for the time left: branch and bound with beta-CROWN bounds
   (:func:`verifiers.bab.search.decide`), whose counterexample goes through the same re-check;
   at the limit the answer is ``timeout`` (never a guess). An exception is ``error`` for
   that instance; the rest complete.

With ``--reference VERDICTS.csv`` (the same columns plus ``verdict``) it scores as the
competition does (+10 for a correct sat/unsat, -150 for an incorrect one, 0 otherwise)
and lists every disagreement. Rerunning into the same folder skips the instances
already answered.
"""


from __future__ import annotations

import csv
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bench.contract import Property, torch_device
from bench.errors import CertbenchError
from bench.limits import PluginTimeout, time_limit
from bench.tasks import NetworkRef
from bench.vnncomp.portfolio import Answer, default_verifiers, solve
from bench.vnncomp.vnnlib import read_vnnlib
from models import MLP
from models.files import atomic_write

RESULT_FIELDS = ["onnx", "vnnlib", "prepare_time", "result", "run_time"]
SCORES = {"correct": 10, "incorrect": -150}




class VnncompError(CertbenchError, ValueError):
    """An instances or reference file that cannot be read (one line)."""


@dataclass
class Instance:
    onnx: str
    vnnlib: str
    timeout: float




def read_instances(path: Path) -> list[Instance]:
    """The rows of an ``instances.csv`` (no header; ``onnx,vnnlib,timeout``)."""
    try:
        rows = [row for row in csv.reader(Path(path).read_text().splitlines()) if row]
    except (OSError, UnicodeDecodeError) as exc:
        raise VnncompError(f"{path}: cannot read ({exc})") from None
    out = []
    for number, row in enumerate(rows, start=1):
        if len(row) != 3:
            raise VnncompError(f"{path}:{number}: expected onnx,vnnlib,timeout")
        try:
            timeout = float(row[2])
        except ValueError:
            raise VnncompError(f"{path}:{number}: timeout {row[2]!r} is not a number") from None
        if not math.isfinite(timeout) or timeout <= 0:
            raise VnncompError(f"{path}:{number}: timeout must be positive, got {row[2]!r}")
        out.append(Instance(row[0].strip(), row[1].strip(), timeout))
    return out




def draw_images(count: int, seed: int | None) -> list[int]:
    """Indices of ``count`` test images: the first ones, or drawn without replacement
    with ``seed`` (the way VNN-COMP's benchmark generators draw them)."""
    from bench.data import mnist_test

    total = len(mnist_test()[1])
    if not 0 < count <= total:
        raise VnncompError(f"--properties must be between 1 and {total}, got {count}")
    if seed is None:
        return list(range(count))
    return sorted(np.random.default_rng(seed).choice(total, size=count, replace=False).tolist())


def write_instances(net: MLP, name: str, onnx_path: Path, indices: list[int],
                    radii: list[float], timeout: float) -> list[str]:
    """Robustness properties of test images ``indices`` at each radius, as VNNLIB files
    beside ``onnx_path``, and ``instances.csv`` there; returns its rows."""
    from bench.data import mnist_test, to_tensor
    from bench.vnncomp.vnnlib import write_vnnlib

    images, labels = mnist_test()
    x = to_tensor(images[indices], torch.float64)
    folder = Path(onnx_path).parent
    rows = []
    for eps in radii:
        for n, index in enumerate(indices):
            file = f"{name}_{index}_eps{eps:g}.vnnlib"
            write_vnnlib(Property.robustness(x[n], int(labels[index]), eps, net.num_classes),
                         folder / file)
            rows.append(f"{Path(onnx_path).name},{file},{timeout:g}")
    text = ("\n".join(rows) + "\n").encode()
    atomic_write(folder / "instances.csv", lambda handle: handle.write(text))
    return rows


def counterexample_text(x: np.ndarray, y: np.ndarray) -> str:
    """The competition's counterexample format."""
    parts = [f"(X_{i} {float(v)!r})" for i, v in enumerate(x)]
    parts += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(y)]
    return "(" + "\n".join(parts) + ")\n"


GRACE = 10.0    # seconds past an instance's timeout before the executor stops it


@dataclass
class InstanceTask:
    """One instance as a task (:mod:`bench.executors`): everything to answer it."""

    index: int
    item: Instance
    onnx_path: Path
    vnnlib_path: Path
    weights_sha256: str
    seed: int = 0
    device: str = "cpu"

    @property
    def limit(self) -> float:
        """The hard limit: the portfolio stops itself at the timeout; this catches a
        stage that cannot be interrupted (one long bound computation)."""
        return self.item.timeout + GRACE

    def timed_out(self) -> Answer:
        return Answer("timeout", 0.0, self.limit, message="stopped by the executor")

    def lost(self, message: str) -> Answer:
        return Answer("error", 0.0, 0.0, message=message)


def answer(task: InstanceTask) -> Answer:
    """The portfolio on one instance; an exception is the answer ``error``."""
    try:
        started = time.perf_counter()
        with time_limit(task.limit):
            net = NetworkRef(str(task.onnx_path), None, task.weights_sha256).load().net
            prepare = time.perf_counter() - started
            prop = read_vnnlib(task.vnnlib_path, num_inputs=net.input_dim,
                               num_outputs=net.num_classes)
            result = solve(net, prop, task.item.timeout, task.onnx_path, default_verifiers(),
                           task.seed, device=task.device)
        result.prepare_time = prepare
        return result
    except PluginTimeout:
        return task.timed_out()
    except Exception as exc:     # noqa: BLE001 (one broken instance is "error", the rest run)
        return Answer("error", 0.0, 0.0, message=f"{type(exc).__name__}: {exc}")


def run(instances_csv: Path, out: Path, *, echo: Callable[[str], None] = print,
        seed: int = 0, executor: Any = None, device: str = "cpu") -> list[dict]:
    """Answer every instance (resuming) on ``executor`` (default: in this process),
    writing ``OUT/results.csv`` as answers arrive; return its rows in instance order.
    Branch and bound runs on ``device`` (checked here, before any instance)."""
    try:
        torch_device(device)
    except ValueError as exc:
        raise VnncompError(str(exc)) from None
    from bench.executors import InProcess

    instances = read_instances(instances_csv)
    root = Path(instances_csv).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.csv"
    done: dict[tuple[str, str], dict] = {}
    if path.exists():
        for row in csv.DictReader(path.read_text().splitlines()):
            done[(row["onnx"], row["vnnlib"])] = row
    digests: dict[Path, str] = {}
    tasks = []
    for index, item in enumerate(instances):
        if (item.onnx, item.vnnlib) in done:
            continue
        onnx_path = (root / item.onnx).resolve()
        if onnx_path not in digests:
            try:
                digests[onnx_path] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
            except OSError as exc:
                digests[onnx_path] = f"unreadable: {exc.strerror}"
        tasks.append(InstanceTask(index, item, onnx_path, root / item.vnnlib,
                                  digests[onnx_path], seed, device))
    nodes: dict[tuple[str, str], int] = {}

    def finished(task: InstanceTask, result: Answer) -> None:
        item = task.item
        if result.counterexample is not None:
            text = counterexample_text(*result.counterexample).encode()
            atomic_write(out / "counterexamples" / f"{task.index}.counterexample",
                         lambda handle: handle.write(text))
        done[(item.onnx, item.vnnlib)] = {
            "onnx": item.onnx, "vnnlib": item.vnnlib,
            "prepare_time": f"{result.prepare_time:.4f}", "result": result.result,
            "run_time": f"{result.run_time:.4f}"}
        nodes[(item.onnx, item.vnnlib)] = result.nodes
        echo(f"{task.index + 1}/{len(instances)} {item.onnx} {item.vnnlib}: {result.result} "
             f"({result.run_time:.2f} s){'; ' + result.message if result.message else ''}")
        _write_results(path, [done[(i.onnx, i.vnnlib)] for i in instances
                              if (i.onnx, i.vnnlib) in done])

    (executor or InProcess()).map(answer, tasks, finished)
    return [{**done[(i.onnx, i.vnnlib)], "nodes": nodes[(i.onnx, i.vnnlib)]}
            if (i.onnx, i.vnnlib) in nodes else done[(i.onnx, i.vnnlib)] for i in instances]


def _write_results(path: Path, rows: list[dict]) -> None:
    lines = [",".join(str(row[f]) for f in RESULT_FIELDS) for row in rows]
    text = ("\n".join([",".join(RESULT_FIELDS), *lines]) + "\n").encode()
    atomic_write(path, lambda handle: handle.write(text))


def score(rows: list[dict], reference_csv: Path) -> tuple[int, list[str]]:
    """The competition's score against reference verdicts, and every disagreement."""
    try:
        reference = {(r["onnx"], r["vnnlib"]): r["verdict"].strip() for r in
                     csv.DictReader(Path(reference_csv).read_text().splitlines())}
    except (OSError, KeyError, UnicodeDecodeError) as exc:
        raise VnncompError(f"{reference_csv}: needs columns onnx,vnnlib,verdict ({exc})") \
            from None
    total, disagreements = 0, []
    for row in rows:
        truth = reference.get((row["onnx"], row["vnnlib"]))
        if truth not in ("sat", "unsat") or row["result"] not in ("sat", "unsat"):
            continue
        if row["result"] == truth:
            total += SCORES["correct"]
        else:
            total += SCORES["incorrect"]
            disagreements.append(f"{row['onnx']} {row['vnnlib']}: ours {row['result']}, "
                                 f"reference {truth}")
    return total, disagreements
