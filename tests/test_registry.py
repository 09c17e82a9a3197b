"""Plugin discovery: entry points, a real third-party package, clear errors."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from bench import registry
from bench.registry import RegistryError, discover, parse_option, select
from tests.conftest import run_cli

def test_builtins_are_discovered_with_their_origin():
    verifiers, attacks = discover("verifier"), discover("attack")
    assert {"frobenius", "spectral"} <= set(verifiers)
    assert {"fgsm", "pgd", "cw"} <= set(attacks)
    assert verifiers["spectral"].distribution == "certbench"


def test_third_party_plugin_is_listed_and_usable(plugin_site, model_dir, tmp_path):
    listed = run_cli("list", env_path=plugin_site)
    assert listed.returncode == 0, listed.stderr
    assert "interval" in listed.stdout and "certbench-example-plugin 0.0.1" in listed.stdout
    assert "corner-noise" in listed.stdout
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
    with pytest.raises(RegistryError, match="pkg-a 1.*pkg-b 1"):
        discover("verifier")


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
    root = Path(__file__).resolve().parents[1]
    for folder in ("bench", "verifiers", "attacks"):
        for path in (root / folder).glob("*.py"):
            text = path.read_text()
            assert not re.search(r"\bhasattr\(", text), f"{path.name} uses hasattr"
            for name in re.findall(r"\bhook\([^,]+,\s*\"(\w+)\"\)", text):
                assert name in HOOKS, f"{path.name} reads undeclared hook {name!r}"
