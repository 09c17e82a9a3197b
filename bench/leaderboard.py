"""The leaderboard and the gap table, derived from per-sample records with pandas.

Leaderboard, one row per (model, eps, method):
    ``error``  verifier: certified error, the fraction of samples NOT certified (an
               upper bound on the adversarial error); attack: the fraction broken
               (a lower bound). Samples whose status is not ok count as not
               certified / not broken, so a failing plugin can only look worse.
    ``ci_low``, ``ci_high``  Wilson 95% interval of ``error``; ``mean_bound`` mean of
    the per-sample bound over ok samples; ``seconds_per_sample``; ``status``: ok,
    unsound (some attack margin exceeds this verifier's bound), error (some samples
    failed), timeout (some ran past the time limit), n/a (the verifier does not
    support the network).

Gap table, one row per (model, eps): the best certified error among sound
verifiers, the best attack error, their gap, and the per-sample combination
(certified by any sound verifier = min over verifiers; broken by any attack = max
over attacks) with its own gap: the true error lies in ``[combined_attack_error,
combined_certified_error]``, and ``n_unsettled`` samples are neither certified nor
broken. Every fraction is a float in [0, 1].

With an exact method in the run (a plugin with ``exact = True``, e.g. ``milp``,
``milp-cex`` and ``bab``), the gap table also splits the gap on the *decided* samples:
certified by an exact verifier, or broken by any attack (an attack's point, re-checked
in float64, is a counterexample whoever found it): ``exact_error`` is
the fraction of those samples that are truly breakable; ``verifier_looseness`` is
the combined certified error of the other verifiers minus it, ``attack_weakness`` it
minus the combined attack error of the other attacks (both >= 0 when all are sound).

Soundness: on every sample, every attack's max margin must be <= every verifier's
max bound, to ``ATOL + RTOL * |bound|``. Violations are returned, never averaged away.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from models.files import atomic_write

ATOL = 1e-6
RTOL = 1e-6
Z95 = 1.959963984540054

LEADERBOARD_COLUMNS = ["model", "eps", "method", "kind", "n", "n_ok", "error", "ci_low",
                       "ci_high", "mean_bound", "seconds_per_sample", "status", "config",
                       "version", "model_sha256"]
GAP_COLUMNS = ["model", "eps", "n", "best_certified_error", "best_verifier",
               "best_attack_error", "best_attack", "gap", "combined_certified_error",
               "combined_attack_error", "combined_gap", "n_unsettled", "n_decided",
               "exact_error",
               "verifier_looseness", "attack_weakness", "unsound_verifiers"]
VIOLATION_COLUMNS = ["model", "eps", "sample", "verifier", "verifier_bound", "attack",
                     "attack_margin"]


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion ``successes / n``."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + Z95 ** 2 / n
    centre = (p + Z95 ** 2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n ** 2)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def to_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Records as a table, with ``success``: status ok and certified (verifier) or broken
    (attack)."""
    frame = pd.DataFrame.from_records(records)
    frame["bound"] = pd.to_numeric(frame["bound"], errors="coerce").astype("float64")
    decided = frame["decided"].astype("boolean").fillna(False).astype(bool)
    frame["success"] = (frame["status"] == "ok") & decided
    return frame


def violations(frame: pd.DataFrame) -> pd.DataFrame:
    """Samples where an attack's margin exceeds a verifier's bound beyond tolerance."""
    ok = frame[frame["status"] == "ok"]
    upper = ok[ok["kind"] == "verifier"][["model", "eps", "sample", "method", "bound"]]
    lower = ok[ok["kind"] == "attack"][["model", "eps", "sample", "method", "bound"]]
    pairs = upper.merge(lower, on=["model", "eps", "sample"], suffixes=("_v", "_a"))
    bad = pairs["bound_a"] > pairs["bound_v"] + ATOL + RTOL * pairs["bound_v"].abs()
    out = pairs[bad].rename(columns={"method_v": "verifier", "bound_v": "verifier_bound",
                                     "method_a": "attack", "bound_a": "attack_margin"})
    return out[VIOLATION_COLUMNS].sort_values(["model", "eps", "sample", "verifier",
                                               "attack"]).reset_index(drop=True)


