"""An ONNX file as the network the plugins get: a ReLU MLP where the graph folds into
one (:mod:`models.onnx_import`: every method runs on it, as fast as on the shipped
networks), else a graph of operators (:mod:`models.onnx_graph`: the methods with
``graphs = True``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from models.card import Card, ModelError
from models.graph import GraphNet
from models.mlp import MLP
from models.onnx_graph import import_onnx_graph
from models.onnx_import import OnnxImportError, import_onnx


def load_onnx(path: Path, *, graph: bool = False) -> tuple[MLP | GraphNet, Card]:
    """An ONNX network and a card for it (name: the file's stem; SHA-256: the file's).
    Folded into an MLP when it can be (``graph=True``: always a :class:`GraphNet`); the
    card's ``extra["folded"]`` says which, and why a graph was kept."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such ONNX file")
    net: MLP | GraphNet
    if graph:
        net, facts = import_onnx_graph(path)
        facts["folded"] = "no: a graph was asked for"
    else:
        try:
            net, facts = import_onnx(path)
            facts["folded"] = "yes"
        except OnnxImportError as refusal:
            try:
                net, facts = import_onnx_graph(path)
            except OnnxImportError as graph_refusal:
                raise graph_refusal from None
            facts["folded"] = f"no: {refusal}"
    card = Card(name=path.stem, widths=list(net.widths), objective="onnx",
                weights_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                extra={"source": str(path), **facts})
    return net, card
