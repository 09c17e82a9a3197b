"""``bab``: complete verification by ReLU-split branch and bound with beta-CROWN bounds
(the search: :mod:`verifiers.bab.search`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.contract import Property
from models import MLP
from models.graph import GraphNet
from verifiers.bab.graph_search import decide_graph
from verifiers.bab.sample_searches import SharedSearches
from verifiers.bab.search import decide


class BranchAndBound(SharedSearches):
    """Complete verifier: per sample, :func:`decide` on the robustness property."""

    name = "bab"
    opt_in = True      # seconds to minutes per sample; ask for it by name
    exact = True

    def bound(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)``, ``y (N,)`` -> ``U (N, K)`` float64, ``U[n, y_n] = -inf``: per class
        the largest upper bound over the final subdomains (``< 0`` everywhere iff
        certified), or CROWN's bound where that is smaller (a sample whose counterexample
        came first keeps CROWN's bounds; the point itself is the attack ``bab-cex``).
        The verdicts are in :meth:`statistics`."""
        verdicts = self.verdicts(net, x, y, eps)
        for row, verdict in enumerate(verdicts):
            self._stats.append({"row": row, "verdict": verdict.verdict,
                                "branching": verdict.branching, "nodes": verdict.nodes,
                                "seconds": round(verdict.seconds, 4)})
        return torch.from_numpy(np.stack([v.upper for v in verdicts]))

    def bound_property(self, net: MLP, prop: Property) -> list[torch.Tensor]:
        """Per group of ``prop``, ``(r_g,)`` upper bounds over its box (see :func:`decide`;
        :func:`verifiers.bab.graph_search.decide_graph` on an operator graph)."""
        if isinstance(net, GraphNet):
            return decide_graph(net, prop, self._search).uppers
        return decide(net, prop, self._search).uppers

    def statistics(self) -> list[dict[str, Any]]:
        """Every sample's verdict, nodes and seconds so far (the harness takes the new rows
        after each batch; ``row`` is the index within its batch)."""
        return list(self._stats)
