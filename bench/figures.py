"""matplotlib for the harness's figures: the file-only backend and one way to save."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.files import atomic_write


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(figure: Any, path: Path) -> None:
    """Write ``figure`` as a PNG to ``path`` atomically (no software tag: byte-stable)."""
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=120,
                                                     metadata={"Software": None}))
