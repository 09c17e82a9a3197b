"""The split of every method against exact verdicts (``bench.leaderboard.ground_truth``)."""

from __future__ import annotations

import math

import pytest

from bench.leaderboard import ground_truth, tabulate, to_frame


def record(method: str, kind: str, sample: int, decided: bool, bound: float,
           status: str = "ok", seconds: float = 1.0) -> dict:
    return {"model": "net", "eps": 0.1, "method": method, "kind": kind, "sample": sample,
            "label": 0, "bound": bound, "decided": decided, "seconds": seconds,
            "status": status, "message": "", "config": method, "version": "test",
            "seed": 0, "model_sha256": "0"}


def scenario() -> list[dict]:
    """Five samples. Exact verifier ``x`` certifies 0 and 1 (4 undecided by it); attack
    ``a`` breaks 2; attack ``b`` breaks 2 and 3; verifier ``v`` certifies 0; sample 4 is
    certified by nobody exact and broken by nobody: undecided."""
    rows = []
    for s in range(5):
        rows.append(record("x", "verifier", s, s in (0, 1), -1.0 if s in (0, 1) else 1.0))
        rows.append(record("v", "verifier", s, s == 0, -0.5 if s == 0 else 2.0))
        rows.append(record("a", "attack", s, s == 2, 0.5 if s == 2 else -3.0, seconds=2.0))
        rows.append(record("b", "attack", s, s in (2, 3), 0.5 if s in (2, 3) else -3.0))
        rows.append(record("n", "verifier", s, None, math.nan, status="n/a"))
    return rows


def test_ground_truth_by_hand():
    table = ground_truth(to_frame(scenario()), {"x"}).set_index("method")
    assert set(table.index) == {"x", "v", "a", "b", "n"}
    assert (table["n"] == 5).all() and (table["n_decided"] == 4).all()
    assert (table["n_undecided"] == 1).all()
    assert table["exact_error"].iloc[0] == pytest.approx(0.5)      # 2 of 4 decided broken
    assert table.loc["v", "error_on_decided"] == pytest.approx(0.75)
    assert table.loc["v", "looseness"] == pytest.approx(0.25)
    assert table.loc["x", "looseness"] == pytest.approx(0.0)       # exact: no looseness
    assert table.loc["a", "weakness"] == pytest.approx(0.25)
    assert table.loc["b", "weakness"] == pytest.approx(0.0)
    assert table.loc["a", "seconds_per_sample"] == pytest.approx(2.0)
    assert math.isnan(table.loc["n", "error_on_decided"])          # n/a is not "all wrong"
    assert math.isnan(table.loc["a", "looseness"]) and math.isnan(table.loc["v", "weakness"])


def test_the_true_error_and_every_method_as_intervals_over_all_samples():
    """Samples 2 and 3 broken (a, b), 0 and 1 certified (x, v), 4 neither: the true error
    is between 2/5 and 3/5 with one sample unsettled; each method's looseness or weakness
    is its error over all five samples against both ends."""
    table = ground_truth(to_frame(scenario()), {"x"}).set_index("method")
    assert table["true_error_low"].tolist() == pytest.approx([0.4] * 5)
    assert table["true_error_high"].tolist() == pytest.approx([0.6] * 5)
    assert (table["n_unsettled"] == 1).all()
    expected = {"x": (0.6, 0.0, 0.2), "v": (0.8, 0.2, 0.4)}        # error, looseness interval
    for method, (error, low, high) in expected.items():
        assert table.loc[method, "error"] == pytest.approx(error)
        assert table.loc[method, "looseness_low"] == pytest.approx(low)
        assert table.loc[method, "looseness_high"] == pytest.approx(high)
    expected = {"a": (0.2, 0.2, 0.4), "b": (0.4, 0.0, 0.2)}        # error, weakness interval
    for method, (error, low, high) in expected.items():
        assert table.loc[method, "error"] == pytest.approx(error)
        assert table.loc[method, "weakness_low"] == pytest.approx(low)
        assert table.loc[method, "weakness_high"] == pytest.approx(high)
    assert math.isnan(table.loc["n", "error"])
    _, gaps, _ = tabulate(scenario(), {"x"})
    row = gaps.iloc[0]
    assert row["combined_attack_error"] == pytest.approx(0.4)
    assert row["combined_certified_error"] == pytest.approx(0.6)
    assert row["n_unsettled"] == 1


def test_an_unsound_verifier_certifies_nothing_in_the_interval():
    """A verifier whose bound an attack beats is not trusted: its 'certified' samples do
    not lower the upper end of the true error."""
    rows = scenario() + [record("u", "verifier", s, True, -1.0) for s in range(5)]
    table = ground_truth(to_frame(rows), {"x"}).set_index("method")
    assert table["true_error_high"].tolist() == pytest.approx([0.6] * 6)


def test_the_gap_table_uses_the_same_decided_samples():
    _, gaps, _ = tabulate(scenario(), {"x"})
    row = gaps.iloc[0]
    assert row["n_decided"] == 4 and row["exact_error"] == pytest.approx(0.5)
    assert row["verifier_looseness"] == pytest.approx(0.25)        # v alone: 3 of 4 not certified
    assert row["attack_weakness"] == pytest.approx(0.0)            # a or b: 2 of 4 broken


def test_no_exact_method_no_rows():
    assert len(ground_truth(to_frame(scenario()), set())) == 0


def test_the_exact_figure_draws_a_point_interval_whose_ends_differ_in_the_last_bit():
    """The true error of a network with nothing unsettled is a point; its two ends, each
    computed its own way, may differ by an ulp, and the whisker must not go negative
    (the committed report's regeneration stopped there)."""
    import pandas as pd

    from bench.report import figure_exact

    board = pd.DataFrame([{"model": "a", "method": "crown", "kind": "verifier",
                           "status": "ok", "error": 0.7},
                          {"model": "a", "method": "pgd", "kind": "attack", "status": "ok",
                           "error": 0.5}])
    table = pd.DataFrame([{"model": "a", "true_error_low": 0.1 + 0.2,   # 0.30000000000000004
                           "true_error_high": 0.3}])
    assert table["true_error_high"][0] < table["true_error_low"][0]
    figure = figure_exact(board, table, {"milp"})
    assert figure is not None
