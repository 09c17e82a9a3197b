"""Plugin discovery: entry points, a real third-party package, clear errors."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from bench import registry
from bench.registry import RegistryError, discover, parse_option, select
from tests.conftest import invoke, run_cli


def test_builtins_are_discovered_with_their_origin():
    verifiers, attacks = discover("verifier"), discover("attack")
    assert {"frobenius", "spectral"} <= set(verifiers)
    assert {"fgsm", "pgd", "cw"} <= set(attacks)
    assert verifiers["spectral"].distribution == "certbench"


def test_third_party_plugin_is_listed_and_usable(plugin_site, model_dir, tmp_path,
                                                 monkeypatch):
    """Listed in this process (the package's folder on ``sys.path``), then run by a fresh
    ``python -m bench`` that finds it through ``PYTHONPATH``."""
    with monkeypatch.context() as patch:
        patch.syspath_prepend(str(plugin_site))
        code, stdout, stderr = invoke(["list"])
    assert code == 0, stderr
    assert "interval" in stdout and "certbench-example-plugin 0.0.1" in stdout
    assert "corner-noise" in stdout
    out = tmp_path / "out"
    done = run_cli("run", "--verifiers", "interval,spectral", "--attacks", "corner-noise,fgsm",
                   "--model-dir", str(model_dir), "--models", "tiny-a", "--n", "12", "--out",
                   str(out), "--quiet", "--set", "corner-noise.tries=2", env_path=plugin_site)
    assert done.returncode == 0, done.stderr
    board = pd.read_csv(out / "leaderboard.csv")
    assert set(board["method"]) == {"interval", "spectral", "corner-noise", "fgsm"}
    row = board.set_index("method").loc["interval"]
    assert row["status"] == "ok" and row["version"] == "certbench-example-plugin 0.0.1"
    assert board.set_index("method").loc["corner-noise", "config"] == "CornerNoise(tries=2)"


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(RegistryError, match="available: .*frobenius.*spectral"):
        select("verifier", ["spectral", "nope"])


def test_duplicate_names_name_both_providers(monkeypatch):
    def fake(name, value, dist):
        return SimpleNamespace(name=name, value=value, dist=SimpleNamespace(name=dist, version="1"))
    monkeypatch.setattr(registry, "entry_points", lambda group: [
        fake("twin", "pkg_a:V", "pkg-a"), fake("twin", "pkg_b:V", "pkg-b")])
    assert "twin" in discover("verifier")                 # discovery itself never fails
    with pytest.raises(RegistryError, match="pkg-a 1.*pkg-b 1"):
        select("verifier", ["twin"])


def test_default_selection_leaves_out_opt_in(monkeypatch):
    class OptIn:
        name, opt_in = "slow", True

    class Plain:
        name = "plain"

    def fake(name, cls):
        return SimpleNamespace(name=name, value=f"x:{name}", load=lambda: cls,
                               dist=SimpleNamespace(name="d", version="1"))
    monkeypatch.setattr(registry, "entry_points",
                        lambda group: [fake("slow", OptIn), fake("plain", Plain)])
    assert [info.name for info in select("verifier", None)] == ["plain"]
    assert [info.name for info in select("verifier", ["slow"])] == ["slow"]


def test_parse_option():
    assert parse_option("pgd.restarts=10") == ("pgd", "restarts", 10)
    assert parse_option("sdp.backend=cvxpy") == ("sdp", "backend", "cvxpy")
    with pytest.raises(RegistryError):
        parse_option("pgd=10")


def _plugin_class(**members):
    def bound(self, net, x, y, eps):
        return None
    return type("Probe", (), {"name": "probe", "bound": bound, **members})


@pytest.mark.parametrize("members, hook_named", [
    ({"statistics": lambda self, extra: []}, "statistics"),
    ({"supports": lambda self: True}, "supports"),
    ({"exact": "yes"}, "exact"),
    ({"opt_in": 1}, "opt_in"),
    ({"bound": None}, "bound"),
    ({"bound": lambda self, net, x: None}, "bound"),
], ids=["statistics-arity", "supports-arity", "exact-type", "opt-in-type", "no-bound",
        "bound-arity"])
def test_a_malformed_hook_is_one_line_naming_the_plugin_and_the_hook(members, hook_named):
    cls = _plugin_class(**members)
    info = registry.PluginInfo("probe", "verifier", SimpleNamespace(load=lambda: cls,
                                                                     value="x:Probe"), "pkg", "1")
    with pytest.raises(RegistryError) as caught:
        info.create()
    message = str(caught.value)
    assert "'probe' from pkg 1" in message and repr(hook_named) in message
    assert "\n" not in message


def test_every_hook_the_harness_reads_is_declared():
    """No hook is looked up by a name the contract does not declare."""
    import re
    from pathlib import Path

    from bench.contract import HOOKS
    from bench.training.hooks import OBJECTIVE_HOOKS
    root = Path(__file__).resolve().parents[1]
    for folder in ("bench", "verifiers", "attacks"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text()
            assert not re.search(r"\bhasattr\(", text), f"{path.name} uses hasattr"
            for name in re.findall(r"\bhook\([^,]+,\s*\"(\w+)\"\)", text):
                assert name in HOOKS, f"{path.name} reads undeclared hook {name!r}"
            for name in re.findall(r"\bobjective_hook\([^,]+,\s*\"(\w+)\"\)", text):
                assert name in OBJECTIVE_HOOKS, f"{path.name} reads undeclared hook {name!r}"


def test_a_broken_or_duplicate_plugin_fails_only_when_requested(monkeypatch):
    class Plain:
        name = "plain"

        def __repr__(self):
            return "Plain()"

        def bound(self, net, x, y, eps):
            return None

    def broken_load():
        raise ImportError("No module named 'my_package'")

    def fake(name, load, dist="d"):
        return SimpleNamespace(name=name, value=f"{dist}:{name}", load=load,
                               dist=SimpleNamespace(name=dist, version="1"))
    monkeypatch.setattr(registry, "entry_points", lambda group: [
        fake("plain", lambda: Plain), fake("broken", broken_load),
        fake("twin", lambda: Plain, "a"), fake("twin", lambda: Plain, "b")])
    warnings: list[str] = []
    assert [i.name for i in select("verifier", None, warnings.append)] == ["plain"]
    assert len(warnings) == 2 and any("broken" in w and "my_package" in w for w in warnings)
    assert [i.name for i in select("verifier", ["plain"])] == ["plain"]
    with pytest.raises(RegistryError, match="'broken' .* failed to load"):
        select("verifier", ["broken"])
    assert registry.usable(discover("verifier")["twin"]).startswith("duplicate")


def test_list_reports_a_broken_third_party_plugin_and_runs_still_work(tmp_path, model_dir,
                                                                      monkeypatch):
    """The README's entry-point snippet, copied literally, names a module that does not
    exist: ``bench list`` marks it BROKEN and ``bench run`` of other plugins still works.
    In this process, the package's folder put on ``sys.path`` (the third-party test above
    runs a real subprocess)."""
    import subprocess
    import sys
    package = tmp_path / "src"
    package.mkdir()
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = '
        '"setuptools.build_meta"\n[project]\nname = "broken-plugin"\nversion = "0.1"\n'
        '[tool.setuptools]\npy-modules = []\n'
        '[project.entry-points."bench.attacks"]\nmy-attack = "my_package.attack:MyAttack"\n')
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--disable-pip-version-check", "--target",
                    str(site), str(package)], check=True, capture_output=True)
    monkeypatch.syspath_prepend(str(site))
    code, stdout, stderr = invoke(["list"])
    assert code == 0, stderr
    line = next(l for l in stdout.splitlines() if "my-attack" in l)
    assert "BROKEN" in line and "my_package" in line
    code, _, stderr = invoke(["run", "--verifiers", "spectral", "--model-dir", str(model_dir),
                              "--models", "tiny-a", "--n", "4", "--out", str(tmp_path / "out"),
                              "--quiet"])
    assert code == 0, stderr
    assert "my-attack" in stderr and "left out of the default grid" in stderr
    code, _, stderr = invoke(["run", "--attacks", "my-attack", "--model-dir", str(model_dir),
                              "--n", "4", "--out", str(tmp_path / "out2"), "--quiet"])
    assert code == 1 and stderr.count("\n") == 1


def test_a_constructor_raising_anything_is_one_line():
    class Explodes:
        name = "explodes"

        def __init__(self):
            raise RuntimeError("no GPU here")
    info = registry.PluginInfo("explodes", "verifier",
                               SimpleNamespace(load=lambda: Explodes, value="x:Explodes"),
                               "pkg", "1")
    with pytest.raises(RegistryError, match="failed to build: RuntimeError: no GPU here"):
        info.create()


def test_list_verbose_shows_each_plugins_set_keys():
    code, stdout, stderr = invoke(["list", "--verbose"])
    assert code == 0, stderr
    lines = stdout.splitlines()
    at = lines.index(next(l for l in lines if l.strip().startswith("pgd ")))
    assert lines[at + 1].strip() == "networks: ReLU MLPs and operator graphs"
    assert {l.strip() for l in lines[at + 2:at + 5]} == {"steps=40", "rel_stepsize=0.1",
                                                          "restarts=5"}
    at = lines.index(next(l for l in lines if l.strip().startswith("milp ")))
    assert lines[at + 1].strip() == "networks: ReLU MLPs only (operator graphs read n/a)"
