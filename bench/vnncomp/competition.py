"""``bench vnncomp``: a VNN-COMP benchmark in the competition's format.

Input: ``instances.csv`` rows ``onnx,vnnlib,timeout`` (paths relative to the CSV's
folder). Output, in ``OUT``: ``results.csv`` rows ``onnx,vnnlib,prepare_time,result,
run_time`` with result ``sat`` / ``unsat`` / ``timeout`` / ``unknown`` / ``error`` (then
the timeout and both files' SHA-256, :mod:`bench.vnncomp.files`), and for each ``sat`` a
counterexample file ``counterexamples/NAME-KEY.counterexample``, named by the instance's
digests, in the competition's form ``((X_0 v) ... (Y_0 v) ...)``.

The portfolio per instance, cheapest first, stopping at the first decisive answer; the
instance's timeout is checked between stages and inside branch and bound. A stage that
cannot be interrupted there (one long bound computation) is stopped by the executor
:data:`GRACE` seconds past the timeout (``SIGALRM`` in process; on Dask workers the
worker process is ended) and the answer is ``timeout``. With ``--executor local`` or
``dask`` the instances run in parallel on the workers:

1. attacks: signed-gradient ascent, APGD on the violation and on its DLR form, then
   Square, inside the box on each unsafe group's violation ``min_i c_i . f(x) - d_i``,
   from the box's centre and random starts (:mod:`attacks.property_attacks`). A
   candidate counts only after the harness re-checks it: inside the box, and violating
   the property by a float64 forward pass *and* by onnxruntime on the ONNX file itself.
   Then the answer is ``sat``.
2. the verifiers that bound general specifications (``bound_property``), cheapest first
   (``ibp``, ``crown``, ``lp``): when every group has a row whose upper bound is ``< 0``
   the answer is ``unsat``.
3. complete verification for the time left: branch and bound with beta-CROWN bounds
   (:func:`verifiers.bab.search.decide`), whose counterexample goes through the same re-check;
   at the limit the answer is ``timeout`` (never a guess). An exception is ``error`` for
   that instance; the rest complete.

A network with an operator certbench has no bound rule for is not an ``error``: the
instance gets an attack through onnxruntime alone (:mod:`bench.vnncomp.onnx_only`),
``sat`` with a counterexample checked by onnxruntime, or ``unknown`` with the reason.

With ``--reference VERDICTS.csv`` (the same columns plus ``verdict``) it scores as the
competition does (+10 for a correct sat/unsat, -150 for an incorrect one, 0 otherwise)
and lists every disagreement.

Rerunning into the same folder resumes, trusting nothing it reads back: an answer is
kept only if its ONNX and VNNLIB files still have the digests it was found for; ``sat``
only with its counterexample file, re-checked (inside the box, float64 forward pass and
onnxruntime) against the current files; ``timeout`` and ``unknown`` only at the same
timeout; ``error`` never. Everything else is solved again, so a resumed run answers as a
fresh one would.
"""


from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bench.contract import Property, torch_device
from bench.limits import PluginTimeout, time_limit
from bench.properties import read_vnnlib_cases
from bench.tasks import NetworkRef
from bench.vnncomp.files import (
    Instance,
    VnncompError,
    answer_digest,
    counterexample_name,
    counterexample_text,
    file_digest,
    read_counterexample,
    read_instances,
    read_results,
    write_results,
)
from bench.vnncomp.portfolio import (
    Answer,
    confirmed,
    confirmed_in_some_case,
    default_verifiers,
    solve_cases,
)
from models import MLP
from models.files import atomic_write
from models.onnx_import import OnnxImportError

SCORES = {"correct": 10, "incorrect": -150}
RESUMABLE = ("sat", "unsat", "timeout", "unknown")


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


def property_file(name: str, index: int, eps: float, standard: bool = False) -> str:
    """The VNNLIB file name of test image ``index``'s property at radius ``eps`` (the
    VNN-LIB 2.0 one with ``standard``)."""
    return f"{name}_{index}_eps{eps!r}{'.v2' if standard else ''}.vnnlib"