def leaderboard(frame: pd.DataFrame, unsound: pd.DataFrame) -> pd.DataFrame:
    rows = []
    bad = set(zip(unsound["model"], unsound["eps"], unsound["verifier"]))
    for (model, eps, method), group in frame.groupby(["model", "eps", "method"], sort=True):
        kind = group["kind"].iloc[0]
        n = len(group)
        ok = group["status"] == "ok"
        if (group["status"] == "n/a").all():
            status, error, lo, hi = "n/a", math.nan, math.nan, math.nan
        else:
            successes = int(group["success"].sum())
            counted = n - successes if kind == "verifier" else successes
            error = counted / n
            lo, hi = wilson_interval(counted, n)
            statuses = set(group["status"])
            status = ("unsound" if (model, eps, method) in bad
                      else "error" if "error" in statuses
                      else "timeout" if "timeout" in statuses else "ok")
        rows.append({"model": model, "eps": eps, "method": method, "kind": kind, "n": n,
                     "n_ok": int(ok.sum()), "error": error, "ci_low": lo, "ci_high": hi,
                     "mean_bound": group.loc[ok, "bound"].mean() if ok.any() else math.nan,
                     "seconds_per_sample": group["seconds"].mean(),
                     "status": status, "config": group["config"].iloc[0],
                     "version": group["version"].iloc[0],
                     "model_sha256": (group["model_sha256"].iloc[0]
                                      if "model_sha256" in group else "")})
    return pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)


def _any_success(group: pd.DataFrame, methods: list[str]) -> pd.Series:
    """Per sample of ``group``: did any of ``methods`` succeed (certify / break) on it."""
    chosen = group[group["method"].isin(methods)]
    samples = pd.Index(sorted(group["sample"].unique()))
    return chosen["success"].groupby(chosen["sample"]).any().reindex(samples, fill_value=False)


def _decided(group: pd.DataFrame, verifiers: list[str], attacks: list[str],
             exact: set[str]) -> tuple[pd.Series, float]:
    """Per sample, is it decided (certified by an exact verifier or broken by any
    attack), and the exact error: the fraction of decided samples some attack broke
    (NaN when none is decided)."""
    broken = _any_success(group, attacks)
    decided = _any_success(group, [m for m in verifiers if m in exact]) | broken
    return decided, float(broken[decided].mean()) if decided.any() else math.nan


def _exact_split(group: pd.DataFrame, verifiers: list[str], attacks: list[str],
                 exact: set[str]) -> dict[str, Any]:
    """``n_decided``, ``exact_error``, ``verifier_looseness``, ``attack_weakness``."""
    if not any(m in exact for m in verifiers + attacks):
        return {}
    decided, exact_error = _decided(group, verifiers, attacks, exact)
    if not decided.any():
        return {"n_decided": 0}
    out: dict[str, Any] = {"n_decided": int(decided.sum()), "exact_error": exact_error}
    others_v = [m for m in verifiers if m not in exact]
    others_a = [m for m in attacks if m not in exact]
    if others_v:
        certified = _any_success(group, others_v)[decided]
        out["verifier_looseness"] = float((~certified).mean()) - exact_error
    if others_a:
        out["attack_weakness"] = exact_error - float(_any_success(group, others_a)[decided].mean())
    return out


