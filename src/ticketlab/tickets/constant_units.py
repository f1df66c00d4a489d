"""Kept filters that are constant at a ticket's starting weights, and why a study drops them.

BatchNorm normalises a channel by its batch standard deviation. A channel that is the same for
every input has none, so BN divides its gradient by sqrt(eps): 1e6 for fastnet's eps of 1e-12.
A kept filter whose output is constant therefore takes an enormous first step, the step
overflows BatchNorm's running variance, and the network evaluates to NaN.

Rewinding makes such filters. fastnet's convolutions start as identities (dirac): filter i reads
only channel i of the layer below. A channel ticket rewound to iteration 0 that keeps filter i
but removes channel i below it starts with filter i constant. (Measured: a fastnet channel
ticket at 69% density, rewound to 0, stays at chance; BENCHMARKS.md.) The filter carries no
signal at the start, so a study drops it from the ticket and records how many it dropped. Only
filters whose channel a BatchNorm normalises count: elsewhere a zero filter trains normally.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ticketlab.compact.channels import channel_groups
from ticketlab.errors import TicketlabError
from ticketlab.sparsity.masks import Masks, apply_masks


@torch.no_grad()
def constant_units(model: nn.Module, masks: Masks, state: dict[str, torch.Tensor],
                   inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Weight name -> bool [out units]: kept filters whose output is the same for all of `inputs`
    when `model` holds `state` under `masks` (eval mode), among those a BatchNorm normalises.
    Empty for a model without a channel plan (which filters feed a BatchNorm is unknown there)."""
    try:
        groups = channel_groups(model)
    except TicketlabError:
        return {}
    normalised = [name for group in groups if group.buffers for name in group.producers if name in masks]
    if not normalised:
        return {}
    probe = copy.deepcopy(model).cpu().eval()
    probe.load_state_dict(state)
    apply_masks(probe, masks)
    modules = dict(probe.named_modules())
    constant: dict[str, torch.Tensor] = {}

    def watch(name: str):
        kept = masks[name].bool().flatten(1).any(1).cpu()

        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            per_unit = out.transpose(0, 1).reshape(out.shape[1], -1)
            same = per_unit.amax(1) == per_unit.amin(1)
            constant[name] = constant.get(name, kept) & same  # a layer called twice: constant both times
        return hook

    handles = [modules[name.rpartition(".")[0]].register_forward_hook(watch(name)) for name in normalised]
    try:
        probe(inputs.cpu())
    finally:
        for handle in handles:
            handle.remove()
    return {name: rows for name, rows in constant.items() if rows.any()}


def drop_constant_units(masks: Masks, constant: dict[str, torch.Tensor]) -> Masks:
    """`masks` with the given filters removed (the same object when there are none)."""
    if not constant:
        return masks
    dropped = dict(masks)
    for name, rows in constant.items():
        dropped[name] = masks[name].clone()
        dropped[name][rows.to(masks[name].device)] = False
    return dropped