INSTANCE_LISTS = {False: "instances.csv", True: "instances-v2.csv"}


def instance_files(name: str, indices: list[int], radii: list[float]) -> list[str]:
    """Every file :func:`write_instances` writes beside the ONNX file (to check first)."""
    return [property_file(name, index, eps, standard) for standard in (False, True)
            for eps in radii for index in indices] + list(INSTANCE_LISTS.values())


def write_instances(net: MLP, name: str, onnx_path: Path, indices: list[int],
                    radii: list[float], timeout: float) -> list[str]:
    """Robustness properties of test images ``indices`` at each radius beside
    ``onnx_path``, in both dialects: the VNN-COMP one listed in ``instances.csv``, VNN-LIB
    2.0 (``*.v2.vnnlib``, ``real`` declarations over the ONNX file's shapes) in
    ``instances-v2.csv``; returns the rows of the first."""
    from bench.data import mnist_test, to_tensor
    from bench.properties import query_text, write_vnnlib
    from models.onnx_import import onnx_io_shapes

    images, labels = mnist_test()
    x = to_tensor(images[indices], torch.float64)
    folder = Path(onnx_path).parent
    shapes = onnx_io_shapes(onnx_path, net.input_dim, net.num_classes)
    rows: dict[bool, list[str]] = {False: [], True: []}
    for eps in radii:
        for n, index in enumerate(indices):
            prop = Property.robustness(x[n], int(labels[index]), eps, net.num_classes)
            for standard in (False, True):
                file = property_file(name, index, eps, standard)
                if standard:
                    text = query_text([prop], *shapes).encode()
                    atomic_write(folder / file, lambda handle, t=text: handle.write(t))
                else:
                    write_vnnlib(prop, folder / file)
                rows[standard].append(f"{Path(onnx_path).name},{file},{timeout:g}")
    for standard, listing in INSTANCE_LISTS.items():
        text = ("\n".join(rows[standard]) + "\n").encode()
        atomic_write(folder / listing, lambda handle, t=text: handle.write(t))
    return rows[False]


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
    command: tuple[str, ...] | None = None     # a standard solver's command (else ours)
    workdir: Path | None = None                # where its queries are written

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
            try:
                net = NetworkRef(str(task.onnx_path), None, task.weights_sha256).load().net
            except OnnxImportError as exc:
                if task.command is not None:
                    raise
                return _unimported(task, str(exc), time.perf_counter() - started)
            prepare = time.perf_counter() - started
            cases = read_vnnlib_cases(task.vnnlib_path, num_inputs=net.input_dim,
                                      num_outputs=net.num_classes)
            if task.command is not None:
                result = answer_external(task, net, cases)
            else:
                result = solve_cases(net, cases, task.item.timeout, task.onnx_path,
                                     default_verifiers(), task.seed, device=task.device)
        result.prepare_time = prepare
        return result
    except PluginTimeout:
        return task.timed_out()
    except Exception as exc:     # noqa: BLE001 (one broken instance is "error", the rest run)
        return Answer("error", 0.0, 0.0, message=f"{type(exc).__name__}: {exc}")


def _unimported(task: InstanceTask, reason: str, prepare: float) -> Answer:
    """An instance whose network has an operator without a bound rule: the
    onnxruntime-only search (:mod:`bench.vnncomp.onnx_only`) on the file as planned
    (its digest re-checked), ``sat`` or ``unknown``."""
    from bench.vnncomp.onnx_only import attack_only, onnx_sizes

    if file_digest(task.onnx_path) != task.weights_sha256:
        raise VnncompError(f"{task.onnx_path} changed on disk since the run was planned")
    num_inputs, num_outputs = onnx_sizes(task.onnx_path)
    cases = read_vnnlib_cases(task.vnnlib_path, num_inputs=num_inputs,
                              num_outputs=num_outputs)
    result = attack_only(task.onnx_path, cases, task.item.timeout - prepare, reason,
                         task.seed)
    result.prepare_time = prepare
    return result


