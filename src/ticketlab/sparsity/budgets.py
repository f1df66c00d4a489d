"""Layer-wise density budgets: how a target overall density is split over the prunable layers.

Every budget maps `shapes` (name -> weight shape) and a target density d in (0, 1] to per-layer
densities whose weighted mean is d (ER: Mocanu et al. 2018; ERK: Evci et al. 2020). "global" has no per-layer densities:
one threshold ranks all weights together (`masks.masks_from_scores`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from ticketlab.errors import TicketlabError
from ticketlab.registry import Registry

Shapes = Mapping[str, Sequence[int]]
Budget = Callable[[Shapes, float], dict[str, float] | None]

BUDGETS: Registry[Budget] = Registry("layer budget")


def check_density(d: float) -> None:
    if not 0.0 < d <= 1.0:
        raise TicketlabError(f"density must be in (0, 1], got {d}; it is the fraction of weights kept")


@BUDGETS.register("global")
def global_budget(shapes: Shapes, d: float) -> None:
    """No per-layer split: the layers' densities follow from one ranking of all weights."""
    check_density(d)


@BUDGETS.register("uniform")
def uniform(shapes: Shapes, d: float) -> dict[str, float]:
    check_density(d)
    return {name: float(d) for name in shapes}


def erdos_renyi(shapes: Shapes, d: float, kernel: bool) -> dict[str, float]:
    """ER (kernel=False) and ERK (kernel=True) densities, as in the RigL paper.

    Layer l gets ε·raw_l with raw_l = Σ dims / Π dims for ERK ((n_out + n_in + k_h + k_w) /
    (n_out·n_in·k_h·k_w) for a conv, (n_out + n_in) / (n_out·n_in) for a Linear) and
    (n_out + n_in) / (n_out·n_in) for ER. ε solves Σ ε·raw_l·N_l = d·Σ N_l; a layer that would
    exceed density 1 is made dense and ε is solved again over the rest. Densifying a layer only
    raises ε, so every layer over 1 can be capped in the same round.
    """
    check_density(d)
    raw: dict[str, float] = {}
    size: dict[str, int] = {}
    for name, shape in shapes.items():
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2 or min(shape) < 1:
            raise TicketlabError(
                f"layer {name} has weight shape {shape}; ER/ERK budgets need [n_out, n_in, ...] weights"
            )
        n_out, n_in = shape[:2]
        raw[name] = sum(shape) / math.prod(shape) if kernel else (n_out + n_in) / (n_out * n_in)
        size[name] = math.prod(shape)

    target = d * sum(size.values())
    dense: set[str] = set()
    while True:
        rest = [n for n in shapes if n not in dense]
        if not rest:  # only reachable at d = 1
            return {n: 1.0 for n in shapes}
        eps = (target - sum(size[n] for n in dense)) / sum(raw[n] * size[n] for n in rest)
        over = {n for n in rest if eps * raw[n] > 1.0}
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense |= over


@BUDGETS.register("er")
def er(shapes: Shapes, d: float) -> dict[str, float]:
    return erdos_renyi(shapes, d, kernel=False)


@BUDGETS.register("erk")
def erk(shapes: Shapes, d: float) -> dict[str, float]:
    return erdos_renyi(shapes, d, kernel=True)
