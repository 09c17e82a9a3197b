"""Shared fixtures: tiny seeded networks and data, and a folder of tiny 'shipped' models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import MLP, Card, save


def random_mlp(widths: list[int], seed: int, scale: float = 1.0) -> MLP:
    """A seeded MLP with weights scaled by ``scale`` (float32, eval mode)."""
    torch.manual_seed(seed)
    net = MLP(widths)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return net.eval()


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


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A folder with two tiny one-hidden-layer networks saved with cards."""
    folder = tmp_path / "models"
    for name, seed in (("tiny-a", 1), ("tiny-b", 2)):
        net = random_mlp([784, 20, 10], seed, scale=0.5)
        save(net, Card(name=name, widths=net.widths, objective="random", seed=seed), folder)
    return folder
