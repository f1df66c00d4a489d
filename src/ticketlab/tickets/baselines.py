"""The sanity-check baselines trained beside a ticket at every level.

Each baseline turns a level's context into an `Arm`: starting weights, masks and the iteration
training starts at. Everything else (schedule, data order, seeds) is the ticket's, so any
difference in accuracy comes from the one thing the baseline changes; `scratch` changes one
more, the length of its schedule, on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ticketlab.data.batches import stream_seed
from ticketlab.registry import Registry
from ticketlab.sparsity import global_masks, layerwise_masks, magnitude, random_like, shuffle_within_layers

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Arm:
    init_state: Tensors
    masks: Tensors
    start: int
    epochs: int | None = None  # its own schedule length (the study's schedule scaled to it); None: the study's
    final_lr: bool = False  # train at the study schedule's last learning rate, constant, instead of the schedule
    # what ranked a mask the arm drew itself (one-shot's magnitudes); None where its positions are random. A
    # structured study gives a drawn mask the ticket's structure (`Structure.like`), which needs to know
    scores: Tensors | None = None


@dataclass
class LevelContext:
    seed: int  # the seed the arm trains with (the study's --seed plus the chain), so draws follow it
    level: int
    scope: str
    masks: Tensors  # the ticket's masks at this level
    rewind_state: Tensors  # the dense run's weights at the rewind point
    rewind_iteration: int
    dense_final: Tensors  # the dense run's trained weights
    previous_final: Tensors  # trained weights the level's masks were computed from
    fresh_init: Callable[[], Tensors]  # a new random initialisation (same seed across levels)
    spent_epochs: int  # epochs IMP trained to reach this level (the dense run, each level's retraining), rounded up

    def generator(self, purpose: str) -> torch.Generator:
        return torch.Generator().manual_seed(stream_seed(purpose, self.seed, self.level))


BASELINES: Registry[Callable[[LevelContext], Arm]] = Registry("baseline")


@BASELINES.register("reinit")
def reinit(ctx: LevelContext) -> Arm:
    """Same mask, fresh random weights, trained from scratch: does the initialisation matter?"""
    return Arm(ctx.fresh_init(), ctx.masks, 0)


@BASELINES.register("random")
def random_pruning(ctx: LevelContext) -> Arm:
    """A random mask with the ticket's per-layer densities: does *which* weights matter?"""
    return Arm(ctx.rewind_state, random_like(ctx.masks, ctx.generator("random-mask")), ctx.rewind_iteration)


@BASELINES.register("shuffle")
def shuffle(ctx: LevelContext) -> Arm:
    """The ticket's mask permuted within each layer: keeps layer-wise budgets, drops positions."""
    return Arm(ctx.rewind_state, shuffle_within_layers(ctx.masks, ctx.generator("shuffle-mask")), ctx.rewind_iteration)


@BASELINES.register("oneshot")
def oneshot(ctx: LevelContext) -> Arm:
    """One magnitude-pruning step from the dense run to the level's density: is iterating needed?"""
    scores = magnitude({n: ctx.dense_final[n] for n in ctx.masks})
    if ctx.scope == "global":
        kept = sum(int(m.sum()) for m in ctx.masks.values())
        total = sum(m.numel() for m in ctx.masks.values())
        masks = global_masks(scores, kept / total)
    else:
        masks = layerwise_masks(scores, {n: float(m.float().mean()) for n, m in ctx.masks.items()})
    return Arm(ctx.rewind_state, masks, ctx.rewind_iteration, scores=scores)


@BASELINES.register("finetune")
def finetune(ctx: LevelContext) -> Arm:
    """Prune and fine-tune: keep the trained weights and train on at the schedule's last learning rate,
    for as many iterations as the ticket retrains (Renda et al. 2020's fine-tuning baseline)."""
    return Arm(ctx.previous_final, ctx.masks, ctx.rewind_iteration, final_lr=True)


@BASELINES.register("lr_rewind")
def lr_rewind(ctx: LevelContext) -> Arm:
    """Keep the trained weights and rewind only the learning rate: the ticket's schedule from the
    rewind point (Renda et al. 2020's learning-rate rewinding)."""
    return Arm(ctx.previous_final, ctx.masks, ctx.rewind_iteration)


@BASELINES.register("scratch")
def scratch(ctx: LevelContext) -> Arm:
    """The ticket's mask from fresh random weights, trained for the epochs IMP spent to reach it (the
    dense run and every level's retraining), its schedule stretched to match. `reinit` asks whether
    the ticket's starting weights matter on the ticket's own schedule; this asks whether the search
    beats training the small network as long, the check Liu et al. (2019, "Rethinking the value of
    network pruning") argue structured pruning needs."""
    return Arm(ctx.fresh_init(), ctx.masks, 0, ctx.spent_epochs)
