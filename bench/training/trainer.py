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
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from bench import data
from bench.contract import margins
from bench.errors import CertbenchError
from bench.training.hooks import check_objective, objective_hook
from bench.training.objectives import OBJECTIVES
from models import MLP, Card, save
from models.store import SHIPPED_DIR

VALIDATION_SIZE = 10_000
QUICK_HIDDEN = 64
QUICK_IMAGES = 2000
LAM_SDP = 0.0005


@dataclass(frozen=True)
class Recipe:
    """How one network is trained."""

    name: str
    objective: str
    widths: tuple[int, ...] = (784, 500, 10)
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    decay_every: int | None = None      # epochs between tenfold learning-rate decays
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def hyperparameters(self) -> dict[str, Any]:
        decay = {"decay_every": self.decay_every} if self.decay_every else {}
        return {"optimizer": "adam", "epochs": self.epochs, "batch_size": self.batch_size,
                "learning_rate": self.learning_rate, **decay,
                "validation_size": VALIDATION_SIZE, **self.extra}


RECIPES: dict[str, Recipe] = {
    "nt-nn": Recipe("nt-nn", "cross-entropy"),
    "fro-nn": Recipe("fro-nn", "hinge+frobenius", extra={"lam": 0.08}),
    "spe-nn": Recipe("spe-nn", "hinge+spectral", extra={"lam": 0.09}),
    # 40 epochs with a tenfold decay after 20: validation PGD error 16.0% against 16.8%
    # for 20 epochs at a constant rate (first 5,000 validation images)
    "at-nn": Recipe("at-nn", "adversarial", epochs=40, decay_every=20,
                    extra={"lam": 0.5, "eps": 0.3, "step": 0.1, "steps": 40}),
    "lp-nn": Recipe("lp-nn", "lp-robust", epochs=20, batch_size=50, extra={"eps": 0.1}),
    # lam tuned on the validation split (0.05 collapses the network in our normalisation:
    # mean hinge over the batch and classes, nine pairs per step); the primal regulariser
    # follows the SDP's exact gradient (see HingeSDP; "dual" is eq. 15 as printed)
    "sdp-nn": Recipe("sdp-nn", "hinge+sdp", epochs=60, decay_every=30,
                     extra={"lam": LAM_SDP, "eps": 0.1, "refresh_every": 20,
                            "regulariser": "primal"}),
}
# Deeper fully connected networks, the shape of VNN-COMP's mnistfc benchmark (2, 4 and 6
# hidden layers of 256 units): trained here for the complete verifiers' benchmarks, not
# shipped; normally (cross-entropy) and adversarially (PGD at eps 0.05 on half the loss).
for _depth in (2, 4, 6):
    _widths = (784, *([256] * _depth), 10)
    RECIPES[f"fc-{_depth}x256"] = Recipe(f"fc-{_depth}x256", "cross-entropy", widths=_widths,
                                         epochs=10, batch_size=128)
    RECIPES[f"fc-{_depth}x256-at"] = Recipe(
        f"fc-{_depth}x256-at", "adversarial", widths=_widths, epochs=6, batch_size=128,
        extra={"lam": 0.5, "eps": 0.05, "step": 0.0125, "steps": 8})
# A foreign network for the multi-layer SDP (the NeurIPS 2018 setting): two hidden layers,
# PGD adversarial training at eps 0.1 (40 steps of 0.01, Madry et al.'s schedule scaled to
# the radius), trained for no certificate; not shipped, trained on first use.
RECIPES["pgd-2x200"] = Recipe("pgd-2x200", "adversarial", widths=(784, 200, 200, 10),
                              epochs=20, batch_size=128, decay_every=15,
                              extra={"lam": 1.0, "eps": 0.1, "step": 0.01, "steps": 40})


class TrainingError(CertbenchError, RuntimeError):
    """Unknown recipe or unusable training data (one-line message)."""


