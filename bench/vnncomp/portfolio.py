"""The VNN-COMP portfolio on one instance: attack, cheap verifiers, branch and bound;
every counterexample re-checked in float64 and by onnxruntime (see
:mod:`bench.vnncomp.competition`)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attacks.property_attacks import strongest_attack
from bench.contract import Property, project_box, refuted, supports
from models import MLP
from models.graph import GraphNet
from verifiers.bab.graph_search import decide_graph
from verifiers.bab.options import SearchOptions
from verifiers.bab.search import decide

VERIFIERS = ("ibp", "crown", "lp")
# On operator graphs the search's own root (pruned CROWN, then alpha-CROWN per group)
# subsumes crown and lp, whose intermediate bounds would be computed twice more.
GRAPH_VERIFIERS = ("ibp",)
ATTACK_SHARE = 0.25      # of the timeout, at most, for the first attacks


@dataclass
class Answer:
    result: str                         # sat, unsat, timeout, unknown, error
    prepare_time: float
    run_time: float
    counterexample: tuple[np.ndarray, np.ndarray] | None = None   # (x, f(x))
    message: str = ""
    nodes: int = 0                      # branch-and-bound subdomains bounded (0: none ran)


def confirmed(net64: MLP, prop: Property, point: torch.Tensor,
              onnx_path: Path | None) -> tuple[bool, np.ndarray]:
    """Is ``point`` a counterexample? Inside the box exactly, and unsafe by a float64
    forward pass and (for an ONNX network) by onnxruntime on the file. Returns the
    verdict and the outputs (onnxruntime's when it ran)."""
    point = project_box(point.to(torch.float64), prop.lo, prop.hi)
    with torch.no_grad():
        outputs = net64(point[None])
    if not bool(prop.violated_by(outputs)[0]):
        return False, outputs[0].numpy()
    if onnx_path is None:
        return True, outputs[0].numpy()
    theirs = onnx_forward(onnx_path)(point[None])
    return bool(prop.violated_by(theirs)[0]), theirs[0].numpy()


@functools.lru_cache(maxsize=8)
def ort_session(onnx_path: str):
    """One onnxruntime session per ONNX file (many instances share a network)."""
    import onnxruntime

    return onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])


def onnx_forward(onnx_path: Path):
    """``forward(points (M, d) float64) -> (M, K) float64``: onnxruntime's float32 outputs
    at the points cast to float32, one call per point unless the batch dimension is free
    (a symbolic batch dimension, or another symbolic one, read as 1)."""
    session = ort_session(str(onnx_path))
    feed = session.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in feed.shape] or [1]
    batched = bool(feed.shape) and not (isinstance(feed.shape[0], int) and feed.shape[0] > 0)

    def forward(points: torch.Tensor) -> torch.Tensor:
        values = points.to(torch.float32).numpy()
        if batched:
            outputs = session.run(None, {feed.name: values.reshape([len(values)] + shape[1:])})
            return torch.from_numpy(outputs[0].reshape(len(values), -1).astype(np.float64))
        rows = [session.run(None, {feed.name: value.reshape(shape)})[0].reshape(-1)
                for value in values]
        return torch.from_numpy(np.stack(rows).astype(np.float64))

    return forward


