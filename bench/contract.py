"""The plugin contract and the sign convention, written down once.

Network ``f: R^d -> R^K``, input ``x`` in ``[0, 1]^d``, label ``y``, threat model the
l-inf ball ``B_eps(x)`` intersected with the box ``[0, 1]^d``. For a wrong class ``j``
the *margin* is ``f_j(x') - f_y(x')``; ``worst(x, j)`` is its maximum over the ball.

- A :class:`Verifier` returns ``U`` of shape ``(N, K)``, float64, with
  ``U[n, j] >= worst(x_n, j)`` (a sound upper bound) and ``U[n, y_n] = -inf``.
  Sample ``n`` is *certified* iff ``max_j U[n, j] < 0``.
- An :class:`Attack` returns points ``x_adv`` of shape ``(N, d)``. The harness
  projects them into the ball and the box and evaluates the margins itself, giving
  ``L[n, j] <= worst(x_n, j)``. Sample ``n`` is *broken* iff ``max_j L[n, j] >= 0``
  (the network does not strictly prefer ``y``; a tie counts as an error).

Plugins import this module and ``models``; never the runner, the CLI or the records.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from models import MLP


@runtime_checkable
class Verifier(Protocol):
    """Certifies: ``bound(net, x (N, d), y (N,), eps) -> U (N, K)``, an upper bound."""

    name: str

    def bound(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        ...


@runtime_checkable
class Attack(Protocol):
    """Attacks: ``perturb(net, x (N, d), y (N,), eps) -> x_adv (N, d)``."""

    name: str

    def perturb(self, net: MLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        ...


def supports(plugin: object, net: MLP) -> bool:
    """Whether ``plugin`` can handle ``net`` (plugins without ``supports`` accept all)."""
    check = getattr(plugin, "supports", None)
    return bool(check(net)) if callable(check) else True


def is_opt_in(plugin_class: type) -> bool:
    """Opt-in plugins (``opt_in = True``) are left out of the default grid."""
    return bool(getattr(plugin_class, "opt_in", False))


class Configurable:
    """Base for plugins: ``repr`` shows the keyword-only configuration.

    Subclasses set their configuration as public attributes in ``__init__``; every
    public instance attribute is part of the configuration the records keep.
    """

    name: str = ""
    opt_in: bool = False

    def config(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.config().items()))
        return f"{type(self).__name__}({args})"


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``f_j - f_y`` for every class: ``logits (N, K)``, ``y (N,)`` -> ``(N, K)``.

    Column ``y_n`` is ``-inf`` (the true class has no margin against itself).
    """
    out = logits - logits.gather(1, y.view(-1, 1))
    return out.scatter(1, y.view(-1, 1), float("-inf"))


def pair_difference_norms(last_weight: torch.Tensor) -> torch.Tensor:
    """``||V_j - V_i||_2`` for every class pair: ``V (K, m)`` -> ``(K, K)`` symmetric."""
    return torch.cdist(last_weight, last_weight, compute_mode="donot_use_mm_for_euclid_dist")


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project ``x_adv (N, d)`` into ``B_eps(x) ∩ [0, 1]^d`` (same dtype as ``x_adv``)."""
    x = x.to(x_adv.dtype)
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
