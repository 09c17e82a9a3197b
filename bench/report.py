"""``python -m bench report``: the paper's figures and Table 1 from runs on the shipped networks.

Two runs, both resumable (records are reused exactly as ``bench run`` reuses them):

* the **main grid**: every shipped network, every default verifier and attack,
  eps = 0.1, the first ``n`` test images (all 10,000 by default), into ``OUT``
  (``leaderboard.csv``, ``gaps.csv``, ``violations.csv``, ``solver_stats.csv``);
* the **eps sweep** of Figure 3b: SDP-NN under PGD, CW and FGSM and its SDP bound,
  eps from 0 to 0.2, into ``OUT/sweep``.

From them it draws (PNG, in ``OUT``):

* ``fig2_bounds.png``: per network, certified error of the SDP, LP, spectral and
  Frobenius bounds beside the PGD error (paper Figure 2, LP added);
* ``fig3a_sdp_vs_pgd.png``: per network, SDP upper and PGD lower bound (Figure 3a);
* ``fig3b_sdp_nn_attacks.png``: SDP-NN error against eps for each attack and the
  SDP bound (Figure 3b);

and writes ``table1.csv`` / ``table1.md``: SDP-NN and LP-NN under PGD, SDP and LP,
ours (with a 95% Wilson interval) beside the paper's number.

A third run gives the **ground truth** (``OUT/exact``, sharing ``OUT/cache``): on the
first ``exact_n`` images (100; ``--exact-n``) at eps = 0.1, the two complete methods,
exact MILP (``milp`` with ``milp-cex``) and branch and bound (``bab`` with ``bab-cex``;
each ``-cex`` attack is its method's counterexamples), beside every default verifier and
attack and the opt-in attacks ``apgd-dlr``, ``square`` and ``ensemble``.
A sample is decided when ``milp`` or ``bab`` certifies it or any attack breaks it;
where both complete methods decide, the soundness guard checks that they agree. From it:

* ``ground_truth.csv`` / ``ground_truth.md``: per network the exact error on the
  decided samples and the number left undecided; per verifier its looseness and per
  attack its weakness on the decided samples, beside its seconds per sample
  (:func:`bench.leaderboard.ground_truth`);
* ``fig_exact.png``: per network, best certified error, exact error (a bar for the
  samples known broken, a whisker up to those not known safe) and best attack error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from bench.contract import is_exact
from bench.executors import Executor
from bench.figures import pyplot, save_figure
from bench.leaderboard import ground_truth, per_sample, to_frame, write_csv
from bench.page import write_page
from bench.registry import select
from bench.runner import CACHE_DIR, Method, Runner, RunResult, RunSpec
from models import shipped_names
from models.files import atomic_write

MAIN_EPS = 0.1
SWEEP_EPS = [0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2]
SWEEP_MODEL = "sdp-nn"
SWEEP_ATTACKS = ["pgd", "cw", "fgsm"]
SWEEP_VERIFIER = "sdp"
FIGURE2_VERIFIERS = ["sdp", "lp", "spectral", "frobenius"]
PAPER_ORDER = ["nt-nn", "fro-nn", "spe-nn", "at-nn", "sdp-nn", "lp-nn"]
UNCLIPPED = "lp-unclipped"   # the LP bound without the [0, 1] box: Table 1's measure and folder
EXACT_DIR = "exact"
EXACT_N = 100
EXACT_TIME_LIMIT = 15.0     # seconds per sample for milp and bab (their -cex share the solves)
EXACT_VERIFIERS = ["milp", "bab"]
EXACT_ATTACKS = ["milp-cex", "bab-cex"]    # the complete methods' counterexamples
EXTRA_ATTACKS = ["apgd-dlr", "square", "ensemble", *EXACT_ATTACKS]

# Raghunathan, Steinhardt & Liang (2018), Table 1 (eps = 0.1, MNIST test set)
PAPER_TABLE1 = {("sdp-nn", "pgd"): 0.15, ("sdp-nn", "sdp"): 0.35, ("sdp-nn", "lp"): 0.99,
                ("lp-nn", "pgd"): 0.22, ("lp-nn", "sdp"): 0.93, ("lp-nn", "lp"): 0.26}


def _methods(verifiers: list[str] | None, attacks: list[str] | None,
             warn: Callable[[str], None] | None = None) -> list[Method]:
    infos = select("verifier", verifiers, warn) + select("attack", attacks, warn)
    return [Method(info, info.create()) for info in infos]


def _ordered(models: list[str]) -> list[str]:
    known = [m for m in PAPER_ORDER if m in models]
    return known + sorted(m for m in models if m not in PAPER_ORDER)


def _at_eps(board: pd.DataFrame, eps: float) -> pd.DataFrame:
    """The leaderboard rows at radius ``eps``."""
    return board[(board["eps"] - eps).abs() < 1e-12]


def _errors(board: pd.DataFrame, eps: float) -> pd.DataFrame:
    """``error`` by model (rows) and method (columns) at ``eps``."""
    return _at_eps(board, eps).pivot(index="model", columns="method", values="error")


def _grouped_bars(table: pd.DataFrame, methods: list[str], labels: dict[str, str],
                  title: str, whiskers: pd.DataFrame | None = None):
    """Bars of ``table`` (fractions, model rows, method columns) in percent; a column of
    ``whiskers`` (same shape) draws a whisker from its bar up to that value."""
    plt = pyplot()
    models = _ordered([m for m in table.index])
    methods = [m for m in methods if m in table.columns]
    figure, axis = plt.subplots(figsize=(9.5, 4))
    width = 0.8 / max(len(methods), 1)
    for k, method in enumerate(methods):
        values = [100 * table.loc[model, method] for model in models]
        positions = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(models))]
        extra = {}
        if whiskers is not None and method in whiskers.columns:
            # max(0, .): where the interval is a point (nothing unsettled) the two percent
            # values may differ in the last bit, and a negative whisker is refused
            above = [max(0.0, 100 * whiskers.loc[model, method] - v)
                     for model, v in zip(models, values)]
            extra = {"yerr": [[0.0] * len(models), above], "capsize": 3}
        axis.bar(positions, values, width, label=labels.get(method, method), **extra)
    axis.set_xticks(range(len(models)), [m.upper() for m in models])
    axis.set_ylabel(f"error at eps = {MAIN_EPS} (%)")
    axis.set_ylim(0, 100)
    axis.set_title(title)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    return figure


def figure2(board: pd.DataFrame):
    labels = {m: f"{m.upper()} bound" for m in FIGURE2_VERIFIERS} | {"pgd": "PGD attack"}
    return _grouped_bars(_errors(board, MAIN_EPS), [*FIGURE2_VERIFIERS, "pgd"], labels,
                         "Upper bounds (certified error) and PGD lower bound per network")


def figure3a(board: pd.DataFrame):
    labels = {"sdp": "SDP upper bound", "pgd": "PGD lower bound"}
    return _grouped_bars(_errors(board, MAIN_EPS), ["sdp", "pgd"], labels,
                         "SDP upper bound and PGD lower bound per network")


def figure3b(sweep: pd.DataFrame):
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    styles = {"sdp": ("SDP bound", "k--"), "pgd": ("PGD", "o-"), "cw": ("CW", "s-"),
              "fgsm": ("FGSM", "^-")}
    for method, (label, style) in styles.items():
        rows = sweep[sweep["method"] == method].sort_values("eps")
        if len(rows):
            axis.plot(rows["eps"], 100 * rows["error"], style, label=label, markersize=4)
    axis.set_xlabel("eps (l-inf)")
    axis.set_ylabel("error (%)")
    axis.set_ylim(0, 100)
    axis.set_title(f"{SWEEP_MODEL.upper()} against attacks, with its SDP bound")
    axis.legend()
    figure.tight_layout()
    return figure


def table1(board: pd.DataFrame, unclipped: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 1: ours beside the paper's for SDP-NN and LP-NN under PGD, SDP and LP.

    ``unclipped`` (the ``lp`` leaderboard with ``clip=False``) adds the measure
    ``lp-unclipped``, compared with the paper's LP number as well.
    """
    rows = []
    at_eps = _at_eps(board, MAIN_EPS)
    if unclipped is not None:
        extra = _at_eps(unclipped, MAIN_EPS)
        at_eps = pd.concat([at_eps, extra[extra["method"] == "lp"].assign(method=UNCLIPPED)])
    wanted = dict(PAPER_TABLE1)
    wanted.update({(model, UNCLIPPED): paper for (model, method), paper in PAPER_TABLE1.items()
                   if method == "lp"})
    for (model, method), paper in wanted.items():
        hit = at_eps[(at_eps["model"] == model) & (at_eps["method"] == method)]
        if len(hit) == 0:
            continue
        row = hit.iloc[0]
        rows.append({"network": model, "measure": method, "kind": row["kind"],
                     "n": int(row["n"]), "ours": row["error"], "ci_low": row["ci_low"],
                     "ci_high": row["ci_high"], "paper": paper,
                     "difference": row["error"] - paper})
    return pd.DataFrame(rows, columns=["network", "measure", "kind", "n", "ours", "ci_low",
                                       "ci_high", "paper", "difference"])