def answer_external(task: InstanceTask, net: MLP, cases: list[Property]) -> Answer:
    """A standard solver's answer on the instance (:mod:`verifiers.external.instances`),
    trusted only as far as it checks: its status, or ``error`` with the reason when it
    misbehaved; a ``sat`` only if its point lies in an input box and violates that case's
    property by a float64 forward pass and by onnxruntime
    (:func:`bench.vnncomp.portfolio.confirmed`), else ``error``."""
    from verifiers.external.instances import solve_instance

    assert task.command is not None and task.workdir is not None
    outcome = solve_instance(list(task.command), task.onnx_path, cases, task.item.timeout,
                             task.workdir)
    if outcome.status != "sat":
        return Answer(outcome.status, 0.0, outcome.seconds, message=outcome.reason)
    point = torch.from_numpy(next(iter(outcome.values.values())))
    net64 = net.float64_copy().requires_grad_(False)
    inside = [case for case in cases
              if bool(case.contains(point[None])[0])]
    for case in inside:
        ok, outputs = confirmed(net64, case, point, task.onnx_path)
        if ok:
            return Answer("sat", 0.0, outcome.seconds, (point.numpy(), outputs))
    reason = ("its point violates the property neither by a float64 forward pass nor by "
              "onnxruntime" if inside else "its point lies outside every input box")
    return Answer("error", 0.0, outcome.seconds, message=f"answered sat, but {reason}")


def run(instances_csv: Path, out: Path, *, echo: Callable[[str], None] = print,
        seed: int = 0, executor: Any = None, device: str = "cpu",
        command: list[str] | None = None) -> list[dict]:
    """Answer every instance (resuming what still checks, see the module doc) on
    ``executor`` (default: in this process), writing ``OUT/results.csv`` as answers
    arrive; return its rows in instance order. Branch and bound runs on ``device``.
    With ``command`` (a standard solver's argv words) that solver answers instead of the
    portfolio (:func:`answer_external`). Every argument and the files already in ``out``
    are checked before anything runs."""
    try:
        torch_device(device)
    except ValueError as exc:
        raise VnncompError(str(exc)) from None
    from bench.executors import InProcess

    if out.exists() and not out.is_dir():
        raise VnncompError(f"--out {out} is a file, not a folder")
    instances = read_instances(instances_csv)
    root = Path(instances_csv).resolve().parent
    path = out / "results.csv"
    earlier = read_results(path)
    digests: dict[Path, str] = {}

    def digest(file: Path) -> str:
        if file not in digests:
            digests[file] = file_digest(file)
        return digests[file]

    done: dict[tuple[str, str], dict] = {}
    checks: dict[tuple[str, str], dict[str, str]] = {}    # per instance: what a row records
    tasks = []
    for index, item in enumerate(instances):
        if item.key in checks:                   # the same instance twice: answered once
            continue
        onnx_path, vnnlib_path = (root / item.onnx).resolve(), (root / item.vnnlib).resolve()
        row = checks[item.key] = {
            "onnx": item.onnx, "vnnlib": item.vnnlib, "timeout": f"{item.timeout!r}",
            "onnx_sha256": digest(onnx_path), "vnnlib_sha256": digest(vnnlib_path)}
        kept = earlier.get(item.key)
        if kept is not None and _still_holds(kept, row, onnx_path, vnnlib_path, out):
            done[item.key] = {**kept, **row}
            continue
        tasks.append(InstanceTask(index, item, onnx_path, vnnlib_path, row["onnx_sha256"],
                                  seed, device, None if command is None else tuple(command),
                                  out / "queries"))
    out.mkdir(parents=True, exist_ok=True)
    nodes: dict[tuple[str, str], int] = {}
    if tasks and len(tasks) < len(instances):
        echo(f"resuming: {len(instances) - len(tasks)} answers kept, {len(tasks)} to solve")

    def finished(task: InstanceTask, result: Answer) -> None:
        item = task.item
        check = checks[item.key]
        cex = out / "counterexamples" / counterexample_name(
            check["onnx_sha256"], check["vnnlib_sha256"], item.vnnlib)
        if result.counterexample is not None:
            text = counterexample_text(*result.counterexample).encode()
            atomic_write(cex, lambda handle: handle.write(text))
        elif cex.exists():                    # an earlier sat of this instance, now not
            cex.unlink()
        done[item.key] = {**check, "prepare_time": f"{result.prepare_time:.4f}",
                          "result": result.result, "run_time": f"{result.run_time:.4f}",
                          "reason": result.message}
        done[item.key]["answer_sha256"] = answer_digest(done[item.key])
        nodes[item.key] = result.nodes
        echo(f"{task.index + 1}/{len(instances)} {item.onnx} {item.vnnlib}: {result.result} "
             f"({result.run_time:.2f} s){'; ' + result.message if result.message else ''}")
        write_results(path, [done[i.key] for i in instances if i.key in done])

    write_results(path, [done[i.key] for i in instances if i.key in done])   # what stands
    (executor or InProcess()).map(answer, tasks, finished)
    return [{**done[i.key], "nodes": nodes[i.key]} if i.key in nodes else done[i.key]
            for i in instances]