def solve(net: MLP, prop: Property, timeout: float, onnx_path: Path | None,
          verifiers: list | None = None, seed: int = 0, complete: bool = True,
          device: str = "cpu", attack: bool = True) -> Answer:
    """The portfolio on one instance (see the module doc); branch and bound runs on
    ``device``. ``attack=False`` skips the attacks (a caller that ran them already);
    ``complete=False`` stops before branch and bound."""
    began = time.perf_counter()
    elapsed = lambda: time.perf_counter() - began                      # noqa: E731
    net64 = net.float64_copy().requires_grad_(False)

    def sat(point: torch.Tensor, nodes: int = 0, found_by: str = "") -> Answer | None:
        """``sat`` with the re-checked point, or ``None`` if the re-check fails."""
        ok, outputs = confirmed(net64, prop, point, onnx_path)
        if not ok:
            return None
        x = project_box(point.to(torch.float64), prop.lo, prop.hi).numpy()
        return Answer("sat", 0.0, elapsed(), (x, outputs), nodes=nodes, message=found_by)

    if attack:                      # ascent, APGD (margin, DLR), Square: the first that hits
        point, value, name = strongest_attack(net64, prop, seed=seed,
                                              budget=ATTACK_SHARE * timeout)
        answer = sat(point, found_by=f"attack: {name}") if value >= 0 else None
        if answer is not None:
            return answer
    for verifier in verifiers if verifiers is not None else default_verifiers():
        if elapsed() > timeout:
            return Answer("timeout", 0.0, elapsed())
        if not supports(verifier, net) or (isinstance(net, GraphNet)
                                           and verifier.name not in GRAPH_VERIFIERS):
            continue
        if refuted(verifier.bound_property(net, prop)):
            return Answer("unsat", 0.0, elapsed())
    nodes = 0
    if complete and elapsed() < timeout:
        options = SearchOptions(time_limit=timeout - elapsed(), device=device)
        outcome = decide(net, prop, options, seed=seed, restarts=0) if isinstance(net, MLP) \
            else decide_graph(net, prop, options, seed=seed, restarts=0)
        nodes = outcome.nodes
        search = f"bab ({outcome.stats.get('branching', 'relu')} splits)"
        if outcome.verdict == "holds":
            return Answer("unsat", 0.0, elapsed(), nodes=nodes,
                          message=f"{search}: {nodes} subdomains" if nodes else
                          "bab: every group settled at the root")
        if outcome.verdict == "violated":
            answer = sat(outcome.counterexample, nodes, search)
            if answer is not None:
                return answer
    return Answer("timeout" if elapsed() > timeout else "unknown", 0.0, elapsed(), nodes=nodes)


def solve_cases(net: MLP, cases: list[Property], timeout: float, onnx_path: Path | None,
                verifiers: list | None = None, seed: int = 0, device: str = "cpu") -> Answer:
    """The portfolio on an instance whose input set is a union of boxes, one property per
    box (:func:`bench.properties.read_vnnlib_cases`): ``sat`` as soon as one case has
    a re-checked counterexample, ``unsat`` when every case is ``unsat``. First every case
    gets the attack and the cheap verifiers, then the cases left open share the time
    left for branch and bound, in turn."""
    if len(cases) == 1:
        return solve(net, cases[0], timeout, onnx_path, verifiers, seed, device=device)
    began = time.perf_counter()
    elapsed = lambda: time.perf_counter() - began                      # noqa: E731
    chosen = verifiers if verifiers is not None else default_verifiers()
    still_open = []
    for case in cases:
        answer = solve(net, case, timeout - elapsed(), onnx_path, chosen, seed,
                       complete=False, device=device)
        if answer.result == "sat":
            answer.run_time = elapsed()
            return answer
        if answer.result != "unsat":
            still_open.append(case)
    nodes, settled = 0, 0
    for index, case in enumerate(still_open):
        share = (timeout - elapsed()) / (len(still_open) - index)
        if share <= 0:
            break
        answer = solve(net, case, share, onnx_path, [], seed, device=device, attack=False)
        nodes += answer.nodes
        if answer.result == "sat":
            answer.run_time, answer.nodes = elapsed(), nodes
            return answer
        settled += answer.result == "unsat"        # an open case: the others may be sat
    if settled == len(still_open):
        return Answer("unsat", 0.0, elapsed(), nodes=nodes, message=f"{len(cases)} input "
                      f"boxes, {len(still_open)} settled by branch and bound")
    return Answer("timeout" if elapsed() > timeout else "unknown", 0.0, elapsed(), nodes=nodes)


def confirmed_in_some_case(net64: MLP, cases: list[Property], point: torch.Tensor,
                           onnx_path: Path | None) -> bool:
    """Whether ``point`` is a counterexample of some case (:func:`confirmed`)."""
    return any(confirmed(net64, case, point, onnx_path)[0] for case in cases)


def default_verifiers() -> list:
    from bench.registry import select

    return [info.create() for info in select("verifier", list(VERIFIERS))]

