"""The harness does not trust its plugins or its input: no silently wrong result."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.registry import PluginInfo, RegistryError
from tests.conftest import fake_method, grid_methods, invoke, run_grid


class PoisonsTheNetwork:
    """Doubles the first layer's weights in place, then returns a vacuous bound."""

    name = "poisons-net"

    def __repr__(self):
        return "PoisonsTheNetwork()"

    def bound(self, net, x, y, eps):
        with torch.no_grad():
            net.linears[0].weight.mul_(2.0)
        return torch.full((len(y), net.num_classes), 1e9, dtype=torch.float64)


class ShiftsItsInput:
    """Adds 0.5 to the input it was given, in place."""

    name = "shifts-x"

    def __repr__(self):
        return "ShiftsItsInput()"

    def bound(self, net, x, y, eps):
        x.add_(0.5)
        return torch.full((len(y), net.num_classes), 1e9, dtype=torch.float64)


def test_a_plugin_that_changes_its_network_or_input_is_an_error_and_harms_no_one(tmp_path,
                                                                                model_dir):
    honest = grid_methods(verifiers=("crown",), attacks=("pgd",))
    clean = run_grid(tmp_path / "clean", model_dir, methods=honest, n=16, eps=(0.1,))
    poisoned = run_grid(tmp_path / "poisoned", model_dir, n=16, eps=(0.1,),
                        methods=[fake_method(PoisonsTheNetwork()), fake_method(ShiftsItsInput()),
                                 *grid_methods(verifiers=("crown",), attacks=("pgd",))])
    board = poisoned.leaderboard.set_index(["model", "method"])
    assert (board.xs("poisons-net", level="method")["status"] == "error").all()
    assert (board.xs("shifts-x", level="method")["status"] == "error").all()
    assert poisoned.violations.empty
    reference = clean.leaderboard.set_index(["model", "method"])
    for method in ("crown", "pgd"):
        assert board.xs(method, level="method")["error"].tolist() == \
            reference.xs(method, level="method")["error"].tolist()


def test_duplicate_eps_and_models_are_counted_once(tmp_path, model_dir):
    out = tmp_path / "out"
    code, _, err = invoke(["run", "--verifiers", "spectral", "--attacks", "fgsm", "--model-dir",
                           str(model_dir), "--models", "tiny-a,tiny-a", "--eps", "0.1", "0.10",
                           "1e-1", "--n", "12", "--out", str(out), "--quiet"])
    assert code == 0, err
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(board) == 2 and (board["n"] == 12).all()


def test_another_seed_recomputes_and_failed_batches_are_retried(tmp_path, model_dir):
    methods = grid_methods(verifiers=("spectral",), attacks=("pgd",))
    first = run_grid(tmp_path, model_dir, methods=methods, n=16, eps=(0.1,), seed=0)
    assert first.computed_batches > 0
    assert run_grid(tmp_path, model_dir, methods=methods, n=16, eps=(0.1,),
                    seed=0).computed_batches == 0
    reseeded = run_grid(tmp_path, model_dir, methods=methods, n=16, eps=(0.1,), seed=1)
    assert reseeded.computed_batches == 8            # the seed is part of every record's key
    fresh = run_grid(tmp_path / "fresh", model_dir, methods=methods, n=16, eps=(0.1,), seed=1)
    columns = ["model", "method", "error", "mean_bound"]
    assert reseeded.leaderboard[columns].equals(fresh.leaderboard[columns])

    class FailsOnce:
        name = "fails-once"
        calls = 0

        def __repr__(self):
            return "FailsOnce()"

        def bound(self, net, x, y, eps):
            FailsOnce.calls += 1
            if FailsOnce.calls <= 4:
                raise RuntimeError("transient")
            return torch.full((len(y), net.num_classes), 1.0, dtype=torch.float64)
    flaky = [fake_method(FailsOnce())]
    failed = run_grid(tmp_path / "flaky", model_dir, methods=flaky, n=16, eps=(0.1,))
    assert set(failed.leaderboard["status"]) == {"error"}
    retried = run_grid(tmp_path / "flaky", model_dir, methods=flaky, n=16, eps=(0.1,))
    assert retried.computed_batches == 4 and set(retried.leaderboard["status"]) == {"ok"}


def test_a_method_that_failed_everywhere_is_never_the_best(tmp_path, model_dir):
    class AlwaysFails:
        name = "always-fails"

        def __repr__(self):
            return "AlwaysFails()"

        def perturb(self, net, x, y, eps):
            raise RuntimeError("broken attack")
    methods = [*grid_methods(verifiers=("spectral",), attacks=()),
               fake_method(AlwaysFails(), kind="attack")]
    result = run_grid(tmp_path, model_dir, methods=methods, n=8, eps=(0.1,))
    assert result.gaps["best_attack"].isna().all()
    assert result.gaps["best_verifier"].eq("spectral").all()


def test_the_time_limit_cannot_be_swallowed(tmp_path, model_dir):
    class Stubborn:
        name = "stubborn"

        def __repr__(self):
            return "Stubborn()"

        def bound(self, net, x, y, eps):
            try:
                time.sleep(5)
            except Exception:          # noqa: BLE001 - what a careless plugin does
                pass
            return torch.full((len(y), net.num_classes), -1.0, dtype=torch.float64)
    result = run_grid(tmp_path, model_dir, methods=[fake_method(Stubborn())], n=4,
                      eps=(0.1,), batch_size=4, time_limit=0.05, models=("tiny-a",))
    assert set(result.leaderboard["status"]) == {"timeout"}


