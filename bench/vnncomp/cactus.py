"""The cactus plot of a VNN-COMP run: instances solved against time, as every VNN-COMP
report draws them."""

from __future__ import annotations

from pathlib import Path

from bench.figures import pyplot, save_figure


def solved_times(rows: list[dict]) -> list[float]:
    """The run times of the decided instances (``sat`` or ``unsat``), ascending: point
    ``k`` of the plot is ``(k + 1, times[k])``."""
    return sorted(float(row["run_time"]) for row in rows if row["result"] in ("sat", "unsat"))


def cactus_plot(runs: dict[str, list[dict]], path: Path, *,
                reference_decided: int | None = None) -> Path:
    """Write the cactus plot of ``runs`` (``{solver: results.csv rows}``) to ``path``
    (PNG): per solver one line of its decided instances' sorted run times; with a
    reference, a dashed line at the number of instances it decides."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    decided = {}
    for label, rows in runs.items():
        times = solved_times(rows)
        decided[label] = len(times)
        axes.step(range(1, len(times) + 1), times, where="post", label=label, marker=".")
    rows = max(runs.values(), key=len) if runs else []
    if reference_decided is not None:
        axes.axvline(reference_decided, linestyle="--", color="grey",
                     label=f"reference: {reference_decided} decided")
    axes.set_xlabel("instances solved")
    axes.set_ylabel("time (s)")
    axes.set_yscale("log")
    axes.set_xlim(0, max(len(rows), 1))
    axes.set_title(", ".join(f"{label} {n}" for label, n in decided.items())
                   + f" of {len(rows)} instances decided", fontsize=9)
    axes.legend()
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
    return path
