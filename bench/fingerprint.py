"""A fingerprint of a plugin's code, so an edited plugin is recomputed, not reused.

The distribution version alone does not change when a plugin's source is edited under
an editable install. The fingerprint hashes the source files of the plugin's module
and of every module it reaches through its globals (functions, classes and modules it
imported), within the plugin's own top-level package and certbench's packages
(``bench``, ``models``, ``verifiers``, ``attacks``). Third-party libraries (torch,
HiGHS) are covered by the distribution version the records keep beside it.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import sys
from types import ModuleType

OWN_PACKAGES = frozenset({"bench", "models", "verifiers", "attacks"})


def _module_of(value: object) -> str | None:
    if isinstance(value, ModuleType):
        return value.__name__
    return getattr(value, "__module__", None) if callable(value) else None


def reached_modules(root: str) -> list[str]:
    """The modules reachable from module ``root`` through module globals, limited to
    ``root``'s top-level package and certbench's packages; sorted."""
    packages = OWN_PACKAGES | {root.split(".")[0]}
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] not in packages or name not in sys.modules:
            continue
        seen.add(name)
        for value in vars(sys.modules[name]).values():
            found = _module_of(value)
            if found and found not in seen:
                todo.append(found)
    return sorted(seen)


@functools.lru_cache(maxsize=None)
def code_fingerprint(cls: type) -> str:
    """sha256 (first 16 hex digits) of the sources of the modules ``cls`` reaches."""
    digest = hashlib.sha256()
    for name in reached_modules(cls.__module__):
        try:
            source = inspect.getsource(sys.modules[name])
        except (OSError, TypeError):          # no source on disk (a frozen or C module)
            source = ""
        digest.update(f"{name}\n{len(source)}\n".encode())
        digest.update(source.encode())
    return digest.hexdigest()[:16]
