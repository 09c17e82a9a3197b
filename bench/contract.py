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

Every hook the harness calls, required or optional, is declared in :data:`HOOKS` (with
its signature) and looked up only through :func:`hook`; :func:`check_hooks` validates
a plugin when it is built and a training objective when training starts.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from bench.errors import CertbenchError


@runtime_checkable
class Network(Protocol):
    """What a plugin may rely on in ``net``: a ReLU network of dense affine layers.

    ``f(x) = L_k relu(... relu(L_1 x))`` with ``linears[i]`` an affine layer (``weight
    (m_i, m_{i-1})``, ``bias (m_i,)``); ``widths = [d, m_1, ..., K]``; ``net(x (N, d))``
    gives logits ``(N, K)`` (an image-shaped input is flattened row-major). Every
    network that folds into this form reaches the plugins in it: the shipped ones
    (:class:`models.MLP`) and every sequential ONNX import, whose convolutions,
    normalisations and reshapes are folded into dense layers (``models/onnx_import.py``:
    a convolution costs ``out_size x in_size`` entries). The rest (residual additions,
    pooling, padding, sigmoid and tanh, convolutions too large to fold) arrive as a
    graph of operators (:class:`models.graph.GraphNet`: the same ``input_dim``,
    ``num_classes``, ``float64_copy`` and call, no ``linears``), which only plugins
    with ``graphs = True`` see. A plugin that handles less (SDP and the norm bounds:
    one hidden layer) says so with ``supports(net)``, and the cell reads ``n/a``.
    """

    widths: list[int]
    linears: Any                       # sequence of torch.nn.Linear, input side first
    certificates: dict[str, torch.Tensor]

    @property
    def input_dim(self) -> int: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def hidden_layers(self) -> int: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def float64_copy(self) -> "Network": ...


@runtime_checkable
class Verifier(Protocol):
    """Certifies: ``bound(net, x (N, d), y (N,), eps) -> U (N, K)``, an upper bound."""

    name: str

    def bound(self, net: Network, x: torch.Tensor, y: torch.Tensor, eps: float
              ) -> torch.Tensor:
        ...


@runtime_checkable
class Attack(Protocol):
    """Attacks: ``perturb(net, x (N, d), y (N,), eps) -> x_adv (N, d)``."""

    name: str

    def perturb(self, net: Network, x: torch.Tensor, y: torch.Tensor, eps: float
                ) -> torch.Tensor:
        ...


class ContractError(CertbenchError, TypeError):
    """A plugin or objective breaks the contract (one line naming it and the hook)."""


@dataclass(frozen=True)
class Hook:
    """One hook the harness may call: who has it, its signature, whether it is optional."""

    owner: str              # "verifier", "attack", "plugin" (both) or "objective"
    signature: str          # as documented
    arguments: int          # positional arguments after self (-1: an attribute, not a call)
    required: bool = False


HOOKS: dict[str, Hook] = {
    # plugins (verifiers and attacks)
    "name": Hook("plugin", "name: str  (class attribute; the entry-point name)", -1, True),
    "bound": Hook("verifier", "bound(net, x (N, d), y (N,), eps) -> U (N, K) float64", 4,
                  True),
    "perturb": Hook("attack", "perturb(net, x (N, d), y (N,), eps) -> x_adv (N, d)", 4, True),
    "supports": Hook("plugin", "supports(net) -> bool  (False: recorded as n/a)", 1),
    "bound_property": Hook("verifier", "bound_property(net, prop: Property) -> list of "
                           "(r_g,) float64 upper bounds on c_i . f(x) - d_i over the box, "
                           "one tensor per group (general VNNLIB specifications)", 2),
    "statistics": Hook("plugin", "statistics() -> list[dict]  (per-solve rows for "
                       "solver_stats.csv; a row with 'row' is per sample of the last batch)", 0),
    "cache_in": Hook("plugin", "cache_in(folder: Path) -> None  (where it may persist "
                     "precomputation, e.g. SDP pair solves, so a resumed run reuses it; "
                     "the harness passes OUT/cache/NAME)", 1),
    "shared_work": Hook("plugin", "shared_work(net, x (N, d) float64, y (N,), eps, workers) "
                        "-> dict[str, Callable[[net], Any]]  (pieces of a batch's work that "
                        "other batches or plugins may share, e.g. SDP pair solves, by a key "
                        "naming all they depend on beside the network; each key is computed "
                        "once per network, perhaps on another worker; picklable; workers "
                        "(1 in process) hints how finely to split work whose result does "
                        "not depend on the split)", 5),
    "use_shared": Hook("plugin", "use_shared(net, results: dict[str, Any]) -> None  (before "
                       "bound or perturb: the results of the batch's shared_work pieces)", 2),
    "opt_in": Hook("plugin", "opt_in: bool  (class attribute; True keeps it out of the "
                   "default grid)", -1),
    "exact": Hook("plugin", "exact: bool  (True: its verdicts are exact; the gap table "
                  "splits the gap on the samples it decided)", -1),
    "graphs": Hook("plugin", "graphs: bool  (class attribute; True: it also handles "
                   "operator-graph networks, models.graph.GraphNet; without it they read "
                   "n/a)", -1),
}


