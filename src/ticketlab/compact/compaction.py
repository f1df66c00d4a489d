"""Physical compaction: a channel-pruned network becomes a smaller dense one with the same function.

Masking only zeroes weights, so a channel-pruned network costs as much as the dense one. Removing
the dropped channels' rows from their producers, their BatchNorm entries and the matching input
columns of every consumer gives dense layers that really run faster (methods.md section 5).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ticketlab.compact.channels import ChannelGroup, channel_groups, pruned_channels
from ticketlab.errors import TicketlabError
from ticketlab.sparsity.masks import Masks, apply_masks, check_masks


def _kept(group: ChannelGroup, masks: Masks, params: dict[str, nn.Parameter]) -> torch.Tensor:
    """Indices of the channels to keep; the rest are provably silent, so removing them is exact."""
    for name in group.producers:
        if name in masks:
            rows = masks[name].bool().flatten(1)
            partial = int((rows.any(1) & ~rows.all(1)).sum())
            if partial:
                raise TicketlabError(
                    f"mask of {name} is not channel-structured: {partial} of its {rows.shape[0]} output channels are "
                    "partly kept, and compaction removes whole channels only; make structured masks first "
                    "(`--structure channel`, or ticketlab.sparsity.structure.refill)"
                )
    pruned = pruned_channels(group, masks).cpu()
    if pruned.all():  # an empty layer would break the shapes; one kept channel computes the same
        pruned[0] = False
    for name in group.companions:
        live = int((params[name].detach().cpu()[pruned] != 0).sum())
        if live:
            raise TicketlabError(
                f"cannot remove {int(pruned.sum())} dropped channels of {group.producers[0]}: {live} of their "
                f"{name} entries are non-zero, so these channels still output a constant and removing them would "
                "change the model; train with ticketlab.compact.complete_channel_masks(model, masks), which keeps "
                "them at zero"
            )
    return (~pruned).nonzero().squeeze(1)


_RESIZABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def _resized(module: nn.Module, state: dict[str, torch.Tensor], like: torch.Tensor) -> nn.Module:
    """A new module of the same kind and settings, sized for the sliced `state`."""
    factory = {"device": like.device, "dtype": like.dtype}
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise TicketlabError(f"cannot compact a grouped convolution ({module}); channel compaction needs groups=1")
        out_channels, in_channels = state["weight"].shape[:2]
        new = nn.Conv2d(
            in_channels,
            out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            **factory,
        )
    elif isinstance(module, nn.Linear):
        out_features, in_features = state["weight"].shape
        new = nn.Linear(in_features, out_features, bias=module.bias is not None, **factory)
    else:
        new = nn.BatchNorm2d(
            like.shape[0], module.eps, module.momentum, module.affine, module.track_running_stats, **factory
        )
    new.load_state_dict(state)
    for key, p in new.named_parameters():
        p.requires_grad_(getattr(module, key).requires_grad)
    return new.train(module.training)


def _qualified(module: str, key: str) -> str:
    return f"{module}.{key}" if module else key


@torch.no_grad()
def compact(model: nn.Module, masks: Masks) -> nn.Module:
    """A new, smaller `model` without the channels every producer of their group drops.

    Weights are multiplied by `masks` first, so pruned weights inside kept rows stay zero; the
    input is left untouched. A dropped channel must be silent (companions zero: train with
    `complete_channel_masks`), so the result computes what the masked model computes.
    """
    groups = channel_groups(model)
    check_masks(model, masks)
    out = copy.deepcopy(model)
    apply_masks(out, masks)
    params = dict(out.named_parameters())
    rows: dict[str, torch.Tensor] = {}
    columns: dict[str, torch.Tensor] = {}
    for group in groups:
        kept = _kept(group, masks, params)
        rows.update(dict.fromkeys(group.producers + group.companions + group.buffers, kept))
        columns.update(dict.fromkeys(group.consumers, kept))
        for name, block in group.flat_consumers:  # channel c is the block of input columns [c * block, ...)
            columns[name] = (kept.unsqueeze(1) * block + torch.arange(block, device=kept.device)).flatten()
    for name, module in list(out.named_modules()):
        own = [key for key, _ in module.named_parameters(recurse=False)] + [
            key for key, _ in module.named_buffers(recurse=False)
        ]
        touched = [key for key in own if _qualified(name, key) in rows or _qualified(name, key) in columns]
        if not touched:
            continue
        if type(module) not in _RESIZABLE:
            raise TicketlabError(
                f"channel plan of {type(model).__name__} resizes {name}, a {type(module).__name__}; "
                "compaction resizes only Conv2d, Linear and BatchNorm2d modules"
            )
        state = module.state_dict()
        for key in touched:
            if _qualified(name, key) in rows:
                state[key] = state[key].index_select(0, rows[_qualified(name, key)].to(state[key].device))
            if _qualified(name, key) in columns:
                state[key] = state[key].index_select(1, columns[_qualified(name, key)].to(state[key].device))
        try:
            new = _resized(module, state, state[touched[0]])
        except RuntimeError as e:
            raise TicketlabError(
                f"channel plan of {type(model).__name__} resizes only some tensors of {name} ({e}); "
                "a plan must list every per-channel parameter and buffer of a layer it resizes"
            ) from None
        parent, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent), child, new)
    return out


def compaction_report(original: nn.Module, compacted: nn.Module) -> dict:
    """Parameters and per-group channels before and after compaction (JSON-ready)."""
    before, after = channel_groups(original), channel_groups(compacted)
    if [g.producers for g in before] != [g.producers for g in after]:
        raise TicketlabError(
            f"{type(compacted).__name__} is not a compaction of {type(original).__name__}: their channel groups "
            "differ; pass the model given to compact() and the model it returned"
        )
    return {
        "parameters": {
            "before": sum(p.numel() for p in original.parameters()),
            "after": sum(p.numel() for p in compacted.parameters()),
        },
        "groups": [
            {"producers": list(b.producers), "channels": {"before": b.channels, "after": a.channels}}
            for b, a in zip(before, after)
        ],
    }