def error_rate(net: MLP, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> float:
    """Fraction of ``x (N, d)`` misclassified (ties count as errors)."""
    wrong = 0
    with torch.no_grad():
        for start in range(0, len(y), batch):
            worst = margins(net(x[start:start + batch]), y[start:start + batch]).amax(dim=1)
            wrong += int((worst >= 0).sum())
    return wrong / len(y)


def train(name: str, *, out_dir: Path, quick: bool = False, data_dir: str | Path | None = None,
          log: Callable[[str], None] | None = None, recipe: Recipe | None = None) -> Card:
    """Train network ``name``, save weights and card in ``out_dir``; return the card.

    ``out_dir`` may not be the shipped networks' folder: what ships is never overwritten.

    ``quick`` trains a 784-64-10 version on 2,000 images for one epoch (attacks capped
    at 10 steps): seconds, for tests and smoke runs.
    ``recipe`` overrides the named recipe (tests train variants, e.g. without regulariser).
    """
    log = log or (lambda line: print(line, file=sys.stderr))
    if recipe is None and name not in RECIPES:
        raise TrainingError(f"unknown network {name!r}; trainable: {', '.join(sorted(RECIPES))}")
    recipe = recipe or RECIPES[name]
    if Path(out_dir).resolve() == SHIPPED_DIR:
        raise TrainingError(f"{out_dir} holds the shipped networks, which training never "
                            "overwrites; choose another --out-dir")
    if quick:   # a small version: 64 hidden units, one epoch, at most 10 attack steps
        extra = {**recipe.extra, **({"steps": min(10, recipe.extra["steps"])}
                                    if "steps" in recipe.extra else {})}
        recipe = replace(recipe, widths=(recipe.widths[0], QUICK_HIDDEN, recipe.widths[-1]),
                         epochs=1, extra=extra)
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
        x_train, y_train = x_train[:QUICK_IMAGES], y_train[:QUICK_IMAGES]

    torch.manual_seed(recipe.seed)
    net = MLP(recipe.widths)
    began = time.perf_counter()
    factory = OBJECTIVES[recipe.objective]
    objective = (factory(net, **recipe.extra, seed=recipe.seed) if isinstance(factory, type)
                 else partial(factory, **recipe.extra))
    check_objective(objective, f"objective {recipe.objective!r}")
    parameters = objective_hook(objective, "parameters")
    begin_epoch = objective_hook(objective, "begin_epoch")
    validate, finish = objective_hook(objective, "validate"), objective_hook(objective, "finish")
    extra_parameters = parameters() if parameters is not None else []
    optimizer = torch.optim.Adam([*net.parameters(), *extra_parameters],
                                 lr=recipe.learning_rate)
    schedule = (torch.optim.lr_scheduler.StepLR(optimizer, recipe.decay_every, gamma=0.1)
                if recipe.decay_every else None)
    generator = torch.Generator().manual_seed(recipe.seed)
    checks: dict[str, float] = {}     # the objective's own validation figures, last check
    for epoch in range(epochs):
        if begin_epoch is not None:
            note = begin_epoch(epoch, x_train, y_train)
            if note:
                log(f"{name} epoch {epoch + 1}: {note}")
        net.train()
        order = torch.randperm(len(y_train), generator=generator)
        total = 0.0
        for start in range(0, len(order), recipe.batch_size):
            idx = order[start:start + recipe.batch_size]
            loss, _ = objective(net, x_train[idx], y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        if schedule is not None:
            schedule.step()
        net.eval()
        due = (epoch + 1) % 10 == 0 or epoch + 1 == epochs
        if due and validate is not None:
            checks = validate(net, x_val, y_val)
        line = ", ".join(f"{k} {v:.4f}" for k, v in checks.items()) if due else ""
        log(f"{name} epoch {epoch + 1}/{epochs} ({time.perf_counter() - began:.0f} s): "
            f"loss {total / len(y_train):.4f}, validation error "
            f"{error_rate(net, x_val, y_val):.4f}" + (f"; {line}" if line else ""))
    if finish is not None:
        finish(net)
    seconds = time.perf_counter() - began

    test_images, test_labels = data.mnist_test()
    test_error = error_rate(net, data.to_tensor(test_images), torch.from_numpy(test_labels))
    card = Card(name=name, widths=list(recipe.widths), objective=recipe.objective,
                hyperparameters={**recipe.hyperparameters(), "epochs": epochs,
                                 "quick": quick, "train_size": len(y_train)},
                seed=recipe.seed, clean_test_error=test_error,
                training_seconds=round(seconds, 1),
                extra={"validation_error": error_rate(net, x_val, y_val),
                       **{f"validation_{k}": v for k, v in checks.items()},
                       "torch_version": torch.__version__})
    save(net, card, out_dir)
    log(f"{name}: clean test error {test_error:.4f} after {seconds:.0f} s")
    return card
