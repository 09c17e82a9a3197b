"""Network definitions, loading, and the shipped pretrained networks."""

from models.mlp import MLP
from models.store import Card, ModelError, load, load_card, save, shipped_names, weights_summary

__all__ = ["MLP", "Card", "ModelError", "load", "load_card", "save", "shipped_names",
           "weights_summary"]
