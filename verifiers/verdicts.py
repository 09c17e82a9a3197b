"""Per-sample verdicts of the exact methods (``milp``, ``bab``) and their cache, shared
by each verifier and the attack that returns its counterexamples."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.contract import Configurable
from models import MLP

CACHE_SIZE = 4096


@dataclass
class SampleVerdict:
    """The MILP outcome for one sample: ``lower <= worst <= upper``."""

    upper: np.ndarray            # (K,) per-class upper bounds, -inf at the label
    lower: float                 # worst margin of ``witness`` (float64 forward pass)
    witness: np.ndarray | None   # (d,) the point that reaches ``lower``
    verdict: str                 # "certified", "broken" or "unknown"
    nodes: int
    seconds: float
    milps: int
    branching: str = ""          # bab: "relu" or "input" (what its search split)


class VerdictCache:
    """MILP verdicts per (weights, eps, options, input, label), least recently used out.

    Keys hold the input's float64 bytes, so two inputs that differ anywhere never share
    a verdict. The ``milp-cex`` attack receives the float32 copy of an image that the
    ``milp`` verifier received in float64 (``k / 255``); :meth:`for_attack` finds the
    verdict whose float64 input rounds to it. An attack's point is re-checked by the
    harness, so that lookup can never make a result wrong, only save a solve.
    """

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._verdicts: "OrderedDict[tuple, SampleVerdict]" = OrderedDict()
        self._rounded: dict[tuple, tuple] = {}

    @staticmethod
    def key(net_key: str, eps: float, config: tuple, x: torch.Tensor, label: int) -> tuple:
        digest = hashlib.sha256(x.detach().to(torch.float64).cpu().numpy().tobytes()).hexdigest()
        return (net_key, float(eps), config, digest, label)

    @staticmethod
    def _rounded_key(key: tuple, x: torch.Tensor) -> tuple:
        digest = hashlib.sha256(x.detach().to(torch.float32).cpu().numpy().tobytes()).hexdigest()
        return key[:3] + (digest, key[4])

    def get(self, key: tuple) -> SampleVerdict | None:
        return self._verdicts.get(key)

    def put(self, key: tuple, x: torch.Tensor, verdict: SampleVerdict) -> None:
        self._verdicts[key] = verdict
        self._rounded[self._rounded_key(key, x)] = key
        while len(self._verdicts) > self.size:
            old, _ = self._verdicts.popitem(last=False)
            self._rounded = {k: v for k, v in self._rounded.items() if v != old}

    def for_attack(self, key: tuple, x32: torch.Tensor) -> tuple:
        """The key of a verdict on a float64 input that rounds to ``x32``, else ``key``."""
        found = self._rounded.get(self._rounded_key(key, x32))
        return found if found is not None and found in self._verdicts else key

    def clear(self) -> None:
        self._verdicts.clear()
        self._rounded.clear()


class SharedVerdictsBase(Configurable):
    """Base of a plugin whose per-sample verdicts come from shared work: ``use_shared``
    puts the verdicts of a batch's piece (``(cache key, x_n, verdict)`` rows) into the
    plugin's cache ``_verdicts``, which the subclass creates."""

    _verdicts: VerdictCache

    def use_shared(self, net: MLP, results: dict[str, Any]) -> None:
        for rows in results.values():
            for key, x_n, verdict in rows:
                self._verdicts.put(key, x_n, verdict)


def witness_points(verdicts: list[SampleVerdict], x: torch.Tensor) -> torch.Tensor:
    """Per sample the verdict's counterexample, or ``x`` itself without one: ``x (N, d)``
    -> ``x_adv (N, d)`` in ``x``'s dtype (the harness re-checks every point)."""
    out = x.detach().clone()
    for n, verdict in enumerate(verdicts):
        if verdict.witness is not None:
            out[n] = torch.from_numpy(verdict.witness).to(x.dtype)
    return out