@pytest.mark.parametrize("option, message", [
    ("pgd.steps=-5", "steps must be an integer >= 1, got -5"),
    ("pgd.steps=abc", "steps must be an integer >= 1, got 'abc'"),
    ("pgd.rel_stepsize=nan", "rel_stepsize must be a finite number > 0"),
    ("fgsm.random_start=3", "random_start must be True or False"),
])
def test_bad_plugin_options_are_one_line_and_exit_1(option, message, tmp_path, model_dir):
    plugin = option.split(".")[0]
    code, _, err = invoke(["run", "--verifiers", "spectral", "--attacks", plugin,
                           "--model-dir", str(model_dir), "--n", "4", "--out",
                           str(tmp_path / "out"), "--set", option])
    assert code == 1
    assert err.strip().count("\n") == 0 and message in err
    assert not (tmp_path / "out").exists()


def test_a_plugin_repr_with_a_memory_address_is_refused():
    class NoRepr:
        name = "no-repr"

        def bound(self, net, x, y, eps):
            return None
    info = PluginInfo("no-repr", "verifier", type("EP", (), {"load": lambda: NoRepr,
                                                             "value": "x:NoRepr"}), "pkg", "1")
    with pytest.raises(RegistryError, match="no deterministic repr"):
        info.create()


def test_eps_above_one_is_refused_and_run_defaults_to_a_fresh_folder(tmp_path, model_dir,
                                                                      monkeypatch):
    code, _, err = invoke(["run", "--eps", "1.5", "--n", "4"])
    assert code == 1 and "eps must be at most 1" in err
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, _, err = invoke(["run", "--verifiers", "spectral", "--attacks", "fgsm", "--model-dir",
                           str(model_dir), "--models", "tiny-a", "--n", "4", "--quiet"])
    assert code == 0, err
    (folder,) = (work / "runs").iterdir()
    assert (folder / "leaderboard.csv").exists() and not (work / "results").exists()
    assert f"--out {Path('runs') / folder.name}" in err


def test_training_never_writes_over_the_shipped_networks():
    import hashlib

    from models.store import SHIPPED_DIR
    shipped = SHIPPED_DIR / "nt-nn.safetensors"
    before = hashlib.sha256(shipped.read_bytes()).hexdigest()
    code, _, err = invoke(["train", "nt-nn", "--quick", "--out-dir", str(SHIPPED_DIR)])
    assert code == 1 and "never overwrites" in err
    assert err.strip().count("\n") == 0
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == before


def test_the_leaderboard_carries_each_networks_weights_hash(tmp_path, model_dir):
    from models import load_card
    result = run_grid(tmp_path, model_dir, methods=grid_methods(verifiers=("spectral",),
                                                                attacks=("fgsm",)),
                      n=4, eps=(0.1,))
    for row in result.leaderboard.itertuples():
        assert row.model_sha256 == load_card(row.model, model_dir).weights_sha256


def test_report_with_a_missing_model_dir_and_a_closed_pipe_are_not_tracebacks(tmp_path):
    code, _, err = invoke(["report", "--model-dir", str(tmp_path / "nonexistent"), "--n", "4",
                           "--out", str(tmp_path / "out")])
    assert code == 1 and "holds no networks" in err and "Traceback" not in err
    import subprocess
    import sys
    piped = subprocess.run(f"{sys.executable} -m bench list | head -1", shell=True,
                           capture_output=True, text=True)
    assert piped.stdout.strip() == "verifiers:" and "Traceback" not in piped.stderr


def test_the_run_output_summarises_solver_statistics_per_model(tmp_path, model_dir):
    out = tmp_path / "out"
    code, stdout, err = invoke(["run", "--verifiers", "sdp", "--attacks", "fgsm", "--model-dir",
                                str(model_dir), "--n", "4", "--out", str(out), "--quiet"])
    assert code == 0, err
    lines = [line for line in stdout.splitlines() if " sdp: 45 solves" in line]
    assert len(lines) == 2 and len(stdout.splitlines()) < 40
    stats = pd.read_csv(out / "solver_stats.csv")
    assert len(stats) == 90


def test_bench_runs_from_a_folder_with_its_own_models_package_and_attacks_module(tmp_path):
    """A user's ``models/`` and ``attacks.py`` in the current folder do not shadow ours."""
    import os
    import subprocess
    import sys
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("raise ImportError('the user models')\n")
    (tmp_path / "attacks.py").write_text("raise ImportError('the user attacks')\n")
    done = subprocess.run([sys.executable, "-m", "bench", "run", "--verifiers", "spectral",
                           "--attacks", "fgsm", "--models", "nt-nn", "--n", "4", "--quiet",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=tmp_path, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "leaderboard.csv").exists()


def test_stale_solver_statistics_are_dropped_and_pair_solves_are_kept(tmp_path, model_dir):
    from models import load, weights_summary
    methods = grid_methods(verifiers=("sdp",), attacks=())
    run_grid(tmp_path, model_dir, methods=methods, n=4, eps=(0.1,), models=("tiny-a",))
    stats = pd.read_csv(tmp_path / "solver_stats.csv", dtype={"weights": str})
    old = stats.assign(weights="0123456789abcdef")       # rows of an older tiny-a
    foreign = stats.assign(model="elsewhere")             # a model this run does not use
    pd.concat([stats, old, foreign]).to_csv(tmp_path / "solver_stats.csv", index=False)
    assert list((tmp_path / "cache" / "sdp").glob("*.json"))
    again = run_grid(tmp_path, model_dir, methods=grid_methods(verifiers=("sdp",), attacks=()),
                     n=8, eps=(0.1,), models=("tiny-a",))
    kept = pd.read_csv(tmp_path / "solver_stats.csv", dtype={"weights": str})
    current = weights_summary(load("tiny-a", model_dir)[0])
    assert set(kept.loc[kept["model"] == "tiny-a", "weights"]) == {current}
    assert (kept["model"] == "elsewhere").sum() == 45
    assert again.computed_batches == 1
