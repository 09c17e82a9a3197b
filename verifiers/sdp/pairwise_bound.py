"""Shared form of the SDP-based verifiers (paper eq. 10-11, 14, 16), one hidden layer.

``U[n, j] = f_j(x_n) - f_{y_n}(x_n) + eps / 4 * value[y_n, j]`` where ``value[i, j]`` is a
certified upper bound on ``SDP(M(V_j - V_i, W))`` (see :mod:`verifiers.sdp.pair_solver`). It
depends on the weights only, so it is computed once per unordered class pair
(``SDP(M(v)) = SDP(M(-v))``) and kept per weights hash; every batch after the
first costs one forward pass.

The pairs are solved in one piece per worker (the ``shared_work`` hook; one piece in
process, where all pairs batched solve fastest): the harness computes each piece once
per network, on any worker, and hands the rows to ``use_shared``. Each pair's solve is
seeded by the pair alone, so its certificate is the same whichever pairs share its
batch and however many threads run it: the table is the same on one process or a
cluster. Given a folder (the
``cache_in`` hook; the harness passes ``OUT/cache/NAME``), each piece's rows are merged
into one file per weights hash and configuration as the piece finishes (under a file
lock, as workers may share the folder), so an interrupted run keeps the pairs solved.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from bench.contract import Configurable, margins
from models import MLP, weights_summary
from models.files import atomic_write
from verifiers.sdp.pair_solver import Solution, class_pairs


class PairwiseSDPBound(Configurable):
    """Base class; subclasses implement :meth:`solve_pairs`."""

    def __init__(self) -> None:
        self._tables: dict[str, np.ndarray] = {}
        self._stats: list[dict[str, Any]] = []
        self._folder: Path | None = None

    def supports(self, net: MLP) -> bool:
        return net.hidden_layers == 1

    def cache_in(self, folder: Path) -> None:
        """Persist solved pairs in ``folder`` (per weights hash and configuration)."""
        self._folder = Path(folder)

    def solve_pairs(self, net: MLP, weight: np.ndarray, v: np.ndarray,
                    pairs: list[tuple[int, int]],
                    on_done: Callable[[int, Solution], None] | None = None) -> list[Solution]:
        """Certified solutions for ``v (P, m)`` (``v_p = V_j - V_i`` for ``pairs[p]``);
        ``on_done(p, solution)`` as each finishes, where the solver can tell."""
        raise NotImplementedError

    def _saved_path(self, key: str) -> Path | None:
        if self._folder is None:
            return None
        return self._folder / f"{key}-{self._config_tag()}.json"

    def _load_saved(self, key: str) -> dict[str, dict[str, Any]]:
        path = self._saved_path(key)
        if path is None or not path.exists():
            return {}
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}                 # unreadable: solve again
        return {pair: row for pair, row in saved.items() if isinstance(row, dict)
                and isinstance(row.get("certified"), float) and math.isfinite(row["certified"])}

    def _save(self, key: str, rows: dict[str, dict[str, Any]]) -> None:
        """Merge ``rows`` into the saved file, under a lock (workers may share it)."""
        path = self._saved_path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = {**self._load_saved(key), **rows}
            text = json.dumps(merged, sort_keys=True).encode()
            atomic_write(path, lambda handle: handle.write(text))

    def _config_tag(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:12]

    def shared_work(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float,
                    workers: int) -> dict[str, Callable[[MLP], dict[str, dict[str, Any]]]]:
        """The pairs in ``workers`` contiguous pieces (one in process: batched pairs run
        fastest there); independent of ``x``, ``y`` and ``eps``. Each pair's solve is
        seeded by the pair, so the table does not depend on the split."""
        if not self.supports(net) or weights_summary(net) in self._tables:
            return {}
        count = len(class_pairs(net.num_classes))
        bounds = np.linspace(0, count, min(count, max(1, workers)) + 1).round().astype(int)
        return {f"{self.name}/{self._config_tag()}/pairs/{start}-{stop}":
                partial(self.solve_group, int(start), int(stop))
                for start, stop in zip(bounds[:-1], bounds[1:])}

    def solve_group(self, start: int, stop: int, net: MLP) -> dict[str, dict[str, Any]]:
        """Rows (``primal, certified, rel_gap, iterations, seconds, status``) of pairs
        ``start .. stop - 1`` (in :func:`class_pairs` order), by ``"i-j"``: read from the
        cache folder or solved (and saved)."""
        key = weights_summary(net)
        pairs = class_pairs(net.num_classes)[start:stop]
        saved = self._load_saved(key)
        rows = {f"{i}-{j}": saved[f"{i}-{j}"] for i, j in pairs if f"{i}-{j}" in saved}
        todo = [(i, j) for i, j in pairs if f"{i}-{j}" not in rows]
        if not todo:
            return rows
        weight, _, last, _ = net.one_hidden_layer()
        w = weight.detach().to(torch.float64).cpu().numpy()
        v = last.detach().to(torch.float64).cpu().numpy()
        bar = tqdm(total=len(todo), unit="pair", desc=f"{self.name} pairs", file=sys.stderr,
                   disable=None, leave=False)           # shown on a terminal only
        # numpy's BLAS single-threaded: its pool and torch's fought over two cores
        try:
            with threadpool_limits(1, user_api="blas"):
                solutions = self.solve_pairs(net, w, np.stack([v[j] - v[i] for i, j in todo]),
                                             todo, lambda index, solution: bar.update(1))
        finally:
            bar.close()
        for (i, j), solution in zip(todo, solutions):
            rows[f"{i}-{j}"] = {"primal": solution.primal, "certified": solution.certified,
                                "rel_gap": solution.rel_gap,
                                "iterations": solution.iterations,
                                "seconds": solution.seconds, "status": solution.status}
            if solution.status.startswith("fallback"):
                print(f"{self.name}: pair {i}-{j} {solution.status}; using the looser "
                      "Gershgorin certificate", file=sys.stderr)
        self._save(key, rows)
        return rows

    def use_shared(self, net: MLP, results: dict[str, Any]) -> None:
        """Assemble the pair table from the groups' rows (keys of :meth:`shared_work`)."""
        key = weights_summary(net)
        if key in self._tables:
            return
        rows: dict[str, dict[str, Any]] = {}
        for piece in results.values():
            rows.update(piece)
        pairs = class_pairs(net.num_classes)
        missing = [f"{i}-{j}" for i, j in pairs if f"{i}-{j}" not in rows]
        if missing:
            raise ValueError(f"{self.name}: no solution for pairs {', '.join(missing)}")
        table = np.zeros((net.num_classes, net.num_classes))
        for i, j in pairs:
            row = rows[f"{i}-{j}"]
            table[i, j] = table[j, i] = row["certified"]
            self._stats.append({"weights": key, "pair": f"{i}-{j}", **row})
        self._tables[key] = table

    def pair_values(self, net: MLP) -> np.ndarray:
        """``(K, K)`` symmetric table of certified SDP values (diagonal 0)."""
        key = weights_summary(net)
        if key not in self._tables:
            pieces = self.shared_work(net, torch.empty(0), torch.empty(0), 0.0, 1)
            self.use_shared(net, {name: work(net) for name, work in pieces.items()})
        return self._tables[key]

    def bound(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)``, ``y (N,)`` -> ``U (N, K)`` float64 upper bound, ``U[n, y_n] = -inf``."""
        table = torch.from_numpy(self.pair_values(net))
        with torch.no_grad():
            clean = margins(net.float64_copy()(x.to(torch.float64)), y)
        return clean + eps / 4 * table[y]

    def statistics(self) -> list[dict[str, Any]]:
        """Per-pair solve records gathered so far (primal, certified, gap, iterations, s)."""
        return list(self._stats)
