"""Plugin discovery through entry points (groups ``bench.verifiers`` and ``bench.attacks``).

Our own verifiers and attacks are declared the same way in pyproject.toml, so a
third-party package is a first-class citizen. Loading an entry point imports its
module, so heavy imports happen only for the plugins a run chooses. Two entry
points with the same name in one group are an error naming both providers.
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable

from bench.contract import ContractError, OptionsPlugin, check_hooks, is_opt_in
from bench.errors import CertbenchError

GROUPS = {"verifier": "bench.verifiers", "attack": "bench.attacks"}


class RegistryError(CertbenchError, RuntimeError):
    """A plugin name is unknown, duplicated, or does not load (message is one line)."""


@dataclass(frozen=True)
class PluginInfo:
    """One discovered plugin and where it comes from."""

    name: str
    kind: str                 # "verifier" or "attack"
    entry_point: EntryPoint
    distribution: str
    version: str
    conflict: str = ""        # set when another distribution declares the same name

    @property
    def origin(self) -> str:
        return f"{self.distribution} {self.version}"

    def load_class(self) -> type:
        if self.conflict:
            raise RegistryError(self.conflict)
        try:
            return self.entry_point.load()
        except Exception as exc:  # a broken plugin must not take the suite down
            raise RegistryError(f"{self.kind} {self.name!r} from {self.origin} failed to "
                                f"load: {type(exc).__name__}: {exc}") from None

    def create(self, options: dict[str, Any] | None = None) -> Any:
        """Instantiate with keyword-only ``options``; its ``name`` must match."""
        cls = self.load_class()
        try:
            plugin = cls(**(options or {}))
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"bad options for {self.kind} {self.name!r}: {exc}") from None
        except Exception as exc:  # a third-party constructor may raise anything
            raise RegistryError(f"{self.kind} {self.name!r} from {self.origin} failed to "
                                f"build: {type(exc).__name__}: {exc}") from None
        try:
            check_hooks(plugin, self.kind, f"{self.kind} {self.name!r} from {self.origin}")
        except ContractError as exc:
            raise RegistryError(str(exc)) from None
        if plugin.name != self.name:
            raise RegistryError(f"{self.kind} entry point {self.name!r} from {self.origin} "
                                f"builds a plugin named {plugin.name!r}")
        if re.search(r" at 0x[0-9a-fA-F]+", repr(plugin)):
            raise RegistryError(f"{self.kind} {self.name!r} from {self.origin} has no "
                                "deterministic repr (it shows a memory address), so its "
                                "records could never be resumed; define __repr__ or subclass "
                                "bench.contract.Configurable")
        return plugin

    @property
    def opt_in(self) -> bool:
        return is_opt_in(self.load_class())


def discover(kind: str) -> dict[str, PluginInfo]:
    """All installed plugins of ``kind`` by name, without importing any of them.

    Two distributions declaring one name give an entry whose :attr:`PluginInfo.conflict`
    names both; it fails only when it is loaded (requested), never the discovery.
    """
    found: dict[str, PluginInfo] = {}
    for ep in entry_points(group=GROUPS[kind]):
        dist = ep.dist
        info = PluginInfo(ep.name, kind, ep, dist.name if dist else "unknown",
                          dist.version if dist else "?")
        if ep.name in found:
            first = found[ep.name]
            if first.entry_point.value == ep.value and first.origin == info.origin:
                continue  # the same distribution seen twice on sys.path
            found[ep.name] = replace(first, conflict=(
                f"duplicate {kind} name {ep.name!r}: {first.origin} "
                f"({first.entry_point.value}) and {info.origin} ({ep.value})"))
            continue
        found[ep.name] = info
    return found


def usable(info: PluginInfo) -> str:
    """``""`` if the plugin loads, else the one-line reason (broken or duplicated)."""
    try:
        info.load_class()
    except RegistryError as exc:
        return str(exc)
    return ""


def select(kind: str, names: list[str] | None,
           warn: Callable[[str], None] | None = None) -> list[PluginInfo]:
    """The plugins named (in order), or all non-opt-in ones when ``names`` is None.

    A named plugin that is unknown, duplicated or broken is an error. The default
    selection leaves a broken or duplicated plugin out and tells ``warn`` why.
    """
    available = discover(kind)
    if names is None:
        chosen = []
        for _, info in sorted(available.items()):
            problem = usable(info)
            if problem:
                if warn is not None:
                    warn(f"{problem}; left out of the default grid")
            elif not info.opt_in:
                chosen.append(info)
        return chosen
    unknown = [n for n in names if n not in available]
    if unknown:
        raise RegistryError(f"unknown {kind}{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(map(repr, unknown))}; available: "
                            f"{', '.join(sorted(available)) or 'none'}")
    chosen = [available[n] for n in dict.fromkeys(names)]
    for info in chosen:
        info.load_class()              # a broken or duplicated plugin fails here, by name
    return chosen


def parse_option(text: str) -> tuple[str, str, Any]:
    """``"NAME.KEY=VALUE"`` -> ``(NAME, KEY, value)``; VALUE is a Python literal or a string."""
    target, sep, raw = text.partition("=")
    name, dot, key = target.partition(".")
    if not sep or not dot or not name or not key.isidentifier():
        raise RegistryError(f"option {text!r} is not of the form NAME.KEY=VALUE")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return name, key, value


def option_lines(cls: type) -> list[str]:
    """``KEY=DEFAULT`` lines for a plugin class's keyword-only options (``--set`` keys)."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return []
    docs = cls.OPTIONS.docs() if issubclass(cls, OptionsPlugin) else {}
    lines = []
    for p in parameters:
        if p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            continue
        line = (f"{p.name}={p.default!r}" if p.default is not inspect.Parameter.empty
                else f"{p.name} (required)")
        lines.append(f"{line:<28} {docs[p.name]}" if p.name in docs else line)
    return lines