def gaps(frame: pd.DataFrame, board: pd.DataFrame, exact: set[str] = frozenset()) -> pd.DataFrame:
    rows = []
    for (model, eps), group in frame.groupby(["model", "eps"], sort=True):
        entries = board[(board["model"] == model) & (board["eps"] == eps)]
        unsound = sorted(entries.loc[entries["status"] == "unsound", "method"])
        usable = set(group.loc[group["status"] == "ok", "method"])   # ran on some sample
        verifiers = entries[(entries["kind"] == "verifier")
                            & entries["status"].isin(["ok", "error", "timeout"])
                            & entries["method"].isin(usable)]
        attacks = entries[(entries["kind"] == "attack") & (entries["status"] != "n/a")
                          & entries["method"].isin(usable)]
        row: dict[str, Any] = {"model": model, "eps": eps, "n": int(group["sample"].nunique()),
                               "unsound_verifiers": ",".join(unsound)}
        if len(verifiers):
            best = verifiers.sort_values(["error", "mean_bound", "method"]).iloc[0]
            row["best_certified_error"], row["best_verifier"] = best["error"], best["method"]
        if len(attacks):
            best = attacks.sort_values(["error", "method"], ascending=[False, True]).iloc[0]
            row["best_attack_error"], row["best_attack"] = best["error"], best["method"]
        if len(verifiers):
            certified = _any_success(group, list(verifiers["method"]))
            row["combined_certified_error"] = 1.0 - float(certified.mean())
        if len(attacks):
            broken = _any_success(group, list(attacks["method"]))
            row["combined_attack_error"] = float(broken.mean())
        if len(verifiers) and len(attacks):
            row["n_unsettled"] = int((~broken & ~certified).sum())
        row.update(_exact_split(group, list(verifiers["method"]), list(attacks["method"]), exact))
        rows.append(row)
    out = pd.DataFrame(rows, columns=GAP_COLUMNS)
    out["gap"] = out["best_certified_error"] - out["best_attack_error"]
    out["combined_gap"] = out["combined_certified_error"] - out["combined_attack_error"]
    return out


GROUND_TRUTH_COLUMNS = ["model", "eps", "method", "kind", "n", "true_error_low",
                        "true_error_high", "n_unsettled", "error", "looseness_low",
                        "looseness_high", "weakness_low", "weakness_high", "n_decided",
                        "n_undecided", "exact_error", "error_on_decided", "looseness",
                        "weakness", "seconds_per_sample"]


def ground_truth(frame: pd.DataFrame, exact: set[str]) -> pd.DataFrame:
    """Each method against the exact verdicts, one row per (model, eps, method).

    **Over all samples** (what a reader can defend): the true error lies in
    ``[true_error_low, true_error_high]``, the fraction broken by any attack (complete
    methods' counterexamples included) and the fraction certified by no sound verifier
    (complete methods included); ``n_unsettled`` samples are neither. A method's
    ``error`` is its certified error (verifier) or attack error (attack) over all
    samples; its looseness ``error - true error`` lies in ``[looseness_low,
    looseness_high]``, an attack's weakness ``true error - error`` in ``[weakness_low,
    weakness_high]``.

    **On the decided samples** (biased: the samples left undecided are the hard-to-break
    ones, so the error there overstates the network's): a sample is *decided* when an
    exact verifier certified it or any attack broke it;
    ``exact_error`` is the fraction of decided samples that some attack broke. On
    the decided samples, ``error_on_decided`` is a verifier's certified error or an
    attack's error, ``looseness = error_on_decided - exact_error`` (verifier, >= 0 when
    sound) and ``weakness = exact_error - error_on_decided`` (attack, >= 0).
    ``seconds_per_sample`` is over all samples of the run. Empty without exact methods.
    """
    rows = []
    for (model, eps), group in frame.groupby(["model", "eps"], sort=True):
        methods = group.drop_duplicates("method")[["method", "kind"]].itertuples(index=False)
        methods = list(methods)
        verifiers = [m.method for m in methods if m.kind == "verifier"]
        attacks = [m.method for m in methods if m.kind == "attack"]
        if not any(m.method in exact for m in methods):
            continue
        decided, exact_error = _decided(group, verifiers, attacks, exact)
        n, n_decided = len(decided), int(decided.sum())
        unsound = set(violations(group)["verifier"])
        broken = _any_success(group, attacks)
        certified = _any_success(group, [m for m in verifiers if m not in unsound])
        low, high = float(broken.mean()), 1.0 - float(certified.mean())
        unsettled = int((~broken & ~certified).sum())
        for method, kind in methods:
            success = _any_success(group, [method])          # per sample, all samples
            succeeded = success[decided]
            applies = not (group.loc[group["method"] == method, "status"] == "n/a").all()
            error = ((1.0 - float(succeeded.mean())) if kind == "verifier"
                     else float(succeeded.mean())) if n_decided and applies else math.nan
            seconds = group.loc[group["method"] == method, "seconds"].mean()
            everywhere = float(success.mean()) if applies else math.nan
            overall = 1.0 - everywhere if kind == "verifier" else everywhere
            verifier, attack = kind == "verifier", kind == "attack"
            rows.append({"model": model, "eps": eps, "method": method, "kind": kind, "n": n,
                         "true_error_low": low, "true_error_high": high,
                         "n_unsettled": unsettled, "error": overall,
                         "looseness_low": overall - high if verifier else math.nan,
                         "looseness_high": overall - low if verifier else math.nan,
                         "weakness_low": low - overall if attack else math.nan,
                         "weakness_high": high - overall if attack else math.nan,
                         "n_decided": n_decided, "n_undecided": n - n_decided,
                         "exact_error": exact_error, "error_on_decided": error,
                         "looseness": error - exact_error if kind == "verifier" else math.nan,
                         "weakness": exact_error - error if kind == "attack" else math.nan,
                         "seconds_per_sample": seconds})
    return pd.DataFrame(rows, columns=GROUND_TRUTH_COLUMNS)


