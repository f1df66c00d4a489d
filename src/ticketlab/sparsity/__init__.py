"""Sparsity primitives: which weights can be pruned, how to score them, how many to keep where,
and masks (dict[param_name -> bool tensor], True = kept).

    weights = select_prunable(model, exclude_first=True)
    masks = masks_from_scores(magnitude(weights), density=0.2, budget="erk")
    masks = prune_fraction(magnitude(weights), masks, 0.2)            # one IMP step
    masks = prune_at_init("snip", model, weights, 0.1, batch=(x, y))
"""

from ticketlab.config import REFILL_CRITERIA
from ticketlab.sparsity.budgets import BUDGETS, check_density, er, erdos_renyi, erk, uniform
from ticketlab.sparsity.criteria import (
    CRITERIA,
    compute_scores,
    grasp,
    magnitude,
    prune_at_init,
    random_scores,
    snip,
    synflow,
    synflow_scores,
)
from ticketlab.sparsity.masks import (
    Masks,
    apply_masks,
    check_masks,
    density_report,
    global_masks,
    layerwise_masks,
    load_masks,
    masks_from_scores,
    nm_masks,
    overall_density,
    prune_fraction,
    random_like,
    save_masks,
    shuffle_within_layers,
)
from ticketlab.sparsity.prunable import density, ends, prunable_parameters, select_prunable
from ticketlab.sparsity.regroup import Block, dense_blocks, partition_rows, regroup, regroup_layer
from ticketlab.sparsity.semistructured import semi_structured_support, to_semi_structured
from ticketlab.sparsity.structure import (
    channel_counts,
    channel_scores,
    is_channel_structured,
    kept_channels,
    refill,
    refill_layer,
)

__all__ = [
    "BUDGETS", "Block", "CRITERIA", "REFILL_CRITERIA", "Masks", "apply_masks", "channel_counts", "channel_scores",
    "check_density", "check_masks", "compute_scores", "dense_blocks", "density", "density_report", "ends", "er",
    "erdos_renyi", "erk", "global_masks", "grasp", "is_channel_structured", "kept_channels", "layerwise_masks",
    "load_masks", "magnitude", "masks_from_scores", "nm_masks", "overall_density", "partition_rows",
    "prunable_parameters", "prune_at_init", "prune_fraction",
    "random_like", "random_scores", "refill", "refill_layer", "regroup", "regroup_layer", "save_masks",
    "select_prunable", "semi_structured_support",
    "shuffle_within_layers", "snip", "synflow", "synflow_scores", "to_semi_structured", "uniform",
]