def table1_markdown(table: pd.DataFrame) -> str:
    names = {"pgd": "PGD error", "sdp": "SDP bound", "lp": "LP bound",
             UNCLIPPED: "LP bound, ball only"}
    lines = ["| network | " + " | ".join(names.values()) + " |",
             "|---|" + "---|" * len(names)]
    for network in ["sdp-nn", "lp-nn"]:
        cells = []
        for measure in names:
            hit = table[(table["network"] == network) & (table["measure"] == measure)]
            if len(hit) == 0:
                cells.append("-")
                continue
            r = hit.iloc[0]
            cells.append(f"{100 * r['ours']:.1f}% [{100 * r['ci_low']:.1f}, "
                         f"{100 * r['ci_high']:.1f}] (paper {100 * r['paper']:.0f}%)")
        lines.append(f"| {network.upper()} | " + " | ".join(cells) + " |")
    n = int(table["n"].max()) if len(table) else 0
    lines.append("")
    lines.append(f"eps = {MAIN_EPS}, first {n} MNIST test images; ours with its Wilson "
                 "95% interval, the paper's Table 1 in brackets. \"LP bound\" is `lp` as "
                 "the leaderboard runs it, on the input set B_eps(x) ∩ [0,1]^d (the box every "
                 "attack is held to); \"ball only\" is `lp` with `clip=False`, on B_eps(x) "
                 "alone, the input set of Kolter & Wong's dual network as first published "
                 "(the paper does not say which it used).")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _Stages:
    """What every run of the report shares: images, batching, networks, executor."""

    n: int
    batch_size: int
    model_dir: Path | None
    progress: bool
    echo: Callable[[str], None]
    executor: Executor | None = None

    def run(self, models: list[str], methods: list[Method], eps: list[float], out: Path,
            n: int | None = None, cache: Path | None = None) -> RunResult:
        return Runner(RunSpec(models=models, methods=methods, eps=eps, n=n or self.n, out=out,
                              batch_size=self.batch_size, model_dir=self.model_dir,
                              progress=self.progress, cache=cache, executor=self.executor),
                      self.echo).run()