PER_SAMPLE_COLUMNS = ["model", "eps", "sample", "certified_bound", "attack_margin"]


def per_sample(frame: pd.DataFrame) -> pd.DataFrame:
    """Per sample the gap made visible: ``certified_bound``, the smallest bound of the
    sound verifiers (``< 0``: certified), and ``attack_margin``, the largest margin an
    attack reached (``>= 0``: broken); ``attack_margin <= certified_bound`` on every
    sample, and the true worst margin lies between them. NaN where no verifier or no
    attack ran on the sample."""
    unsound = violations(frame)
    ok = frame[(frame["status"] == "ok") & frame["bound"].notna()]
    out = []
    for (model, eps), group in ok.groupby(["model", "eps"], sort=True):
        bad = set(unsound.loc[(unsound["model"] == model) & (unsound["eps"] == eps),
                              "verifier"])
        verifiers = group[(group["kind"] == "verifier") & ~group["method"].isin(bad)]
        attacks = group[group["kind"] == "attack"]
        samples = sorted(group["sample"].unique())
        upper = verifiers.groupby("sample")["bound"].min().reindex(samples)
        lower = attacks.groupby("sample")["bound"].max().reindex(samples)
        out.append(pd.DataFrame({"model": model, "eps": eps, "sample": samples,
                                 "certified_bound": upper.to_numpy(),
                                 "attack_margin": lower.to_numpy()}))
    return (pd.concat(out, ignore_index=True) if out
            else pd.DataFrame(columns=PER_SAMPLE_COLUMNS))


def tabulate(records: list[dict[str, Any]], exact: set[str] = frozenset()
             ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(leaderboard, gaps, violations)`` from a list of records; ``exact`` names the
    exact methods (see the module docstring)."""
    frame = to_frame(records)
    unsound = violations(frame)
    board = leaderboard(frame, unsound)
    return board, gaps(frame, board, exact), unsound


def write_csv(table: pd.DataFrame, path: Path) -> None:
    """Write ``table`` atomically with round-trippable floats."""
    atomic_write(path, lambda handle: table.to_csv(handle, index=False, float_format="%.10g"),
                 binary=False, suffix=".csv")
