"""One-shot pruning of a model's weights (trained, or at initialisation) with any criterion.

At initialisation this is pruning-at-init (SNIP, GraSP, SynFlow, random, magnitude);
on a trained checkpoint it is classic one-shot magnitude pruning. Data-dependent
criteria score one seeded batch of normalised training images, never test data. A structure
(refill's whole channels, regroup's dense blocks) can follow, as in a structured study's level.
"""

from __future__ import annotations

import torch
from torch import nn

from ticketlab.data import ImageDataset
from ticketlab.data.augment import normalize
from ticketlab.data.batches import stream_seed
from ticketlab.errors import TicketlabError
from ticketlab.sparsity import check_density, prune_at_init, select_prunable
from ticketlab.tickets.constant_units import constant_units, drop_constant_units
from ticketlab.tickets.structured import Structure

Masks = dict[str, torch.Tensor]


def prune_model(
    model: nn.Module,
    dataset: ImageDataset,
    *,
    criterion: str = "magnitude",
    density: float = 0.2,
    budget: str = "global",
    exclude_first: bool = False,
    exclude_last: bool = False,
    keep_streams: bool = False,
    batch_size: int = 256,
    seed: int = 0,
    structure: str = "none",
    start: dict[str, torch.Tensor] | None = None,
) -> Masks:
    """Masks keeping `density` of the prunable weights of `model` (which is not modified).

    `structure` "channel" refills whole channels (and masks the BatchNorm entries of removed ones,
    so `train_run(compacted=8)` can train the smaller network); "group" keeps dense blocks.
    `start` is the state training will begin from (default: `model`'s own): kept filters whose
    output is constant there are dropped, as a study drops them (`tickets.constant_units`).
    """
    check_density(density)
    if structure not in ("none", "channel", "group"):
        raise TicketlabError(f"unknown --structure {structure!r} for one-shot pruning; choose none, channel or group")
    names = list(select_prunable(model, exclude_first=exclude_first, exclude_last=exclude_last,
                                 keep_streams=keep_streams))
    g = torch.Generator().manual_seed(stream_seed("prune-batch", seed))
    pick = torch.randperm(len(dataset.train_y), generator=g)[:batch_size]
    mean = torch.tensor(dataset.mean, dtype=torch.float32)
    std = torch.tensor(dataset.std, dtype=torch.float32)
    batch = (normalize(dataset.train_x[pick], mean, std), dataset.train_y[pick])
    masks = prune_at_init(criterion, model, names, density, budget, batch=batch, generator=g,
                          input_shape=dataset.image_shape)
    shape = Structure(structure, model, names)
    if shape.active:
        masks = shape.apply(masks)
    start = model.state_dict() if start is None else start
    masks = drop_constant_units(masks, constant_units(model, shape.complete(masks), start, batch[0]))
    return shape.complete(masks)
