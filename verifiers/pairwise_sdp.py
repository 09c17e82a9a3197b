"""Shared form of the SDP-based verifiers (paper eq. 10-11, 14, 16), one hidden layer.

``U[n, j] = f_j(x_n) - f_{y_n}(x_n) + eps / 4 * value[y_n, j]`` where ``value[i, j]`` is a
certified upper bound on ``SDP(M(V_j - V_i, W))`` (see :mod:`verifiers.sdp_core`). It
depends on the weights only, so it is computed once per unordered class pair
(``SDP(M(v)) = SDP(M(-v))``) and cached per weights hash; every batch after the
first costs one forward pass.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

from bench.contract import Configurable, margins
from models import MLP, weights_summary

from .sdp_core import Solution, class_pairs


class PairwiseSDPBound(Configurable):
    """Base class; subclasses implement :meth:`solve_pairs`."""

    def __init__(self) -> None:
        self._tables: dict[str, np.ndarray] = {}
        self._stats: list[dict[str, Any]] = []

    def supports(self, net: MLP) -> bool:
        return net.hidden_layers == 1

    def solve_pairs(self, net: MLP, weight: np.ndarray, v: np.ndarray,
                    pairs: list[tuple[int, int]]) -> list[Solution]:
        """Certified solutions for ``v (P, m)`` (``v_p = V_j - V_i`` for ``pairs[p]``)."""
        raise NotImplementedError

    def pair_values(self, net: MLP) -> np.ndarray:
        """``(K, K)`` symmetric table of certified SDP values (diagonal 0)."""
        key = weights_summary(net)
        if key not in self._tables:
            weight, _, last, _ = net.one_hidden_layer()
            w = weight.detach().to(torch.float64).cpu().numpy()
            v = last.detach().to(torch.float64).cpu().numpy()
            pairs = class_pairs(v.shape[0])
            solutions = self.solve_pairs(net, w, np.stack([v[j] - v[i] for i, j in pairs]),
                                         pairs)
            table = np.zeros((v.shape[0], v.shape[0]))
            for (i, j), solution in zip(pairs, solutions):
                table[i, j] = table[j, i] = solution.certified
                self._stats.append({"weights": key, "pair": f"{i}-{j}",
                                    "primal": solution.primal,
                                    "certified": solution.certified,
                                    "rel_gap": solution.rel_gap,
                                    "iterations": solution.iterations,
                                    "seconds": solution.seconds,
                                    "status": solution.status})
                if solution.status.startswith("fallback"):
                    print(f"{self.name}: pair {i}-{j} {solution.status}; using the "
                          "looser Gershgorin certificate", file=sys.stderr)
            self._tables[key] = table
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