def _still_holds(kept: dict[str, str], row: dict[str, str], onnx_path: Path,
                 vnnlib_path: Path, out: Path) -> bool:
    """Whether an earlier answer may stand: found for these very files (digests), as
    written (its answer digest), not an ``error``, a ``timeout``/``unknown`` at this
    timeout, and a ``sat`` only with its counterexample file, re-checked now
    (:func:`bench.vnncomp.portfolio.confirmed`)."""
    if kept.get("result") not in RESUMABLE or row["onnx_sha256"].startswith("unreadable"):
        return False
    if any(kept.get(field) != row[field] for field in ("onnx_sha256", "vnnlib_sha256")):
        return False
    if kept.get("answer_sha256") != answer_digest(kept):    # edited since it was written
        return False
    if kept["result"] in ("timeout", "unknown") and kept.get("timeout") != row["timeout"]:
        return False
    if kept["result"] != "sat":
        return True
    try:
        net = NetworkRef(str(onnx_path), None, row["onnx_sha256"]).load().net
        cases = read_vnnlib_cases(vnnlib_path, num_inputs=net.input_dim,
                                  num_outputs=net.num_classes)
    except Exception:            # noqa: BLE001 - not loadable now: solve it (and say why)
        return False
    point = read_counterexample(out / "counterexamples" / counterexample_name(
        row["onnx_sha256"], row["vnnlib_sha256"], row["vnnlib"]), net.input_dim)
    if point is None:
        return False
    return confirmed_in_some_case(net.float64_copy().requires_grad_(False), cases,
                                  torch.from_numpy(point), onnx_path)


def score(rows: list[dict], reference: dict[tuple[str, str], str]) -> tuple[int, list[str]]:
    """The competition's score against reference verdicts (:func:`read_reference`), and
    every disagreement."""
    total, disagreements = 0, []
    for row in rows:
        truth = reference.get((row["onnx"], row["vnnlib"]))
        if truth is None or row["result"] not in ("sat", "unsat"):
            continue
        if row["result"] == truth:
            total += SCORES["correct"]
        else:
            total += SCORES["incorrect"]
            disagreements.append(f"{row['onnx']} {row['vnnlib']}: ours {row['result']}, "
                                 f"reference {truth}")
    return total, disagreements


def side_by_side(runs: dict[str, list[dict]], path: Path) -> Path:
    """``solvers.csv``: per instance (in the first run's order) each solver's result and
    run time, one table for every solver of a ``bench vnncomp`` run."""
    import csv
    import io

    first = next(iter(runs.values()))
    by_solver = {name: {(r["onnx"], r["vnnlib"]): r for r in rows} for name, rows in runs.items()}
    header = ["onnx", "vnnlib", "timeout"] + [f"{name} {field}" for name in runs
                                              for field in ("result", "run_time")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in first:
        key = (row["onnx"], row["vnnlib"])
        cells = [row["onnx"], row["vnnlib"], row.get("timeout", "")]
        for name in runs:
            theirs = by_solver[name].get(key, {})
            cells += [theirs.get("result", ""), theirs.get("run_time", "")]
        writer.writerow(cells)
    data = buffer.getvalue().encode()
    return atomic_write(path, lambda handle: handle.write(data))
