"""Shared form of the SDP-based verifiers (paper eq. 10-11, 14, 16), one hidden layer.

``U[n, j] = f_j(x_n) - f_{y_n}(x_n) + eps / 4 * value[y_n, j]`` where ``value[i, j]`` is a
certified upper bound on ``SDP(M(V_j - V_i, W))`` (see :mod:`verifiers.sdp_core`). It
depends on the weights only, so it is computed once per unordered class pair
(``SDP(M(v)) = SDP(M(-v))``) and cached per weights hash; every batch after the
first costs one forward pass.

Given a folder (the ``cache_in`` hook; the harness passes ``OUT/cache/NAME``), each pair's
certified value is saved there as it is solved, per weights hash and configuration, so
an interrupted run or a batch past its time limit keeps the pairs already solved. A
progress bar over the pairs shows on a terminal.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from bench.contract import Configurable, margins
from models import MLP, weights_summary
from models.files import atomic_write

from .sdp_core import Solution, class_pairs


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
        ``on_done(p, solution)`` as each finishes."""
        raise NotImplementedError

    def _saved_path(self, key: str) -> Path | None:
        if self._folder is None:
            return None
        config = hashlib.sha256(repr(self).encode()).hexdigest()[:12]
        return self._folder / f"{key}-{config}.json"

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
        path = self._saved_path(key)
        if path is not None:
            text = json.dumps(rows, sort_keys=True).encode()
            atomic_write(path, lambda handle: handle.write(text))

    def pair_values(self, net: MLP) -> np.ndarray:
        """``(K, K)`` symmetric table of certified SDP values (diagonal 0)."""
        key = weights_summary(net)
        if key in self._tables:
            return self._tables[key]
        weight, _, last, _ = net.one_hidden_layer()
        w = weight.detach().to(torch.float64).cpu().numpy()
        v = last.detach().to(torch.float64).cpu().numpy()
        pairs = class_pairs(v.shape[0])
        rows = self._load_saved(key)
        todo = [p for p, (i, j) in enumerate(pairs) if f"{i}-{j}" not in rows]
        if todo:
            bar = tqdm(total=len(pairs), initial=len(pairs) - len(todo), unit="pair",
                       desc=f"{self.name} pairs", file=sys.stderr, disable=None, leave=False)

            def done(index: int, solution: Solution) -> None:
                i, j = pairs[todo[index]]
                rows[f"{i}-{j}"] = {"primal": solution.primal,
                                    "certified": solution.certified,
                                    "rel_gap": solution.rel_gap,
                                    "iterations": solution.iterations,
                                    "seconds": solution.seconds, "status": solution.status}
                self._save(key, rows)
                bar.update(1)
                if solution.status.startswith("fallback"):
                    print(f"{self.name}: pair {i}-{j} {solution.status}; using the "
                          "looser Gershgorin certificate", file=sys.stderr)
            try:   # numpy's BLAS single-threaded: its pool and torch's fought over two cores
                with threadpool_limits(1, user_api="blas"):
                    solutions = self.solve_pairs(net, w, np.stack(
                        [v[j] - v[i] for i, j in [pairs[p] for p in todo]]),
                        [pairs[p] for p in todo], done)
            finally:
                bar.close()
            for index, solution in enumerate(solutions):     # solvers that skip on_done
                i, j = pairs[todo[index]]
                if f"{i}-{j}" not in rows:
                    done(index, solution)
        table = np.zeros((v.shape[0], v.shape[0]))
        for i, j in pairs:
            row = rows[f"{i}-{j}"]
            table[i, j] = table[j, i] = row["certified"]
            self._stats.append({"weights": key, "pair": f"{i}-{j}", **row})
        self._tables[key] = table
        return table

    def bound(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)``, ``y (N,)`` -> ``U (N, K)`` float64 upper bound, ``U[n, y_n] = -inf``."""
        table = torch.from_numpy(self.pair_values(net))
        with torch.no_grad():
            clean = margins(net.float64_copy()(x.to(torch.float64)), y)
        return clean + eps / 4 * table[y]

    def statistics(self) -> list[dict[str, Any]]:
        """Per-pair solve records gathered so far (primal, certified, gap, iterations, s)."""
        return list(self._stats)