def _unclipped_lp(models: list[str], out: Path, stages: _Stages) -> RunResult | None:
    """``lp`` with ``clip=False`` on the Table 1 networks (``OUT/lp-unclipped``), or None."""
    chosen = [m for m in ("sdp-nn", "lp-nn") if m in models]
    if not chosen:
        return None
    (info,) = select("verifier", ["lp"])
    return stages.run(chosen, [Method(info, info.create({"clip": False}))], [MAIN_EPS],
                      out / UNCLIPPED)


def _exact_methods(time_limit: float, warn: Callable[[str], None]) -> list[Method]:
    """Every default verifier and attack, the complete methods (with ``time_limit`` per
    sample) and the opt-in attacks of today."""
    methods = _methods(None, None, warn)
    for info in select("verifier", EXACT_VERIFIERS) + select("attack", EXTRA_ATTACKS):
        timed = info.name in (*EXACT_VERIFIERS, *EXACT_ATTACKS)
        methods.append(Method(info, info.create({"time_limit": time_limit} if timed else None)))
    return methods


def ground_truth_markdown(table: pd.DataFrame) -> str:
    """Per network: the true error as an interval over all samples (broken by someone,
    certified by no one) and the samples left unsettled; each method's error over all
    samples, its looseness or weakness as an interval, and, labelled as such, its error
    on the decided samples, beside its seconds per sample."""
    lines = []
    for model in _ordered(list(table["model"].unique())):
        rows = table[table["model"] == model]
        first = rows.iloc[0]
        lines += [f"### {model.upper()} (eps = {first['eps']:g}, first {int(first['n'])} "
                  f"images)", "",
                  f"True error between {100 * first['true_error_low']:.1f}% (broken by an "
                  f"attack or a complete method) and {100 * first['true_error_high']:.1f}% "
                  f"(certified by none); {int(first['n_unsettled'])} samples unsettled. On "
                  f"the {int(first['n_decided'])} decided samples alone the exact error is "
                  f"{100 * first['exact_error']:.1f}% (biased: the undecided ones are the "
                  "hard-to-break ones).", "",
                  "| method | kind | error (all samples) | looseness / weakness (interval) | "
                  "error on decided | s per sample |",
                  "|---|---|---|---|---|---|"]
        for row in rows.sort_values(["kind", "method"], ascending=[False, True]).itertuples():
            low, high = ((row.looseness_low, row.looseness_high) if row.kind == "verifier"
                         else (row.weakness_low, row.weakness_high))
            if pd.isna(row.error):
                cells = ("n/a", "n/a", "n/a")
            else:
                ends = (f"{round(100 * end, 1) + 0.0:+.1f}" for end in (low, high))
                cells = (f"{100 * row.error:.1f}%", " to ".join(ends) + " pp",
                         "n/a" if pd.isna(row.error_on_decided)
                         else f"{100 * row.error_on_decided:.1f}%")
            lines.append(f"| {row.method} | {row.kind} | {cells[0]} | {cells[1]} | {cells[2]} | "
                         f"{row.seconds_per_sample:.3g} |")
        lines.append("")
    lines.append("Looseness: a verifier's certified error minus the true error; weakness: the "
                 "true error minus an attack's error; both over all samples, as intervals "
                 "because the true error is known only between the two bounds above, in "
                 "percentage points.")
    return "\n".join(lines) + "\n"


