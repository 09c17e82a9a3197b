"""Shared fixtures: tiny seeded networks and data, and a folder of tiny 'shipped' models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from models import MLP, Card, save

if os.environ.get("PYTEST_XDIST_WORKER"):
    # with ``pytest -n 2`` each worker gets one core: torch's own threads (and those of the
    # processes a test starts) would otherwise oversubscribe the machine
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


def random_mlp(widths: list[int], seed: int, scale: float = 1.0) -> MLP:
    """A seeded MLP with weights scaled by ``scale`` (float32, eval mode)."""
    torch.manual_seed(seed)
    net = MLP(widths)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return net.eval()


def pre_activations(params, points: torch.Tensor) -> list[torch.Tensor]:
    """Per hidden layer of ``params`` (``[(W_k, b_k)]``), its pre-activations ``(P, m_k)`` at
    ``points (P, d)``."""
    out, z = [], points
    for w, b in params[:-1]:
        out.append(z @ w.T + b)
        z = out[-1].clamp(min=0)
    return out


def random_inputs(n: int, d: int, k: int, seed: int, margin: float = 0.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (n, d)`` uniform in ``[margin, 1 - margin]`` and labels ``y (n,)`` in ``0..k-1``."""
    g = torch.Generator().manual_seed(seed)
    x = margin + (1 - 2 * margin) * torch.rand(n, d, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return x, y


def sample_ball(x: torch.Tensor, eps: float, count: int, seed: int) -> torch.Tensor:
    """``count`` points per sample in ``B_eps(x) ∩ [0,1]^d``: shape ``(count, N, d)``.

    Half are corners of the ball (where the extremes of a piecewise-linear net
    tend to lie), half uniform inside it.
    """
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (count // 2, *x.shape), generator=g).to(x.dtype) * 2 - 1
    inside = torch.rand(count - count // 2, *x.shape, generator=g, dtype=x.dtype) * 2 - 1
    return (x + eps * torch.cat([signs, inside])).clamp(0, 1)


def margins_seen(net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int = 0,
                 count: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    """``(max over sampled points, PGD)`` margins ``(N, K)`` in float64: what a sound
    upper bound must lie above (points in ``B_eps(x) ∩ [0,1]^d``)."""
    from attacks.pgd import PGD
    from bench.contract import margins, project
    net64 = net.float64_copy()
    with torch.no_grad():
        seen = torch.stack([margins(net64(p), y) for p in sample_ball(x.double(), eps, count,
                                                                       seed)]).amax(dim=0)
    torch.manual_seed(seed)
    x_adv = project(PGD(steps=40, restarts=3).perturb(net, x, y, eps).double(), x.double(), eps)
    with torch.no_grad():
        return seen, margins(net64(x_adv), y)


def assert_sound(upper: torch.Tensor, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float,
                 seed: int = 0, atol: float = 1e-8) -> None:
    """``upper (N, K)`` is above every sampled margin and every PGD margin."""
    sampled, attacked = margins_seen(net, x, y, eps, seed)
    assert (sampled <= upper + atol).all(), "a sampled point exceeds the bound"
    assert (attacked <= upper + atol).all(), "PGD exceeds the bound"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A folder with two tiny one-hidden-layer networks saved with cards."""
    folder = tmp_path / "models"
    for name, seed in (("tiny-a", 1), ("tiny-b", 2)):
        net = random_mlp([784, 20, 10], seed, scale=0.5)
        save(net, Card(name=name, widths=net.widths, objective="random", seed=seed), folder)
    return folder


def grid_methods(verifiers=("spectral", "frobenius"), attacks=("fgsm", "pgd")):
    """Built-in plugins by name, PGD shortened so tests stay fast."""
    from bench.registry import select
    from bench.runner import Method
    options = {"pgd": {"steps": 5, "restarts": 2}}
    infos = select("verifier", list(verifiers)) + select("attack", list(attacks))
    return [Method(info, info.create(options.get(info.name))) for info in infos]


def fake_method(plugin, kind: str = "verifier"):
    """Wrap a plugin object that is not installed as an entry point."""
    from bench.registry import PluginInfo
    from bench.runner import Method
    return Method(PluginInfo(plugin.name, kind, None, "tests", "0"), plugin)  # type: ignore[arg-type]


def run_grid(out, model_dir, methods=None, n=30, eps=(0.05, 0.1), batch_size=8, seed=0,
             time_limit=None, models=("tiny-a", "tiny-b")):
    """Run the harness in-process on the tiny models and return its result."""
    from bench.runner import Runner, RunSpec
    spec = RunSpec(models=list(models), methods=methods or grid_methods(), eps=list(eps), n=n,
                   out=out, batch_size=batch_size, model_dir=model_dir, progress=False,
                   seed=seed, time_limit=time_limit)
    return Runner(spec, echo=lambda line: None).run()


def csv_without_timings(folder):
    """``(leaderboard, gaps)`` as read back from disk, timing column dropped."""
    import pandas as pd
    board = pd.read_csv(folder / "leaderboard.csv").drop(columns=["seconds_per_sample"])
    return board, pd.read_csv(folder / "gaps.csv")


PLUGIN_SOURCE = Path(__file__).with_name("plugin_package")


def invoke(argv: list[str]) -> tuple[int, str, str]:
    """``python -m bench ARGV`` in this process: ``(exit code, stdout, stderr)``."""
    import contextlib
    import io

    from bench.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def run_cli(*args: str, env_path: Path | None = None):
    """``python -m bench ARGS`` in a subprocess, ``env_path`` prepended to PYTHONPATH."""
    import os
    import subprocess
    import sys
    env = dict(os.environ)
    if env_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(env_path), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True,
                          text=True, env=env)


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """The example plugin package installed into a private folder (not the environment)."""
    import shutil
    import subprocess
    import sys
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    shutil.copytree(PLUGIN_SOURCE, source)
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--disable-pip-version-check", "--target",
                    str(target), str(source)], check=True, capture_output=True)
    return target
