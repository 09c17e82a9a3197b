"""A network's JSON card (``NAME.json`` beside ``NAME.safetensors``) and the one error of
network loading.

A card records: ``name``, ``architecture`` (``{"type": "mlp", "widths": [...]}``),
``objective``, ``hyperparameters``, ``seed``, ``clean_test_error`` (fraction in [0, 1]),
``training_seconds``, ``weights_sha256`` and free-form ``notes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.errors import CertbenchError

CERTIFICATE_PREFIX = "certificates."
MAX_WIDTH = 1_000_000       # a card asking for more is malformed, not a network to allocate


class ModelError(CertbenchError, RuntimeError):
    """A network could not be loaded or failed verification (message is one line)."""


@dataclass
class Card:
    """The JSON card that describes one shipped network."""

    name: str
    widths: list[int]
    objective: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    clean_test_error: float | None = None
    training_seconds: float | None = None
    weights_sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name,
                "architecture": {"type": "mlp", "widths": self.widths},
                "objective": self.objective, "hyperparameters": self.hyperparameters,
                "seed": self.seed, "clean_test_error": self.clean_test_error,
                "training_seconds": self.training_seconds,
                "weights_sha256": self.weights_sha256, **self.extra}

    @classmethod
    def from_json(cls, raw: dict[str, Any], source: str) -> "Card":
        try:
            arch = raw["architecture"]
            if arch.get("type") != "mlp":
                raise ModelError(f"{source}: unsupported architecture {arch.get('type')!r}")
            known = {"name", "architecture", "objective", "hyperparameters", "seed",
                     "clean_test_error", "training_seconds", "weights_sha256"}
            widths = arch["widths"]
            if (not isinstance(widths, list) or len(widths) < 2
                    or not all(type(w) is int and 1 <= w <= MAX_WIDTH for w in widths)):
                raise ModelError(f"{source}: widths must be a list of at least two integers "
                                 f"between 1 and {MAX_WIDTH}, got {widths!r}")
            return cls(name=str(raw["name"]), widths=list(widths),
                       objective=str(raw["objective"]),
                       hyperparameters=dict(raw.get("hyperparameters", {})),
                       seed=int(raw.get("seed", 0)),
                       clean_test_error=raw.get("clean_test_error"),
                       training_seconds=raw.get("training_seconds"),
                       weights_sha256=str(raw["weights_sha256"]),
                       extra={k: v for k, v in raw.items() if k not in known})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"{source}: malformed card ({exc!r})") from None
