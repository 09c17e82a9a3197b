"""Run the grid (models x eps x methods x samples) and write records, leaderboard, gaps.

Samples are processed in fixed batches (``batch_size``, aligned on sample index),
each seeded from ``(seed, weights hash, method, eps, first sample)`` alone, so a batch gives
the same numbers whether it runs in one go or after an interruption. Records of a
batch are appended as soon as it finishes; a rerun skips every batch whose records
exist with the same model weights and plugin configuration.

Verifiers get ``x`` in float64; attacks get it in float32. The harness projects every
``x_adv`` into ``B_eps(x) ∩ [0, 1]^d`` and evaluates margins with a float64 copy of
the network, so the attack's lower bound ``L`` is exact for the point it found.
"""

from __future__ import annotations

import copy
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from tqdm import tqdm

from models import MLP, Card, ModelError, weights_summary
from models import load as load_model
from models.files import atomic_write

from . import data
from .contract import hook, is_exact, margins, project, statistics, supports
from .leaderboard import tabulate, write_csv
from .limits import PluginTimeout, time_limit
from .records import RECORDS_NAME, RecordStore, key_of
from .registry import PluginInfo

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


def _evaluate_verifier(method: Method, net: MLP, x64: torch.Tensor, y: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(max_j U, certified)``; raises ``ValueError`` on a malformed output."""
    with torch.no_grad():
        upper = method.plugin.bound(net, x64, y, eps)
    if not isinstance(upper, torch.Tensor) or tuple(upper.shape) != (len(y), net.num_classes):
        raise ValueError(f"bound returned shape {tuple(getattr(upper, 'shape', ()))}, "
                         f"expected {(len(y), net.num_classes)}")
    upper = upper.detach().to(torch.float64)
    upper = upper.scatter(1, y.view(-1, 1), float("-inf"))
    worst = upper.amax(dim=1)
    if torch.isnan(worst).any():
        raise ValueError("bound returned NaN")
    return worst, worst < 0


def _evaluate_attack(method: Method, net: MLP, net64: MLP, x: torch.Tensor, x64: torch.Tensor,
                     y: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(max_j L, broken)`` at the projected attack points."""
    x_adv = method.plugin.perturb(net, x, y, eps)
    if not isinstance(x_adv, torch.Tensor) or tuple(x_adv.shape) != tuple(x.shape):
        raise ValueError(f"perturb returned shape {tuple(getattr(x_adv, 'shape', ()))}, "
                         f"expected {tuple(x.shape)}")
    x_adv = x_adv.detach().to(torch.float64)
    if not torch.isfinite(x_adv).all():
        raise ValueError("perturb returned NaN or infinite points")
    with torch.no_grad():
        lower = margins(net64(project(x_adv, x64, eps)), y).amax(dim=1)
    return lower, lower >= 0


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


def _check_untouched(given: MLP, original_hash: str,
                     tensors: tuple[tuple[torch.Tensor, torch.Tensor], ...]) -> None:
    """Raise ``ValueError`` if a plugin changed the network or the inputs it was given.

    Each plugin call gets its own copies, so the harness and the other plugins never
    see such a change; the call that made it is recorded as ``error``.
    """
    if weights_summary(given) != original_hash:
        raise ValueError("the plugin modified the network it was given (its weights' hash "
                         "changed); its results are discarded")
    if any(not torch.equal(mine, theirs) for mine, theirs in tensors):
        raise ValueError("the plugin modified its input tensors in place; its results "
                         "are discarded")


class Runner:
    """Executes a :class:`RunSpec`; ``echo`` receives one-line progress messages."""

    def __init__(self, spec: RunSpec, echo: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        self.echo = echo or (lambda line: print(line, file=sys.stderr))
        self._seen: dict[int, int] = {}
        self._identity: dict[str, str] = {}      # model -> weights hash (seeds the batches)

    def run(self) -> RunResult:
        spec = self.spec
        x64, y, what = self._inputs()
        x = x64.to(torch.float32)
        networks = {name: self._load(name) for name in spec.models}
        self._identity = {name: weights_summary(net) for name, (net, _) in networks.items()}
        for name, (net, _) in networks.items():
            if net.input_dim != x.shape[1] or net.num_classes <= int(y.max()):
                raise ModelError(f"model {name} maps {net.input_dim} inputs to "
                                 f"{net.num_classes} outputs; {what} has {x.shape[1]} inputs "
                                 f"per image and labels up to {int(y.max())}")
        computed = 0
        with RecordStore(spec.out) as store:
            for method in spec.methods:
                keep = hook(method.plugin, "cache_in")
                if callable(keep):
                    keep((spec.cache or spec.out / CACHE_DIR) / method.name)
            existing = store.load()
            todo = self._plan(networks, existing)
            bar = tqdm(total=sum(stop - start for *_, start, stop in todo), unit="sample",
                       disable=not spec.progress, file=sys.stderr, dynamic_ncols=True)
            nets64 = {name: net.float64_copy() for name, (net, _) in networks.items()}
            stats: list[dict[str, Any]] = []
            for model, method, eps, start, stop in todo:
                net, card = networks[model]
                bar.set_description(f"{model} {method.name} eps={eps:g}")
                records = self._batch(model, card, net, nets64[model], method, eps,
                                      x[start:stop], x64[start:stop], y[start:stop], start)
                store.append(records)
                existing.update((key_of(r), r) for r in records)
                computed += 1
                bar.update(stop - start)
                stats += self._new_statistics(model, method, eps, start)
            bar.close()
            solver_stats = self._write_statistics(stats, self._identity)
        exact = {m.name for m in spec.methods if is_exact(m.plugin)}
        wanted = [existing[(model, m.name, float(eps), i)] for model in spec.models
                  for eps in spec.eps for m in spec.methods for i in range(spec.n)]
        board, gap_table, unsound = tabulate(wanted, exact)
        write_csv(board, spec.out / LEADERBOARD_NAME)
        write_csv(gap_table, spec.out / GAPS_NAME)
        write_csv(unsound, spec.out / VIOLATIONS_NAME)
        return RunResult(board, gap_table, unsound, computed, solver_stats, wanted)

    def _new_statistics(self, model: str, method: Method, eps: float,
                        start: int) -> list[dict[str, Any]]:
        """Per-solve statistics a plugin gathered since the last call (``statistics()``).

        A row with ``row`` (its index within the batch) is per sample: it gets ``eps``
        and ``sample`` (the test-set index) in its place.
        """
        seen = self._seen.get(id(method.plugin), 0)
        rows = statistics(method.plugin)[seen:]
        self._seen[id(method.plugin)] = seen + len(rows)
        if rows:
            self.echo(f"{method.name} on {model}: {solve_summary(pd.DataFrame(rows))}")
        out = []
        for row in rows:
            row = dict(row)
            if "row" in row:
                row = {"eps": float(eps), "sample": start + int(row.pop("row")), **row}
            out.append({"model": model, "method": method.name, **row})
        return out

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

    def _load(self, name: str) -> tuple[MLP, Card]:
        if self.spec.model_dir is None:
            return load_model(name)
        return load_model(name, self.spec.model_dir)

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

    def _plan(self, networks: dict[str, tuple[MLP, Card]],
              existing: dict) -> list[tuple[str, Method, float, int, int]]:
        """Batches with at least one sample lacking a current record: none yet, or one of
        other weights, plugin configuration or version, another seed, or one that failed
        (``error`` and ``timeout`` are retried, e.g. under a larger ``--time-limit``)."""
        todo = []
        for model, (_, card) in networks.items():
            for eps in self.spec.eps:
                for method in self.spec.methods:
                    config = repr(method.plugin)
                    for start in range(0, self.spec.n, self.spec.batch_size):
                        stop = min(start + self.spec.batch_size, self.spec.n)
                        seed = batch_seed(self.spec.seed, self._identity[model], method.name,
                                          eps, start)
                        for i in range(start, stop):
                            record = existing.get((model, method.name, float(eps), i))
                            if (record is None or record["config"] != config
                                    or record["model_sha256"] != card.weights_sha256
                                    or record["version"] != method.info.origin
                                    or record["seed"] != seed
                                    or record["status"] in ("error", "timeout")):
                                todo.append((model, method, eps, start, stop))
                                break
        return todo

    def _batch(self, model: str, card: Card, net: MLP, net64: MLP, method: Method,
               eps: float, x: torch.Tensor, x64: torch.Tensor, y: torch.Tensor,
               start: int) -> list[dict[str, Any]]:
        seed = batch_seed(self.spec.seed, self._identity[model], method.name, eps, start)
        torch.manual_seed(seed)
        status, message = "ok", ""
        bound = torch.full((len(y),), float("nan"), dtype=torch.float64)
        decided: list[bool | None] = [None] * len(y)
        began = time.perf_counter()
        if method.kind == "verifier" and not supports(method.plugin, net):
            status, message = "n/a", f"{method.name} does not support this network"
        else:
            limit = self.spec.time_limit * len(y) if self.spec.time_limit else None
            own_net, own_x, own_x64, own_y = copy.deepcopy(net), x.clone(), x64.clone(), y.clone()
            try:
                with time_limit(limit):
                    if method.kind == "verifier":
                        bound, flags = _evaluate_verifier(method, own_net, own_x64, own_y, eps)
                    else:
                        bound, flags = _evaluate_attack(method, own_net, net64, own_x, x64,
                                                        own_y, eps)
                _check_untouched(own_net, self._identity[model],
                                 ((own_x, x), (own_x64, x64), (own_y, y)))
                decided = [bool(v) for v in flags]
            except PluginTimeout as exc:
                status, message = "timeout", str(exc)
                self.echo(f"{method.name} on {model} eps={eps:g} samples {start}.."
                          f"{start + len(y) - 1}: {message}")
            except Exception as exc:  # a failing plugin is recorded, the grid goes on
                status, message = "error", f"{type(exc).__name__}: {exc}"[:500]
                self.echo(f"{method.name} on {model} eps={eps:g} samples {start}.."
                          f"{start + len(y) - 1}: {message}")
        seconds = (time.perf_counter() - began) / len(y)
        return [{"model": model, "model_sha256": card.weights_sha256, "method": method.name,
                 "kind": method.kind, "eps": float(eps), "sample": start + i,
                 "label": int(y[i]), "bound": float(bound[i]), "decided": decided[i],
                 "seconds": seconds, "status": status, "message": message,
                 "config": repr(method.plugin), "version": method.info.origin, "seed": seed}
                for i in range(len(y))]
