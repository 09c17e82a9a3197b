"""The hooks of a training objective, declared apart from the plugin contract's.

An objective is built per batch by a recipe (:mod:`bench.training.objectives`); the
trainer calls only the hooks below, looked up through :func:`objective_hook`.
"""

from __future__ import annotations

from typing import Any

from bench.contract import Hook, check_hooks, hook

OBJECTIVE_HOOKS: dict[str, Hook] = {
    "parameters": Hook("objective", "parameters() -> list[Tensor]  (trained with the net)", 0),
    "begin_epoch": Hook("objective", "begin_epoch(epoch, x, y) -> str  (a log note or '')",
                        3),
    "validate": Hook("objective", "validate(net, x, y) -> dict[str, float]  (figures for the "
                     "card)", 3),
    "finish": Hook("objective", "finish(net) -> None  (e.g. store certificates)", 1),
}


def objective_hook(objective: object, name: str) -> Any:
    """The declared objective hook ``name`` of ``objective``, or ``None``."""
    return hook(objective, name, OBJECTIVE_HOOKS)


def check_objective(objective: object, label: str) -> None:
    """Raise :class:`bench.contract.ContractError` (one line) unless ``objective``'s
    hooks are well formed."""
    check_hooks(objective, "objective", label, OBJECTIVE_HOOKS)