def hook(obj: object, name: str, table: dict[str, Hook] = HOOKS) -> Any:
    """The declared hook ``name`` of ``obj`` (a bound method or attribute), or ``None``.

    The only place the harness looks a hook up by name: ``name`` must be in ``table``
    (:data:`HOOKS` for plugins; training objectives have their own table,
    :data:`bench.training.hooks.OBJECTIVE_HOOKS`).
    """
    if name not in table:
        raise KeyError(f"{name!r} is not a hook of the contract")
    return getattr(obj, name, None)


def _accepts(function: Any, count: int) -> bool:
    """Whether ``function`` can be called with ``count`` positional arguments."""
    try:
        inspect.signature(function).bind(*range(count))
    except TypeError:
        return False
    except ValueError:       # no signature available (a builtin): give it the benefit
        return True
    return True


def check_hooks(obj: object, owner: str, label: str, table: dict[str, Hook] = HOOKS) -> None:
    """Raise :class:`ContractError` (one line: ``label`` and the hook) unless ``obj`` has
    every required hook of ``owner`` in ``table`` and each optional one it has is well
    formed."""
    for name, spec in table.items():
        if spec.owner not in (owner, "plugin" if owner in ("verifier", "attack") else owner):
            continue
        value = hook(obj, name, table)
        if value is None:
            if spec.required:
                raise ContractError(f"{label} has no {name!r}: expected {spec.signature}")
            continue
        if spec.arguments < 0:
            expected = str if name == "name" else bool
            if not isinstance(value, expected):
                raise ContractError(f"{label}: {name!r} must be a {expected.__name__}, "
                                    f"got {type(value).__name__}")
        elif not callable(value) or not _accepts(value, spec.arguments):
            raise ContractError(f"{label}: {name!r} must be {spec.signature}")


def refuted(uppers: list[torch.Tensor]) -> bool:
    """Whether upper bounds from ``bound_property`` prove the property: every group has a
    row whose bound is ``< 0`` (that row, hence the group's conjunction, is unreachable)."""
    return all(bool((upper < 0).any()) for upper in uppers)


def supports(plugin: object, net: "Network") -> bool:
    """Whether ``plugin`` can handle ``net``: an operator-graph network
    (:class:`models.graph.GraphNet`) only if the plugin says ``graphs = True``; then its
    ``supports`` (plugins without one accept every network they take)."""
    from models.graph import GraphNet

    if isinstance(net, GraphNet) and not hook(plugin, "graphs"):
        return False
    check = hook(plugin, "supports")
    return bool(check(net)) if callable(check) else True


def is_opt_in(plugin_class: type) -> bool:
    """Opt-in plugins (``opt_in = True``) are left out of the default grid."""
    return bool(hook(plugin_class, "opt_in"))


def is_exact(plugin: object) -> bool:
    """Exact plugins (``exact = True``) decide samples; the gap table splits on them."""
    return bool(hook(plugin, "exact"))


def statistics(plugin: object) -> list[dict[str, Any]]:
    """The plugin's per-solve statistics so far, or ``[]`` if it keeps none."""
    report = hook(plugin, "statistics")
    return list(report()) if callable(report) else []


class Rule(Protocol):
    """A typed check of one option's value: ``check(name, value)`` raises ``ValueError``
    (one line naming the option and the value) unless the value is allowed."""

    def check(self, name: str, value: Any) -> None: ...


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Integer:
    """An ``int`` (not a ``bool``) of at least ``minimum``."""

    minimum: int = 0

    def check(self, name: str, value: Any) -> None:
        if not (isinstance(value, int) and not isinstance(value, bool)
                and value >= self.minimum):
            raise ValueError(f"{name} must be an integer >= {self.minimum}, got {value!r}")


@dataclass(frozen=True)
class Number:
    """A finite ``int`` or ``float`` above ``minimum`` (``strict``) or at least it, and
    at most ``maximum`` when one is given."""

    minimum: float = 0.0
    strict: bool = False
    maximum: float | None = None

    def check(self, name: str, value: Any) -> None:
        ok = _is_number(value) and math.isfinite(value) and (
            value > self.minimum if self.strict else value >= self.minimum) and (
            self.maximum is None or value <= self.maximum)
        if not ok:
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")

    def describe(self) -> str:
        if self.maximum is not None:
            return f"a number from {self.minimum:g} to {self.maximum:g}"
        return f"a finite number {'>' if self.strict else '>='} {self.minimum:g}"


