"""The mask math of dynamic sparse training: move connections, and the schedules of how many.

SET (Mocanu et al. 2018), RigL (Evci et al. 2020) and GraNet (Liu et al. 2021) share one step:
drop the weakest kept weights of a layer and grow as many elsewhere. They differ in where they
grow (at random, or where the dense gradient is largest) and in whether the density also falls
(GraNet prunes gradually, on the cubic schedule of Zhu & Gupta 2017).
"""

from __future__ import annotations

import math

import torch

from ticketlab.errors import TicketlabError


def _lowest(score: torch.Tensor, among: torch.Tensor, k: int) -> torch.Tensor:
    """Flat bool mask of the k lowest scores among `among` (ties go to the lower index)."""
    idx = among.nonzero().squeeze(1)
    order = torch.sort(score[idx], stable=True).indices[:k]
    out = torch.zeros_like(among)
    out[idx[order]] = True
    return out


def drop_and_grow(mask: torch.Tensor, weight: torch.Tensor, grow_score: torch.Tensor,
                  count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(new mask, grown): `mask` with its `count` smallest-|w| kept weights dropped and `count` positions grown
    where `grow_score` is largest among those not kept after the drop. A weight just dropped may be grown
    again, as RigL's code allows: it counts as grown (a new connection, which starts from zero). The number
    kept is unchanged; `count` is capped at the number kept."""
    if mask.shape != weight.shape or grow_score.shape != weight.shape:
        raise TicketlabError(f"mask {tuple(mask.shape)}, weight {tuple(weight.shape)} and growth scores "
                             f"{tuple(grow_score.shape)} must have one shape")
    kept = mask.detach().flatten().bool()
    count = min(int(count), int(kept.sum()))
    if count <= 0:
        return kept.view(mask.shape).clone(), torch.zeros_like(kept).view(mask.shape)
    dropped = _lowest(weight.detach().abs().flatten().float(), kept, count)
    left = kept & ~dropped
    grown = _lowest(-grow_score.detach().flatten().float(), ~left, count)
    return (left | grown).view(mask.shape), grown.view(mask.shape)


def update_fraction(alpha: float, iteration: int, end: int, floor: float = 0.0) -> float:
    """The fraction of a layer's kept weights moved at `iteration`: cosine-annealed from `alpha` to `floor`
    at `end`, and 0 from there on (the topology is then fixed)."""
    if iteration >= end:
        return 0.0
    return floor + (alpha - floor) * 0.5 * (1.0 + math.cos(math.pi * iteration / end))


def cubic_density(initial: float, final: float, iteration: int, end: int) -> float:
    """Gradual magnitude pruning's target density: from `initial` at iteration 0 to `final` at `end`, falling
    fast first and slowly last (s_t = s_f + (s_i - s_f)(1 - t/end)^3 in sparsities)."""
    if iteration >= end:
        return final
    return final + (initial - final) * (1.0 - iteration / end) ** 3
