"""The layer contract (pyproject's ``[tool.importlinter]``) holds, and breaks on an
upward import: ``lint-imports`` on a copy of the packages, as is and with ``models``
importing ``verifiers``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "verifiers", "attacks", "models")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the contract of ``tree``, importing the packages from it."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    command = "import sys; from importlinter.cli import lint_imports_command as c; c()"
    return subprocess.run([sys.executable, "-c", command, "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    pytest.importorskip("importlinter")
    out = tmp_path_factory.mktemp("layers")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, out / package,
                        ignore=shutil.ignore_patterns("*.safetensors", "*.npz", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", out / "pyproject.toml")
    return out


def test_the_layers_hold(tree):
    done = lint_imports(tree)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("module, upward", [
    ("models/mlp.py", "import verifiers.linear.propagation"),       # models above plugins
    ("attacks/common.py", "import verifiers.verdicts"),              # attacks above verifiers
    ("verifiers/norm/norm_bound.py", "import bench.runner"),         # a plugin reaching the runner
    ("verifiers/sdp/pair_solver.py", "import verifiers.bab.domains"),  # family into family
])
def test_an_upward_import_breaks_the_contract(tree, module, upward):
    path = tree / module
    original = path.read_text()
    path.write_text(original + f"\n{upward}  # noqa: E402,F401\n")
    try:
        done = lint_imports(tree)
    finally:
        path.write_text(original)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout and upward.split()[-1] in done.stdout


def test_no_plugin_module_imports_another_plugin_module():
    """A plugin module imports engines, never another plugin's module (pyproject's entry
    points name the plugin modules)."""
    import ast

    tomllib = pytest.importorskip("tomllib")          # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    plugins = {target.split(":")[0] for group in ("bench.verifiers", "bench.attacks")
               for target in project["entry-points"][group].values()}
    assert len(plugins) >= 20
    for module in sorted(plugins):
        tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
        imported = {node.module for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                     for alias in node.names}
        assert not (imported & (plugins - {module})), (module, imported & plugins)