def figure_per_sample(table: pd.DataFrame):
    """Per network (one panel each, at the table's first eps), every sample's best
    attack margin (x) against its certified bound (y): samples above the diagonal are
    the gap, those left of 0 and below 0 certified, those right of 0 broken.
    ``table``: :func:`bench.leaderboard.per_sample`'s."""
    plt = pyplot()
    models = _ordered(list(table["model"].unique()))
    figure, axes = plt.subplots(1, max(len(models), 1), figsize=(4 * max(len(models), 1), 4),
                                squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = table[(table["model"] == model)]
        rows = rows[rows["eps"] == rows["eps"].iloc[0]].dropna()
        ax.scatter(rows["attack_margin"], rows["certified_bound"], s=6, alpha=0.6)
        ends = [min(rows["attack_margin"].min(), rows["certified_bound"].min(), 0),
                max(rows["attack_margin"].max(), rows["certified_bound"].max(), 0)]
        ax.plot(ends, ends, color="grey", linewidth=0.8)
        ax.axhline(0, color="green", linewidth=0.6)
        ax.axvline(0, color="red", linewidth=0.6)
        ax.set_title(f"{model} (eps {rows['eps'].iloc[0]:g})" if len(rows) else model)
        ax.set_xlabel("best attack margin")
        ax.set_ylabel("certified bound (best verifier)")
    figure.tight_layout()
    return figure


def write_per_sample(records: list[dict[str, Any]], out: Path) -> None:
    """``per_sample.csv`` and ``per_sample.png`` of a run's records into ``out``."""
    table = per_sample(to_frame(records))
    write_csv(table, out / "per_sample.csv")
    if len(table.dropna()):
        figure = figure_per_sample(table)
        save_figure(figure, out / "per_sample.png")
        pyplot().close(figure)


def figure_exact(board: pd.DataFrame, table: pd.DataFrame, exact: set[str]):
    """Per network on the ground-truth images: best certified error of the inexact
    verifiers, the true error as an interval (bar: the fraction broken by anyone;
    whisker: up to the fraction certified by no one) and best error of the inexact
    attacks. ``board``: that run's leaderboard; ``table``: :func:`ground_truth`'s."""
    usable = board[(board["status"] != "n/a") & ~board["method"].isin(exact)]
    bars, tops = {}, {}
    for model, rows in table.groupby("model"):
        mine = usable[usable["model"] == model]
        first = rows.iloc[0]
        bars[model] = {"certified": mine[mine["kind"] == "verifier"]["error"].min(),
                       "exact": first["true_error_low"],
                       "attack": mine[mine["kind"] == "attack"]["error"].max()}
        tops[model] = {"exact": first["true_error_high"]}
    labels = {"certified": "certified error (best verifier)",
              "exact": "true error (bar: broken; whisker: not certified)",
              "attack": "attack error (best attack)"}
    return _grouped_bars(pd.DataFrame.from_dict(bars, orient="index"), list(labels), labels,
                         "Certified, exact and attack error per network",
                         whiskers=pd.DataFrame.from_dict(tops, orient="index"))


def _ground_truth(models: list[str], n: int, out: Path, time_limit: float,
                  stages: _Stages) -> tuple[dict[str, Path], int]:
    """The ground-truth run into ``OUT/exact`` and its table and figure."""
    methods = _exact_methods(time_limit, stages.echo)
    result = stages.run(models, methods, [MAIN_EPS], out / EXACT_DIR, n=n,
                        cache=out / CACHE_DIR)
    exact = {m.name for m in methods if is_exact(m.plugin)}
    table = ground_truth(to_frame(result.records or []), exact)
    write_csv(table, out / "ground_truth.csv")
    text = ground_truth_markdown(table).encode()
    atomic_write(out / "ground_truth.md", lambda handle: handle.write(text))
    save_figure(figure_exact(result.leaderboard, table, exact), out / "fig_exact.png")
    return ({"ground_truth": out / "ground_truth.md", "fig_exact": out / "fig_exact.png"},
            len(result.violations))


def report(*, out: Path, n: int, models: list[str] | None = None,
           model_dir: Path | None = None, batch_size: int = 250, progress: bool = True,
           echo: Callable[[str], None] | None = None, exact_n: int = EXACT_N,
           exact_time_limit: float = EXACT_TIME_LIMIT,
           executor: Executor | None = None) -> tuple[dict[str, Path], int]:
    """Run (or resume) the main grid, the sweep and the ground truth on the first
    ``min(n, exact_n)`` images (none when ``exact_n`` is 0), then write tables and figures.
    Every run goes to ``executor`` (default: in this process).

    Returns the files written and the number of soundness violations in all runs.
    """
    echo = echo or (lambda line: print(line, file=sys.stderr))
    models = models or (shipped_names(model_dir) if model_dir else shipped_names())
    stages = _Stages(n, batch_size, model_dir, progress, echo, executor)
    main = stages.run(models, _methods(None, None, echo), [MAIN_EPS], out)
    written = {"leaderboard": out / "leaderboard.csv", "gaps": out / "gaps.csv"}
    violations = len(main.violations)
    board = main.leaderboard
    for name, draw in [("fig2_bounds", figure2), ("fig3a_sdp_vs_pgd", figure3a)]:
        save_figure(draw(board), out / f"{name}.png")
        written[name] = out / f"{name}.png"
    if SWEEP_MODEL in models:
        sweep = stages.run([SWEEP_MODEL], _methods([SWEEP_VERIFIER], SWEEP_ATTACKS),
                           SWEEP_EPS, out / "sweep")
        violations += len(sweep.violations)
        save_figure(figure3b(sweep.leaderboard), out / "fig3b_sdp_nn_attacks.png")
        written["fig3b"] = out / "fig3b_sdp_nn_attacks.png"
    else:
        echo(f"{SWEEP_MODEL} is not among the models; Figure 3b skipped")
    unclipped = _unclipped_lp(models, out, stages)
    if unclipped is not None:
        violations += len(unclipped.violations)
    table = table1(board, None if unclipped is None else unclipped.leaderboard)
    csv_text = table.to_csv(index=False, float_format="%.4f").encode()
    atomic_write(out / "table1.csv", lambda handle: handle.write(csv_text))
    atomic_write(out / "table1.md", lambda handle: handle.write(table1_markdown(table).encode()))
    written["table1"] = out / "table1.md"
    if exact_n > 0:
        files, unsound = _ground_truth(models, min(n, exact_n), out, exact_time_limit,
                                       stages)
        written.update(files)
        violations += unsound
    pyplot().close("all")
    written["page"] = write_page(out, title="certbench report", settings=[
        ("images", str(n)), ("ground truth", f"first {min(n, exact_n)} images, "
                                               f"{exact_time_limit:g} s per sample")])
    return written, violations
