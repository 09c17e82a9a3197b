"""Atomic file output: write to a temp file in the same folder, then rename over the target.

The one atomic write of the suite (networks, records tables, figures, data caches);
it lives in the lowest layer, which everything else may import.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def atomic_write(path: Path, write: Callable[[IO], None], *, binary: bool = True,
                 suffix: str = "") -> Path:
    """Call ``write(handle)`` on a temp file beside ``path`` and rename it to ``path``.

    Readers see either the old file or the complete new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if binary else "w"
    with tempfile.NamedTemporaryFile(mode, dir=path.parent, suffix=suffix, delete=False,
                                     **({} if binary else {"newline": ""})) as tmp:
        try:
            write(tmp)
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)
            raise
    try:
        os.chmod(tmp.name, 0o644)
        os.replace(tmp.name, path)
    except BaseException:                # e.g. ``path`` is a folder: leave no temp file
        os.unlink(tmp.name)
        raise
    return path
