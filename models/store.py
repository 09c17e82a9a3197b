"""Load and save networks: weights as safetensors (no code runs on load) plus a JSON card.

A card (``NAME.json`` beside ``NAME.safetensors``) records: ``name``,
``architecture`` (``{"type": "mlp", "widths": [...]}``), ``objective``,
``hyperparameters``, ``seed``, ``clean_test_error`` (fraction in [0, 1]),
``training_seconds``, ``weights_sha256`` and free-form ``notes``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from models.card import CERTIFICATE_PREFIX, Card, ModelError
from models.files import atomic_write
from models.graph import GraphNet
from models.mlp import MLP

SHIPPED_DIR = Path(__file__).resolve().parent
def shipped_names(folder: Path = SHIPPED_DIR) -> list[str]:
    """Names of the networks with a card and weights in ``folder``, sorted."""
    return sorted(p.stem for p in folder.glob("*.json")
                  if p.with_suffix(".safetensors").exists())


def save(net: MLP, card: Card, folder: Path) -> Path:
    """Write ``NAME.safetensors`` and ``NAME.json`` (the card gets the weights' SHA-256)."""
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in net.state_dict().items()}
    tensors.update({CERTIFICATE_PREFIX + k: v.detach().to(torch.float64).contiguous()
                    for k, v in net.certificates.items()})
    payload = save_safetensors_bytes(tensors, metadata={"name": card.name})
    card.widths = list(net.widths)
    card.weights_sha256 = hashlib.sha256(payload).hexdigest()
    weights = folder / f"{card.name}.safetensors"
    atomic_write(weights, lambda handle: handle.write(payload))
    text = (json.dumps(card.to_json(), indent=2) + "\n").encode()
    atomic_write(folder / f"{card.name}.json", lambda handle: handle.write(text))
    return weights


def load_card(name: str, folder: Path = SHIPPED_DIR) -> Card:
    path = folder / f"{name}.json"
    if not path.exists():
        available = ", ".join(shipped_names(folder)) or "none"
        raise ModelError(f"unknown model {name!r}; available: {available}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: card is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: card is not a JSON object")
    return Card.from_json(raw, str(path))


def load(name: str, folder: Path = SHIPPED_DIR) -> tuple[MLP, Card]:
    """Load network ``name`` from ``folder``, checking SHA-256, shapes and finiteness.

    A ``name`` ending in ``.onnx`` is a path to an ONNX network instead
    (:mod:`models.onnx_import`), whatever ``folder`` is.
    """
    if str(name).lower().endswith(".onnx"):
        from models.onnx_network import load_onnx

        return load_onnx(Path(name))
    card = load_card(name, folder)
    path = folder / f"{name}.safetensors"
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read weights ({exc.strerror})") from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != card.weights_sha256:
        raise ModelError(f"{path}: SHA-256 {digest[:16]}... does not match its card "
                         f"({card.weights_sha256[:16]}...)")
    try:
        tensors = load_safetensors_bytes(payload)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # SafetensorError, or a Rust panic (a BaseException)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{path}: not a valid safetensors file ({reason})") from None
    expected = {}      # from the card alone: nothing is allocated before the shapes agree
    for i, (fan_in, fan_out) in enumerate(zip(card.widths[:-1], card.widths[1:])):
        expected[f"linears.{i}.weight"] = (fan_out, fan_in)
        expected[f"linears.{i}.bias"] = (fan_out,)
    found = {k: tuple(v.shape) for k, v in tensors.items()
             if not k.startswith(CERTIFICATE_PREFIX)}
    if expected != found:
        raise ModelError(f"{path}: tensors {found} do not match the card's widths "
                         f"{card.widths}")
    for key, value in tensors.items():
        if not value.is_floating_point():
            raise ModelError(f"{path}: tensor {key} is {value.dtype}, not floating point")
        if not torch.isfinite(value).all():
            raise ModelError(f"{path}: tensor {key} has NaN or infinite entries")
    net = MLP(card.widths)
    net.load_state_dict({k: tensors[k].to(torch.float32) for k in expected})
    net.certificates = {k[len(CERTIFICATE_PREFIX):]: v for k, v in tensors.items()
                        if k.startswith(CERTIFICATE_PREFIX)}
    net.eval()
    return net, card


def weights_summary(net: MLP | GraphNet) -> str:
    """Short stable hash of the weights' and certificates' values (for caching per weights)."""
    h = hashlib.sha256()
    if isinstance(net, GraphNet):              # its operators too, not only the tensors
        h.update(repr([(n.op, n.inputs, n.shape, sorted(n.attrs.items()))
                       for n in net.nodes]).encode())
    for key, value in [*net.state_dict().items(), *sorted(net.certificates.items())]:
        h.update(key.encode())
        h.update(value.detach().to(torch.float64).cpu().numpy().tobytes())
    return h.hexdigest()[:16]
