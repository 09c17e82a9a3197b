"""Run the grid (models x eps x methods x samples) and write records, leaderboard, gaps.

Samples are processed in fixed batches (``batch_size``, aligned on sample index),
each seeded from ``(seed, weights hash, method, eps, first sample)`` alone, so a batch gives
the same numbers whether it runs in one go or after an interruption. Records of a
batch are appended as soon as it finishes; a rerun skips every batch whose records
exist with the same model weights, plugin configuration, version and code fingerprint.

The runner plans (which batches lack current records), builds tasks
(:mod:`bench.tasks`: the batches, and the pieces of work they share, such as SDP pair
solves), hands them to an executor (:mod:`bench.executors`: in process, or Dask
workers) and stores what comes back; only it writes the records.

Verifiers get ``x`` in float64; attacks get it in float32. The harness projects every
``x_adv`` into ``B_eps(x) ∩ [0, 1]^d`` and evaluates margins with a float64 copy of
the network, so the attack's lower bound ``L`` is exact for the point it found.
"""

from __future__ import annotations

import json
import sys
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from tqdm import tqdm

from bench import data
from bench.contract import hook, is_exact, supports
from bench.executors import Executor, InProcess
from bench.fingerprint import code_fingerprint
from bench.leaderboard import tabulate, write_csv
from bench.records import RECORDS_NAME, RecordStore, key_of
from bench.registry import PluginInfo
from bench.tasks import (
    BatchResult,
    BatchTask,
    Loaded,
    NetworkRef,
    SharedOutcome,
    SharedTask,
    failing,
)
from bench.tasks import reference as network_reference
from models import ModelError
from models.files import atomic_write

LEADERBOARD_NAME = "leaderboard.csv"
GAPS_NAME = "gaps.csv"
VIOLATIONS_NAME = "violations.csv"
SOLVER_STATS_NAME = "solver_stats.csv"
CACHE_DIR = "cache"


@dataclass
class Method:
    """A chosen plugin instance with where it came from."""

    info: PluginInfo
    plugin: Any

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def code(self) -> str:
        """Fingerprint of the plugin's source (:func:`bench.fingerprint.code_fingerprint`)."""
        return code_fingerprint(type(self.plugin))


@dataclass
class RunSpec:
    models: list[str]
    methods: list[Method]
    eps: list[float]
    n: int
    out: Path
    seed: int = 0
    batch_size: int = 250
    model_dir: Path | None = None
    progress: bool = True
    time_limit: float | None = None     # seconds per sample, applied to each batch call
    dataset: Path | None = None         # a .npz of images and labels (default: MNIST test)
    cache: Path | None = None           # plugins' caches (default: OUT/cache); runs may share it
    executor: Executor | None = None    # where tasks run (default: in this process)


@dataclass
class RunResult:
    leaderboard: pd.DataFrame
    gaps: pd.DataFrame
    violations: pd.DataFrame
    computed_batches: int = 0
    solver_stats: pd.DataFrame | None = None
    records: list[dict[str, Any]] | None = None   # the run's records, grid order


DATASET_MARKER = "dataset.sha256"   # in OUT when the run is not on the MNIST test set
DEFAULT_DATASET = "mnist-test"


def batch_seed(seed: int, weights: str, method: str, eps: float, start: int) -> int:
    """The batch's seed, from the run's seed, the network's weights (not its name, so the
    same network under another name or file format draws the same restarts), the method,
    eps and the batch's first sample."""
    return zlib.crc32(f"{seed}/{weights}/{method}/{eps!r}/{start}".encode())


def solve_summary(frame: pd.DataFrame) -> str:
    """One line about a batch of solve statistics (gaps, fallbacks, verdicts, time)."""
    parts = [f"{len(frame)} solves"]
    if "rel_gap" in frame:
        gaps = pd.to_numeric(frame["rel_gap"], errors="coerce").dropna()
        if len(gaps):
            parts.append(f"max relative gap {gaps.max():.2e}")
    if "status" in frame:
        parts.append(f"{int(frame['status'].astype(str).str.startswith('fallback').sum())} "
                     "fallbacks")
    if "verdict" in frame:
        parts += [f"{count} {verdict}" for verdict, count in
                  sorted(frame["verdict"].value_counts().items())]
    if "seconds" in frame:
        parts.append(f"{frame['seconds'].sum():.1f} s in all")
    return ", ".join(parts)