@dataclass(frozen=True)
class Boolean:
    """``True`` or ``False`` (not ``0``/``1``)."""

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")


@dataclass(frozen=True)
class Choice:
    """One of ``values``."""

    values: tuple[Any, ...]

    def check(self, name: str, value: Any) -> None:
        if value not in self.values:
            raise ValueError(f"{name} must be one of {', '.join(map(str, self.values))}, "
                             f"got {value!r}")


@dataclass(frozen=True)
class Text:
    """A string (its meaning is checked where it is used, e.g. a solver's name)."""

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")


@dataclass(frozen=True)
class Device:
    """A torch device that torch can compute on here (:func:`torch_device`)."""

    def check(self, name: str, value: Any) -> None:
        torch_device(value)


@dataclass(frozen=True)
class OrNone:
    """``None`` (a default that depends on other options) or a value ``rule`` allows."""

    rule: Rule

    def check(self, name: str, value: Any) -> None:
        if value is not None:
            self.rule.check(name, value)


POSITIVE = Number(0.0, strict=True)
NON_NEGATIVE = Number(0.0)
FRACTION = Number(0.0, maximum=1.0)
BOOLEAN = Boolean()


def check_options(**checks: tuple[Any, Rule]) -> None:
    """Validate keyword options when a plugin is built: ``name=(value, rule)`` with a
    typed :class:`Rule` (:class:`Integer`, :class:`Number`, :class:`Boolean`,
    :class:`Choice`, :class:`Device`).

    Raises ``ValueError`` naming the option (the registry turns it into one line, exit 1).
    """
    for name, (value, rule) in checks.items():
        rule.check(name, value)


def option(default: Any, rule: Rule, doc: str) -> Any:
    """One field of an :class:`Options` dataclass: its default, its check and one line of
    documentation (shown by ``bench list --options``)."""
    return field(default=default, metadata={"rule": rule, "doc": doc})


@dataclass(frozen=True)
class Options:
    r"""Base of a plugin's options: a frozen dataclass whose fields are :func:`option`\ s,
    each written once with its type, default, check and doc; checked when built."""

    def __post_init__(self) -> None:
        for item in fields(self):
            item.metadata["rule"].check(item.name, getattr(self, item.name))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def docs(cls) -> dict[str, str]:
        """``{name: one line of doc}`` per option."""
        return {item.name: item.metadata["doc"] for item in fields(cls)}


def torch_device(name: str) -> torch.device:
    """The torch device ``name`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...) if torch can
    compute on it here; otherwise ``ValueError`` naming it (one line, as for options)."""
    try:
        device = torch.device(name) if isinstance(name, str) else None
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:N], got {name!r}")
    if device.type == "cuda" and not (torch.cuda.is_available()
                                      and (device.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"device {name!r}: torch sees no such CUDA device here "
                         f"({torch.cuda.device_count()} available)")
    return device


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


class OptionsPlugin(Configurable):
    """Base of a plugin whose keyword options are the fields of its ``OPTIONS`` class
    (an :class:`Options` dataclass): the constructor takes exactly those keywords (its
    signature, for ``bench list`` and ``--set``, is theirs), checks them by building
    ``OPTIONS``, keeps the result in ``self._settings`` and each value as a public
    attribute (the configuration that ``repr`` and the records show)."""

    OPTIONS: type[Options] = Options

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        parameters = [inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=item.default, annotation=item.type)
                      for item in fields(cls.OPTIONS)]
        cls.__signature__ = inspect.Signature(parameters)    # type: ignore[attr-defined]

    def __init__(self, **options: Any) -> None:
        self._settings = self.OPTIONS(**options)
        for name, value in self._settings.as_dict().items():
            setattr(self, name, value)


