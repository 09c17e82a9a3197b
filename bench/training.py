"""Train the shipped networks: ``python -m bench train NAME [--quick]``.

Each recipe fixes architecture, objective, optimiser, epochs and seed, so a network
is reproducible from its name. The training images are the 60,000 of
:func:`bench.data.mnist_train`; the last 10,000 (the classic validation split) are
held out for model selection, never the test set. The clean test error goes in the
card, measured once on the shipped test set after training.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from models import MLP, Card, save

from . import data
from .contract import margins

VALIDATION_SIZE = 10_000


@dataclass(frozen=True)
class Recipe:
    """How one network is trained."""

    name: str
    objective: str
    widths: tuple[int, ...] = (784, 500, 10)
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def hyperparameters(self) -> dict[str, Any]:
        return {"optimizer": "adam", "epochs": self.epochs, "batch_size": self.batch_size,
                "learning_rate": self.learning_rate, "validation_size": VALIDATION_SIZE,
                **self.extra}


def cross_entropy(net: MLP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``net`` on ``x (B, d)``, ``y (B,)``."""
    return F.cross_entropy(net(x), y)


OBJECTIVES: dict[str, Callable[[MLP, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross-entropy": cross_entropy,
}

RECIPES: dict[str, Recipe] = {
    "nt-nn": Recipe("nt-nn", "cross-entropy"),
}


class TrainingError(RuntimeError):
    """Unknown recipe or unusable training data (one-line message)."""


def error_rate(net: MLP, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> float:
    """Fraction of ``x (N, d)`` misclassified (ties count as errors)."""
    wrong = 0
    with torch.no_grad():
        for start in range(0, len(y), batch):
            worst = margins(net(x[start:start + batch]), y[start:start + batch]).amax(dim=1)
            wrong += int((worst >= 0).sum())
    return wrong / len(y)


def train(name: str, *, quick: bool = False, data_dir: str | Path | None = None,
          out_dir: Path | None = None, log: Callable[[str], None] | None = None) -> Card:
    """Train network ``name``, save weights and card in ``out_dir``; return the card.

    ``quick`` trains on 2,000 images for one epoch: seconds, for tests and smoke runs.
    """
    log = log or (lambda line: print(line, file=sys.stderr))
    if name not in RECIPES:
        raise TrainingError(f"unknown network {name!r}; trainable: {', '.join(sorted(RECIPES))}")
    recipe = RECIPES[name]
    images, labels = data.mnist_train(data_dir)
    if len(labels) <= VALIDATION_SIZE and not quick:
        raise TrainingError(f"training set has {len(labels)} images; need more than "
                            f"{VALIDATION_SIZE} (the held-out validation split)")
    held_out = min(VALIDATION_SIZE, len(labels) // 5)
    x_all, y_all = data.to_tensor(images), torch.from_numpy(labels)
    x_train, y_train = x_all[:-held_out], y_all[:-held_out]
    x_val, y_val = x_all[-held_out:], y_all[-held_out:]
    epochs = recipe.epochs
    if quick:
        x_train, y_train, epochs = x_train[:2000], y_train[:2000], 1

    torch.manual_seed(recipe.seed)
    net = MLP(recipe.widths)
    objective = OBJECTIVES[recipe.objective]
    optimizer = torch.optim.Adam(net.parameters(), lr=recipe.learning_rate)
    generator = torch.Generator().manual_seed(recipe.seed)
    began = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(y_train), generator=generator)
        total = 0.0
        for start in range(0, len(order), recipe.batch_size):
            idx = order[start:start + recipe.batch_size]
            loss = objective(net, x_train[idx], y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        net.eval()
        log(f"{name} epoch {epoch + 1}/{epochs}: loss {total / len(y_train):.4f}, "
            f"validation error {error_rate(net, x_val, y_val):.4f}")
    seconds = time.perf_counter() - began

    test_images, test_labels = data.mnist_test()
    test_error = error_rate(net, data.to_tensor(test_images), torch.from_numpy(test_labels))
    card = Card(name=name, widths=list(recipe.widths), objective=recipe.objective,
                hyperparameters={**recipe.hyperparameters(), "epochs": epochs,
                                 "quick": quick, "train_size": len(y_train)},
                seed=recipe.seed, clean_test_error=test_error,
                training_seconds=round(seconds, 1),
                extra={"validation_error": error_rate(net, x_val, y_val),
                       "torch_version": torch.__version__})
    save(net, card, out_dir) if out_dir is not None else save(net, card)
    log(f"{name}: clean test error {test_error:.4f} after {seconds:.0f} s")
    return card