class Runner:
    """Executes a :class:`RunSpec`; ``echo`` receives one-line progress messages."""

    def __init__(self, spec: RunSpec, echo: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        self.echo = echo or (lambda line: print(line, file=sys.stderr))

    def run(self) -> RunResult:
        spec = self.spec
        x64, y, what = self._inputs()
        networks = {name: network_reference(name, spec.model_dir) for name in spec.models}
        for name, (_, loaded) in networks.items():
            net = loaded.net
            if net.input_dim != x64.shape[1] or net.num_classes <= int(y.max()):
                raise ModelError(f"model {name} maps {net.input_dim} inputs to "
                                 f"{net.num_classes} outputs; {what} has {x64.shape[1]} "
                                 f"inputs per image and labels up to {int(y.max())}")
        with RecordStore(spec.out) as store:
            for method in spec.methods:
                keep = hook(method.plugin, "cache_in")
                if callable(keep):
                    keep((spec.cache or spec.out / CACHE_DIR) / method.name)
            existing = store.load()
            pieces, batches = self._tasks(self._plan(networks, existing), networks, x64, y)
            stats: list[dict[str, Any]] = []
            seen: set[str] = set()
            bar = tqdm(total=sum(b.size for b in batches), unit="sample", file=sys.stderr,
                       disable=not spec.progress, dynamic_ncols=True)
            piece_bar = tqdm(total=len(pieces), unit="piece", desc="shared work",
                             file=sys.stderr, disable=not spec.progress or not pieces,
                             dynamic_ncols=True, leave=False)

            def batch_done(task: BatchTask, result: BatchResult) -> None:
                store.append(result.records)
                existing.update((key_of(r), r) for r in result.records)
                for line in result.messages:
                    self.echo(line)
                fresh = []        # a row many batches repeat (an SDP pair's) counts once
                for row in result.statistics:
                    text = json.dumps(row, sort_keys=True, default=str)
                    if text not in seen:
                        seen.add(text)
                        fresh.append(row)
                if fresh:
                    self.echo(f"{task.method} on {task.model}: "
                              f"{solve_summary(pd.DataFrame(fresh))}")
                stats.extend(fresh)
                bar.set_description(f"{task.model} {task.method} eps={task.eps:g}")
                bar.update(task.size)

            def piece_done(task: SharedTask, outcome: SharedOutcome) -> None:
                if outcome.status != "ok":
                    self.echo(f"shared work {task.key.split('/', 1)[1]}: {outcome.message}")
                piece_bar.update(1)

            (spec.executor or InProcess()).execute(pieces, batches, batch_done, piece_done)
            piece_bar.close()
            bar.close()
            solver_stats = self._write_statistics(
                stats, {name: loaded.identity for name, (_, loaded) in networks.items()})
        exact = {m.name for m in spec.methods if is_exact(m.plugin)}
        wanted = [existing[(model, m.name, float(eps), i)] for model in spec.models
                  for eps in spec.eps for m in spec.methods for i in range(spec.n)]
        board, gap_table, unsound = tabulate(wanted, exact)
        write_csv(board, spec.out / LEADERBOARD_NAME)
        write_csv(gap_table, spec.out / GAPS_NAME)
        write_csv(unsound, spec.out / VIOLATIONS_NAME)
        return RunResult(board, gap_table, unsound, len(batches), solver_stats, wanted)

    def _tasks(self, todo: list[tuple[str, Method, float, int, int]],
               networks: dict[str, tuple[NetworkRef, Loaded]], x64: torch.Tensor,
               y: torch.Tensor) -> tuple[dict[str, SharedTask], list[BatchTask]]:
        """The batches to run, and the pieces of shared work they need (each once per
        network; a piece's seconds are charged to the first batch that needs it)."""
        pieces: dict[str, SharedTask] = {}
        batches = []
        workers = (self.spec.executor or InProcess()).workers
        for model, method, eps, start, stop in todo:
            ref, loaded = networks[model]
            x_b, y_b = x64[start:stop], y[start:stop]
            limit = self.spec.time_limit * (stop - start) if self.spec.time_limit else None
            shared, charged = [], []
            declare = hook(method.plugin, "shared_work")
            if callable(declare) and supports(method.plugin, loaded.net):
                try:
                    declared = dict(declare(loaded.net, x_b, y_b, eps, workers))
                except Exception as exc:     # noqa: BLE001 - recorded as error by the batch
                    declared = {f"failed/{method.name}/{eps!r}/{start}":
                                partial(failing, f"shared_work: {type(exc).__name__}: {exc}")}
                for key, work in declared.items():
                    full = f"{loaded.identity}/{key}"
                    if full not in pieces:
                        pieces[full] = SharedTask(ref, full, work, limit)
                        charged.append(full)
                    shared.append(full)
            batches.append(BatchTask(
                network=ref, model=model, method=method.name, kind=method.kind,
                plugin=method.plugin, config=repr(method.plugin), origin=method.info.origin,
                code=method.code,
                eps=float(eps), start=start, x64=x_b, y=y_b,
                seed=batch_seed(self.spec.seed, loaded.identity, method.name, eps, start),
                limit=limit, shared=tuple(shared), charged=tuple(charged)))
        return pieces, batches

    def _write_statistics(self, rows: list[dict[str, Any]],
                          current: dict[str, str]) -> pd.DataFrame | None:
        """Merge new solve statistics into ``OUT/solver_stats.csv`` (newest per solve wins).

        Rows of a model of this run whose ``weights`` are not its current weights are
        stale (an older network of that name) and dropped.
        """
        path = self.spec.out / SOLVER_STATS_NAME
        new = pd.DataFrame(rows)
        if path.exists():
            old = pd.read_csv(path, dtype={"weights": str})
            if "weights" in old.columns:
                stale = old["model"].isin(list(current)) & old["weights"].notna() & \
                    (old["weights"].astype(str) != old["model"].map(current).astype(str))
                old = old[~stale]
            new = pd.concat([old, new], ignore_index=True) if len(new) else old
        if len(new) == 0:
            return None
        keys = [c for c in ("model", "method", "weights", "pair", "eps", "sample")
                if c in new.columns]
        new = new.drop_duplicates(subset=keys, keep="last")
        write_csv(new, path)
        return new

    def _inputs(self) -> tuple[torch.Tensor, torch.Tensor, str]:
        """``(x (n, d) float64, y (n,), description)`` of the first ``n`` test images, and
        the check that ``OUT`` holds no records of another dataset (records are keyed by
        sample index, so mixing two datasets in one folder would mix their samples)."""
        spec = self.spec
        if spec.dataset is None:
            images, labels = data.mnist_test(spec.n)
            x64, y = data.to_tensor(images, torch.float64), torch.from_numpy(labels)
            name, digest = "the MNIST test set", DEFAULT_DATASET
        else:
            x64, y, digest = data.read_dataset(spec.dataset)
            name = str(spec.dataset)
            if spec.n > len(y):
                raise data.DataError(f"--n is {spec.n} but {name} has {len(y)} images")
            x64, y = x64[:spec.n], y[:spec.n]
        marker = spec.out / DATASET_MARKER
        found = marker.read_text().strip() if marker.exists() else (
            DEFAULT_DATASET if (spec.out / RECORDS_NAME).exists() else None)
        if found is not None and found != digest:
            other = "the MNIST test set" if found == DEFAULT_DATASET else f"sha256 {found[:12]}"
            raise data.DataError(f"{spec.out} holds results on another dataset ({other}); "
                                 "choose another --out")
        if spec.dataset is not None and found is None:
            spec.out.mkdir(parents=True, exist_ok=True)
            text = (digest + "\n").encode()
            atomic_write(marker, lambda handle: handle.write(text))
        return x64, y, name

    def _plan(self, networks: dict[str, tuple[NetworkRef, Loaded]],
              existing: dict) -> list[tuple[str, Method, float, int, int]]:
        """Batches with at least one sample lacking a current record: none yet, or one of
        other weights, plugin configuration, version or code (a record of schema 1 has
        no code fingerprint and is judged by the rest), another seed, or one that failed
        (``error`` and ``timeout`` are retried, e.g. under a larger ``--time-limit``)."""
        todo = []
        for model, (ref, loaded) in networks.items():
            for eps in self.spec.eps:
                for method in self.spec.methods:
                    config, code = repr(method.plugin), method.code
                    for start in range(0, self.spec.n, self.spec.batch_size):
                        stop = min(start + self.spec.batch_size, self.spec.n)
                        seed = batch_seed(self.spec.seed, loaded.identity, method.name,
                                          eps, start)
                        for i in range(start, stop):
                            record = existing.get((model, method.name, float(eps), i))
                            if (record is None or record["config"] != config
                                    or record["model_sha256"] != ref.weights_sha256
                                    or record["version"] != method.info.origin
                                    or record["code"] not in ("", code)
                                    or record["seed"] != seed
                                    or record["status"] in ("error", "timeout")):
                                todo.append((model, method, eps, start, stop))
                                break
        return todo
