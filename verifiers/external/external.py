"""``external``: any solver of the VNN-LIB standard's command line as a verifier.

Configured with the solver's command (``--set external.command="SOLVER ARGS"``) or a TOML
file (``--set external.toml=solver.toml`` with ``command = "..."`` or a list of words,
and optionally ``timeout``); without either it supports no network (``n/a``). Per
sample, the network (exported to ONNX once per network) and the sample's robustness
property (the l-inf ball clipped to ``[0, 1]``, every wrong
class an unsafe group) go to the solver as a VNN-LIB 2.0 query with ``real``
declarations; per general property (``bound_property``, for ``bench vnncomp``'s
verifiers) the property itself. The solver's answer is checked by
:mod:`verifiers.external.standard_solver`.

Bounds (the contract's sign convention): ``unsat`` is the solver's word that every margin
is negative, not a number, so the bound is the largest float64 below zero
(``-5e-324``) for every wrong class; any other answer (``sat``, ``unknown``,
``timeout``, ``error``) bounds nothing, ``+inf``. ``statistics()`` gives per sample the
solver's status, seconds and the reason of an ``error`` or ``timeout``; a ``sat`` whose
assignment does not violate the property by a float64 forward pass is an ``error``.
Opt-in.
"""

from __future__ import annotations

import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.contract import (
    POSITIVE,
    Options,
    OptionsPlugin,
    OrNone,
    Property,
    Text,
    option,
)
from models import MLP, weights_summary
from verifiers.external.instances import solve_instance
from verifiers.external.standard_solver import Outcome, command_words

if sys.version_info >= (3, 11):
    import tomllib
else:                                          # pragma: no cover - Python 3.10
    import tomli as tomllib

UNSAT_BOUND = -math.ulp(0.0)      # the largest float64 below zero


@dataclass(frozen=True)
class ExternalOptions(Options):
    command: str = option("", Text(), "the solver's command line (before 'verify'); or "
                          "give toml")
    toml: str = option("", Text(), "a TOML file with command (a string or a list of "
                       "words) and optionally timeout")
    timeout: float | None = option(None, OrNone(POSITIVE), "seconds per query (default: "
                                   "the TOML file's timeout, else 60)")


class External(OptionsPlugin):
    """Upper bounds ``U (N, K)`` float64 from a standard solver's verdicts (see the module
    doc)."""

    name = "external"
    opt_in = True
    OPTIONS = ExternalOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.command and self.toml:
            raise ValueError("external takes one of command or toml, not both")
        self._command: list[str] | None = None
        self._folder = Path(tempfile.mkdtemp(prefix="certbench-external-"))
        self._stats: list[dict[str, Any]] = []
        if not (self.command or self.toml):     # unconfigured: supports nothing (n/a)
            self._timeout = 60.0
            return
        settings: dict[str, Any] = {"command": self.command}
        if self.toml:
            try:
                settings = tomllib.loads(Path(self.toml).read_text())
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise ValueError(f"external.toml {self.toml}: {exc}") from None
            if "command" not in settings:
                raise ValueError(f"external.toml {self.toml}: no command")
        self._command = command_words(settings["command"])
        timeout = self.timeout if self.timeout is not None else settings.get("timeout", 60.0)
        POSITIVE.check("timeout", timeout)
        self._timeout = float(timeout)

    def supports(self, net: MLP) -> bool:
        """Any network, once a solver is configured (``command`` or ``toml``); without
        one, none (the cells read ``n/a``)."""
        return self._command is not None

    def _onnx(self, net: MLP) -> Path:
        from models.onnx_import import export_onnx

        path = self._folder / f"net-{weights_summary(net)}.onnx"
        if not path.exists():
            export_onnx(net, path)
        return path

    def _ask(self, net: MLP, prop: Property) -> Outcome:
        if self._command is None:
            raise ValueError("external has no solver: --set external.command=\"SOLVER "
                             "ARGS\" or external.toml=FILE")
        outcome = solve_instance(self._command, self._onnx(net), [prop], self._timeout,
                                 self._folder)
        if outcome.status == "sat":
            point = torch.from_numpy(next(iter(outcome.values.values())))
            inside = bool(prop.contains(point[None])[0])
            with torch.no_grad():
                hit = inside and bool(prop.violated_by(net.float64_copy()(point[None]))[0])
            if not hit:
                outcome = Outcome("error", outcome.seconds, reason="answered sat, but its "
                                  "point " + ("does not violate the property (float64)"
                                              if inside else "lies outside the input box"))
        return outcome

    def bound(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``x (N, d)``, ``y (N,)`` -> ``U (N, K)`` float64: ``UNSAT_BOUND`` where the
        solver says ``unsat``, else ``+inf``; ``-inf`` at the label."""
        upper = torch.full((len(x), net.num_classes), float("inf"), dtype=torch.float64)
        for n in range(len(x)):
            prop = Property.robustness(x[n], int(y[n]), eps, net.num_classes)
            outcome = self._ask(net, prop)
            if outcome.status == "unsat":
                upper[n] = UNSAT_BOUND
            upper[n, int(y[n])] = -float("inf")
            self._stats.append({"row": n, "status": outcome.status,
                                "seconds": outcome.seconds, "reason": outcome.reason})
        return upper

    def bound_property(self, net: MLP, prop: Property) -> list[torch.Tensor]:
        """Per group ``(r_g,)``: ``UNSAT_BOUND`` if the solver says ``unsat``, else
        ``+inf``."""
        outcome = self._ask(net, prop)
        self._stats.append({"status": outcome.status, "seconds": outcome.seconds,
                            "reason": outcome.reason})
        value = UNSAT_BOUND if outcome.status == "unsat" else float("inf")
        return [torch.full((len(d),), value, dtype=torch.float64) for _, d in prop.groups]

    def statistics(self) -> list[dict[str, Any]]:
        return list(self._stats)