@dataclass(frozen=True)
class Property:
    """A specification in VNNLIB's form: an input box and an *unsafe* output set.

    ``lo, hi (d,)`` float64: the input box. ``groups``: a disjunction of conjunctions;
    group ``g`` is ``(C_g (r_g, K), d_g (r_g,))`` and says ``C_g f(x) >= d_g`` (every
    row). The property is *violated* by ``x`` in the box iff ``f(x)`` satisfies some
    group; it *holds* iff every group is refuted. Sign convention, as for margins: a
    verifier bounds ``max_{x in box} (c_i . f(x) - d_i)`` from above, row by row; a
    group is refuted when some row's bound is ``< 0``. Today's margins are the groups
    ``{f_j - f_y >= 0}`` for ``j != y`` (:meth:`robustness`).
    """

    lo: torch.Tensor
    hi: torch.Tensor
    groups: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @property
    def num_inputs(self) -> int:
        return int(self.lo.shape[0])

    @property
    def num_outputs(self) -> int:
        return int(self.groups[0][0].shape[1]) if self.groups else 0

    @staticmethod
    def robustness(x: torch.Tensor, label: int, eps: float, num_classes: int,
                   clip: bool = True) -> "Property":
        """``B_eps(x) (∩ [0, 1]^d)`` and the groups ``{f_j - f_label >= 0}``, ``j != label``."""
        lo, hi = input_box(x.to(torch.float64).reshape(-1), eps, clip)
        groups = []
        for j in range(num_classes):
            if j != label:
                row = torch.zeros(1, num_classes, dtype=torch.float64)
                row[0, j], row[0, label] = 1.0, -1.0
                groups.append((row, torch.zeros(1, dtype=torch.float64)))
        return Property(lo, hi, tuple(groups))

    def contains(self, points: torch.Tensor) -> torch.Tensor:
        """Per point ``points (N, d)``: inside the box ``[lo, hi]`` exactly?"""
        return ((points >= self.lo) & (points <= self.hi)).all(dim=1)

    def violated_by(self, outputs: torch.Tensor, atol: float = 0.0) -> torch.Tensor:
        """Per point ``outputs (N, K)`` (float64): does it satisfy some unsafe group?"""
        hit = torch.zeros(len(outputs), dtype=torch.bool)
        for matrix, offset in self.groups:
            hit |= ((outputs @ matrix.T) >= offset - atol).all(dim=1)
        return hit


def split_rows(prop: Property) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """All rows of ``prop``'s groups stacked: ``(C (R, K), d (R,), group sizes)``."""
    return (torch.cat([m for m, _ in prop.groups]), torch.cat([d for _, d in prop.groups]),
            [len(d) for _, d in prop.groups])


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``f_j - f_y`` for every class: ``logits (N, K)``, ``y (N,)`` -> ``(N, K)``.

    Column ``y_n`` is ``-inf`` (the true class has no margin against itself).
    """
    out = logits - logits.gather(1, y.view(-1, 1))
    return out.scatter(1, y.view(-1, 1), float("-inf"))


def pair_difference_norms(last_weight: torch.Tensor) -> torch.Tensor:
    """``||V_j - V_i||_2`` for every class pair: ``V (K, m)`` -> ``(K, K)`` symmetric."""
    return torch.cdist(last_weight, last_weight, compute_mode="donot_use_mm_for_euclid_dist")


def input_box(x: torch.Tensor, eps: float, clip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)`` of shape ``(N, d)``: the ball ``B_eps(x)``, ``∩ [0, 1]^d`` if ``clip``."""
    lo, hi = x - eps, x + eps
    return (lo.clamp(0, 1), hi.clamp(0, 1)) if clip else (lo, hi)


def project_box(points: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Clip ``points (N, d)`` into the box ``[lo, hi]`` (the one projection of the suite)."""
    return torch.minimum(torch.maximum(points, lo), hi)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project ``x_adv (N, d)`` into ``B_eps(x) ∩ [0, 1]^d`` (same dtype as ``x_adv``)."""
    return project_box(x_adv, *input_box(x.to(x_adv.dtype), eps))


def signed_ascent(objective: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
                  lo: torch.Tensor, hi: torch.Tensor, *, step: float, steps: int,
                  keep_best: bool = False) -> torch.Tensor:
    """l-inf steepest ascent (the PGD step): ``x <- project_box(x + step sign(grad))``.

    ``objective(points (N, d))`` returns per-sample values ``(N,)`` (or their mean, a
    scalar, when ``keep_best`` is False); ascent is on their sum. Returns the last
    iterate, or with ``keep_best`` the per-sample best point seen (``start`` included).
    """
    point = start.detach()
    best = point.clone()
    best_value = torch.full((len(point),), -torch.inf, dtype=point.dtype)
    for index in range(steps + int(keep_best)):
        point.requires_grad_(True)
        with torch.enable_grad():
            value = objective(point)
            grad, = torch.autograd.grad(value.sum(), point)
        with torch.no_grad():
            if keep_best:
                better = value.detach() > best_value
                best[better], best_value[better] = point[better], value.detach()[better]
                if index == steps:
                    break
            point = project_box(point.detach() + step * grad.sign(), lo, hi)
    return best.detach() if keep_best else point.detach()
