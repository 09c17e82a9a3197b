"""The grid's units of work, as pure functions any executor can run anywhere.

Two kinds of task, both plain picklable data with everything they need:

- :class:`SharedTask`: one piece of work that batches share (``shared_work`` hook:
  a group of SDP pair solves, a batch's MILP solves shared by ``milp`` and
  ``milp-cex``), named ``"WEIGHTS/KEY"`` so it is computed once per network;
  :func:`run_shared` gives a :class:`SharedOutcome`.
- :class:`BatchTask`: one plugin on one batch of samples at one eps; :func:`run_batch`
  hands it the outcomes of its shared pieces (``use_shared``), calls ``bound`` or
  ``perturb`` on private copies, and returns its records and solve statistics.

A task reads no global state: it loads its network from a :class:`NetworkRef` (memoised
per process, checked against the weights' SHA-256 the driver planned with), seeds
torch from the batch seed, and writes nothing but a plugin's own cache folder. Only the
driver writes the records. The in-task limit (:func:`bench.limits.time_limit`, by
``SIGALRM``) works where a task runs in a main thread, i.e. in process; the Dask
executor stops a task past its limit itself (:mod:`bench.executors`).
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from bench.contract import hook, margins, project, statistics, supports
from bench.limits import PluginTimeout, time_limit
from bench.records import SCHEMA
from models import MLP, Card, ModelError, weights_summary
from models import load as load_model


@dataclass(frozen=True)
class NetworkRef:
    """Where a task finds its network: a shipped name (or a name in ``model_dir``, or an
    ONNX path) and the SHA-256 of its weights file as the driver saw it."""

    name: str
    model_dir: Path | None
    weights_sha256: str

    def load(self) -> "Loaded":
        return _load(self)


@dataclass(frozen=True)
class Loaded:
    """A network as tasks use it: the model, its float64 copy, its weights hash, its card."""

    net: MLP
    net64: MLP
    identity: str          # weights_summary(net): seeds batches, detects modification
    card: Card


_LOADED: "OrderedDict[NetworkRef, Loaded]" = OrderedDict()
LOADED_KEPT = 8          # networks a process keeps loaded (a memo, not state: see _load)


def _read(name: str, model_dir: Path | None) -> Loaded:
    net, card = load_model(name) if model_dir is None else load_model(name, model_dir)
    return Loaded(net, net.float64_copy(), weights_summary(net), card)


def _remember(ref: NetworkRef, loaded: Loaded) -> Loaded:
    _LOADED[ref] = loaded
    _LOADED.move_to_end(ref)
    while len(_LOADED) > LOADED_KEPT:
        _LOADED.popitem(last=False)
    return loaded


def _load(ref: NetworkRef) -> Loaded:
    """The network of ``ref``, read once per process; a file whose SHA-256 is not the
    one planned with is an error (never another network's results under its name)."""
    if ref in _LOADED:
        return _LOADED[ref]
    loaded = _read(ref.name, ref.model_dir)
    if loaded.card.weights_sha256 != ref.weights_sha256:
        raise ModelError(f"network {ref.name} changed on disk since the run was planned "
                         f"(SHA-256 {loaded.card.weights_sha256[:12]}, planned "
                         f"{ref.weights_sha256[:12]})")
    return _remember(ref, loaded)


def reference(name: str, model_dir: Path | None) -> tuple[NetworkRef, Loaded]:
    """Load network ``name`` (the driver, when planning) and its reference for tasks."""
    loaded = _read(name, model_dir)
    ref = NetworkRef(name, None if model_dir is None else Path(model_dir),
                     loaded.card.weights_sha256)
    return ref, _remember(ref, loaded)


@dataclass
class SharedOutcome:
    """The result of a :class:`SharedTask`: ``status`` ok, error or timeout."""

    status: str
    value: Any = None
    message: str = ""
    seconds: float = 0.0


@dataclass
class SharedTask:
    """A piece of shared work (``work(net)``), under a limit in seconds (or none)."""

    network: NetworkRef
    key: str                          # "WEIGHTS/PLUGIN-KEY", unique per network and work
    work: Callable[[MLP], Any]
    limit: float | None = None

    def timed_out(self) -> SharedOutcome:
        return SharedOutcome("timeout", message=f"time limit of {self.limit:g} s exceeded "
                             "(shared work)", seconds=self.limit or 0.0)

    def lost(self, message: str) -> SharedOutcome:
        """The outcome when the executor lost the task (its workers died)."""
        return SharedOutcome("error", message=message)


def failing(message: str, net: MLP) -> Any:
    """The work of a piece the plugin could not declare: fails with ``message``."""
    raise RuntimeError(message)


def run_shared(task: SharedTask) -> SharedOutcome:
    """Compute one piece on a private copy of the network."""
    began = time.perf_counter()
    try:
        net = copy.deepcopy(task.network.load().net)
        with time_limit(task.limit):
            value = task.work(net)
        return SharedOutcome("ok", value, seconds=time.perf_counter() - began)
    except PluginTimeout as exc:
        return SharedOutcome("timeout", message=f"{exc} (shared work)",
                             seconds=time.perf_counter() - began)
    except Exception as exc:     # noqa: BLE001 - a failing plugin is recorded, the grid goes on
        return SharedOutcome("error", message=f"{type(exc).__name__}: {exc}"[:500],
                             seconds=time.perf_counter() - began)


@dataclass
class BatchResult:
    """What a batch gives the driver: records, solve statistics and lines to show."""

    records: list[dict[str, Any]]
    statistics: list[dict[str, Any]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


@dataclass
class BatchTask:
    """One plugin on samples ``start .. start + N - 1`` at one ``eps``."""

    network: NetworkRef
    model: str
    method: str
    kind: str                         # "verifier" or "attack"
    plugin: Any                       # the configured plugin (a copy travels to workers)
    config: str                       # its repr in the driver (what the records keep)
    origin: str                       # providing distribution and version
    code: str                         # fingerprint of the plugin's source
    eps: float
    start: int
    x64: torch.Tensor                 # (N, d) float64
    y: torch.Tensor                   # (N,)
    seed: int
    limit: float | None = None        # seconds for the whole plugin call
    shared: tuple[str, ...] = ()      # keys of the SharedTasks it needs, in order
    charged: tuple[str, ...] = ()     # of those, the ones whose seconds it pays

    @property
    def size(self) -> int:
        return len(self.y)

    @property
    def label(self) -> str:
        return (f"{self.method} on {self.model} eps={self.eps:g} samples {self.start}.."
                f"{self.start + self.size - 1}")

    def records(self, bound: torch.Tensor, decided: list[bool | None], seconds: float,
                status: str, message: str) -> list[dict[str, Any]]:
        """One record per sample (see :mod:`bench.records`)."""
        return [{"model": self.model, "model_sha256": self.network.weights_sha256,
                 "method": self.method, "kind": self.kind, "eps": float(self.eps),
                 "sample": self.start + i, "label": int(self.y[i]),
                 "bound": float(bound[i]), "decided": decided[i], "seconds": seconds,
                 "status": status, "message": message, "config": self.config,
                 "version": self.origin, "seed": self.seed, "schema": SCHEMA,
                 "code": self.code} for i in range(self.size)]

    def failed(self, status: str, message: str, seconds: float = 0.0) -> BatchResult:
        """Records of a batch that produced no bounds (``error`` or ``timeout``)."""
        nan = torch.full((self.size,), float("nan"), dtype=torch.float64)
        return BatchResult(self.records(nan, [None] * self.size, seconds / self.size, status,
                                        message), messages=[f"{self.label}: {message}"])

    def timed_out(self) -> BatchResult:
        return self.failed("timeout", f"time limit of {self.limit:g} s exceeded",
                           self.limit or 0.0)

    def lost(self, message: str) -> BatchResult:
        """The records when the executor lost the task (its workers died)."""
        return self.failed("error", message)


def run_batch(task: BatchTask, *outcomes: SharedOutcome) -> BatchResult:
    """Run the plugin on the batch; ``outcomes`` are those of ``task.shared``, in order.

    A shared piece that failed or timed out fails the batch with its status. The
    batch's ``seconds`` include the pieces it is charged for (the first batch, in the
    grid's order, to need a piece pays for it, whichever executor ran it).
    """
    for outcome in outcomes:
        if outcome.status != "ok":
            return task.failed(outcome.status, outcome.message)
    loaded = task.network.load()
    charged = sum(o.seconds for key, o in zip(task.shared, outcomes) if key in task.charged)
    torch.manual_seed(task.seed)
    status, message = "ok", ""
    bound = torch.full((task.size,), float("nan"), dtype=torch.float64)
    decided: list[bool | None] = [None] * task.size
    before = len(statistics(task.plugin))
    began = time.perf_counter()
    messages: list[str] = []
    if not supports(task.plugin, loaded.net):
        status, message = "n/a", f"{task.method} does not support this network"
    else:
        x64 = task.x64.to(torch.float64)
        x = x64.to(torch.float32)
        own_net, own_x, own_x64, own_y = (copy.deepcopy(loaded.net), x.clone(), x64.clone(),
                                          task.y.clone())
        try:
            with time_limit(task.limit):
                accept = hook(task.plugin, "use_shared")
                if callable(accept) and task.shared:
                    accept(own_net, {key.split("/", 1)[1]: o.value
                                     for key, o in zip(task.shared, outcomes)})
                if task.kind == "verifier":
                    bound, flags = _evaluate_verifier(task.plugin, own_net, own_x64, own_y,
                                                      task.eps)
                else:
                    bound, flags = _evaluate_attack(task.plugin, own_net, loaded.net64, own_x,
                                                    x64, own_y, task.eps)
            _check_untouched(own_net, loaded.identity,
                             ((own_x, x), (own_x64, x64), (own_y, task.y)))
            decided = [bool(v) for v in flags]
        except PluginTimeout as exc:
            status, message = "timeout", str(exc)
            messages.append(f"{task.label}: {message}")
        except Exception as exc:  # noqa: BLE001 - a failing plugin is recorded, the grid goes on
            status, message = "error", f"{type(exc).__name__}: {exc}"[:500]
            messages.append(f"{task.label}: {message}")
    seconds = (time.perf_counter() - began + charged) / task.size
    rows = [_statistics_row(task, row) for row in statistics(task.plugin)[before:]]
    return BatchResult(task.records(bound, decided, seconds, status, message), rows, messages)


def _statistics_row(task: BatchTask, row: dict[str, Any]) -> dict[str, Any]:
    """A plugin's statistics row with model and method; a per-sample row (``row``: its
    index in the batch) gets ``eps`` and ``sample`` (the test-set index) instead."""
    row = dict(row)
    if "row" in row:
        row = {"eps": float(task.eps), "sample": task.start + int(row.pop("row")), **row}
    return {"model": task.model, "method": task.method, **row}


def _evaluate_verifier(plugin: Any, net: MLP, x64: torch.Tensor, y: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(max_j U, certified)``; raises ``ValueError`` on a malformed output."""
    with torch.no_grad():
        upper = plugin.bound(net, x64, y, eps)
    if not isinstance(upper, torch.Tensor) or tuple(upper.shape) != (len(y), net.num_classes):
        raise ValueError(f"bound returned shape {tuple(getattr(upper, 'shape', ()))}, "
                         f"expected {(len(y), net.num_classes)}")
    upper = upper.detach().to(torch.float64)
    upper = upper.scatter(1, y.view(-1, 1), float("-inf"))
    worst = upper.amax(dim=1)
    if torch.isnan(worst).any():
        raise ValueError("bound returned NaN")
    return worst, worst < 0


def _evaluate_attack(plugin: Any, net: MLP, net64: MLP, x: torch.Tensor, x64: torch.Tensor,
                     y: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(max_j L, broken)`` at the projected attack points."""
    x_adv = plugin.perturb(net, x, y, eps)
    if not isinstance(x_adv, torch.Tensor) or tuple(x_adv.shape) != tuple(x.shape):
        raise ValueError(f"perturb returned shape {tuple(getattr(x_adv, 'shape', ()))}, "
                         f"expected {tuple(x.shape)}")
    x_adv = x_adv.detach().to(torch.float64)
    if not torch.isfinite(x_adv).all():
        raise ValueError("perturb returned NaN or infinite points")
    with torch.no_grad():
        lower = margins(net64(project(x_adv, x64, eps)), y).amax(dim=1)
    return lower, lower >= 0


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
