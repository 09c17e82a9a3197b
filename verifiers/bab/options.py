"""The options of branch and bound, each written once: type, default, check, one line of
doc (the measurements behind a default are in ``docs/complete-verification.md``).

:class:`SearchOptions` configures one search (:func:`verifiers.bab.search.decide`);
:class:`BabOptions` adds what the ``bab`` and ``bab-cex`` plugins need around it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.contract import (
    BOOLEAN,
    FRACTION,
    POSITIVE,
    Choice,
    Device,
    Integer,
    Options,
    option,
)
from verifiers.bab.bounding import BRANCH_ITERATIONS
from verifiers.bab.input_split import INPUT_SPLIT_MAX_INPUTS

# Units per subdomain judged by strong branching; 1: the intercept score alone. Measured
# (CPU seconds at equal limits): on one and two hidden layers the score alone settled
# every instance that 4 candidates settled, with fewer nodes and 1.1x to 2.2x sooner; on
# four and six hidden layers neither won clearly.
BRANCH_CANDIDATES = 1
# Memory for the open subdomains of a group (the cap on their number follows from it):
# 155,000 on 784-256x6-10, where at most 1,000 are split per second on two cores.
MEMORY_GB = 2.0
# On networks of at least REFINE_DEPTH hidden layers, a child's pre-activation bounds are
# re-derived after its split with the root's intermediate slopes
# (:func:`verifiers.bab.layer_bounds.refined_layer_bounds`) instead of kept as its
# parent's clamped to the split. Measured: on 784-256x4-10 and 784-256x6-10 this settled
# more groups of every hard instance tried; on 784-256x2-10 it took 5.8x longer (one
# layer to re-derive, at 784 inputs, costs more than the nodes it saves).
REFINE_DEPTH = 4
# Before branching, when some group is open at the root, the root bounds of hidden layers
# 1 .. TIGHTEN_LAYERS are tightened by small searches on sub-networks
# (:mod:`verifiers.bab.root_tightening`), within TIGHTEN_SHARE of the time limit.
TIGHTEN_LAYERS = 2
TIGHTEN_SHARE = 0.25


@dataclass(frozen=True)
class SearchOptions(Options):
    """One branch-and-bound search (:func:`verifiers.bab.search.decide`)."""

    time_limit: float = option(60.0, POSITIVE, "seconds per property (per sample in bab); "
                               "then the answer is unknown")
    batch: int = option(256, Integer(1), "subdomains split at once (fewer when the time "
                        "left would not fit a whole batch)")
    iterations: int = option(20, Integer(0), "alpha-CROWN steps for the root's bounds")
    branch_iterations: int = option(BRANCH_ITERATIONS, Integer(0), "beta-CROWN steps per "
                                    "batch of children, warm-started from their parents")
    branch_candidates: int = option(BRANCH_CANDIDATES, Integer(1), "units judged per "
                                    "subdomain by strong branching (1: the score alone)")
    memory_gb: float = option(MEMORY_GB, POSITIVE, "memory for one group's open "
                              "subdomains; more open ones: unknown")
    refine_depth: int = option(REFINE_DEPTH, Integer(0), "hidden layers from which a "
                               "child's intermediate bounds are re-derived after a split")
    tighten_layers: int = option(TIGHTEN_LAYERS, Integer(0), "hidden layers whose root "
                                 "bounds are tightened by sub-network searches (0: none)")
    tighten_share: float = option(TIGHTEN_SHARE, FRACTION, "share of time_limit that root "
                                  "tightening may take")
    device: str = option("cpu", Device(), "torch device of bounds and subdomains: cpu, or "
                         "cuda[:N] where torch sees one")
    branching: str = option("auto", Choice(("auto", "relu", "input")), "split ReLUs, or "
                            "the input box; auto: the input box on networks of at most "
                            f"{INPUT_SPLIT_MAX_INPUTS} inputs")


@dataclass(frozen=True)
class BabOptions(SearchOptions):
    """The ``bab`` and ``bab-cex`` plugins: a search per sample of the l-inf ball."""

    clip: bool = option(True, BOOLEAN, "intersect the ball with the box [0, 1]^d")

    def search(self) -> SearchOptions:
        """The options of each sample's search (all but ``clip``)."""
        return SearchOptions(**{name: value for name, value in self.as_dict().items()
                                if name != "clip"})
