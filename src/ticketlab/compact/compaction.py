"""Physical compaction: a channel-pruned network becomes a smaller dense one with the same function.

Masking only zeroes weights, so a channel-pruned network costs as much as the dense one. Removing
the dropped channels' rows from their producers, their BatchNorm entries and the matching input
columns of every consumer gives dense layers that really run faster.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import fx, nn

from ticketlab.compact.channels import (
    ChannelGroup,
    channel_groups,
    complete_channel_masks,
    dead_inputs,
    has_registered_plan,
    is_depthwise,
    pruned_channels,
)
from ticketlab.errors import TicketlabError
from ticketlab.sparsity.masks import Masks, apply_masks, check_masks


def _kept(group: ChannelGroup, masks: Masks, tensors: dict[str, torch.Tensor], multiple: int,
          dead: Masks) -> torch.Tensor:
    """Indices of the channels to keep; the rest are provably silent, so removing them is exact.

    `multiple` > 1 keeps some silent channels too, the lowest-numbered first, until the count is a
    multiple of it: CPU and GPU kernels are far faster at such widths (BENCHMARKS.md), and a kept
    silent channel stays exactly zero under its mask, so the function is the same.
    """
    for name in group.producers:
        if name in masks:  # whole rows, but for the dead weights that read dropped channels (masked or not)
            rows = masks[name].bool().flatten(1)
            reads_dropped = dead[name].flatten(1) if name in dead else torch.zeros_like(rows)
            partial = int(((rows & ~reads_dropped).any(1) & ~(rows | reads_dropped).all(1)).sum())
            if partial:
                raise TicketlabError(
                    f"mask of {name} is not channel-structured: {partial} of its {rows.shape[0]} output channels are "
                    "partly kept, and compaction removes whole channels only; make structured masks first "
                    "(`--structure channel`, or ticketlab.sparsity.structure.refill)"
                )
    pruned = pruned_channels(group, masks).cpu()
    if pruned.all():  # an empty layer would break the shapes; one kept channel computes the same
        pruned[0] = False
    # what must be zero on a dropped channel for it to be silent: its companions, and the running mean
    # of a BatchNorm without affine weights (which maps a silent channel to -mean / std)
    constant = "so these channels still output a constant and removing them would change the model"
    fixes = {name: f"{{live}} of their {name} entries are non-zero, {constant}; train with "
                   "ticketlab.compact.complete_channel_masks(model, masks), which keeps them at zero"
             for name in group.companions}
    for name in group.buffers:
        norm = name.removesuffix(".running_mean")
        if name.endswith(".running_mean") and f"{norm}.weight" not in group.companions:
            fixes[name] = (f"BatchNorm {norm} has no affine weights and {{live}} of their running means are non-zero, "
                           f"in eval mode {constant}; use an affine BatchNorm (its weight and bias are masked with "
                           "the channel) or zero those running means")
    for name, fix in fixes.items():
        live = int((tensors[name].detach().cpu()[pruned] != 0).sum())
        if live:
            raise TicketlabError(
                f"cannot remove {int(pruned.sum())} dropped channels of {group.producers[0]}: {fix.format(live=live)}"
            )
    short = -int((~pruned).sum()) % multiple
    pruned[pruned.nonzero().squeeze(1)[:short]] = False
    return (~pruned).nonzero().squeeze(1)


@dataclass(frozen=True)
class Kept:
    """What a compaction keeps of each tensor, by qualified name: rows (dim 0) and columns (dim 1)."""

    rows: dict[str, torch.Tensor]
    columns: dict[str, torch.Tensor]

    def shrink(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full-size tensors (masks, a state dict) cut to the compacted network's shapes."""
        out = {}
        for name, t in tensors.items():
            if name in self.rows:
                t = t.index_select(0, self.rows[name].to(t.device))
            if name in self.columns:
                t = t.index_select(1, self.columns[name].to(t.device))
            out[name] = t
        return out

    def expand(self, small: Mapping[str, torch.Tensor], full: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`full` with the compacted network's entries written back where they came from."""
        out = {}
        for name, t in full.items():
            value = small[name].to(t.device, t.dtype)
            if name not in self.rows and name not in self.columns:
                out[name] = value.clone()
                continue
            t = t.clone()
            rows = self.rows.get(name, torch.arange(t.shape[0])).to(t.device)
            if name in self.columns:
                columns = self.columns[name].to(t.device)
                value = t.index_select(0, rows).index_copy_(1, columns, value)
            out[name] = t.index_copy_(0, rows, value)
        return out


def kept_entries(model: nn.Module, masks: Masks, multiple: int = 1) -> Kept:
    """The rows and columns `compact(model, masks, multiple)` keeps."""
    if multiple < 1:
        raise TicketlabError(f"the channel multiple must be at least 1, got {multiple}")
    groups = channel_groups(model)
    check_masks(model, masks)
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    rows: dict[str, torch.Tensor] = {}
    columns: dict[str, torch.Tensor] = {}
    dead = dead_inputs(tensors, groups, masks)
    for group in groups:
        kept = _kept(group, masks, tensors, multiple, dead)
        rows.update(dict.fromkeys(group.producers + group.companions + group.buffers, kept))
        columns.update(dict.fromkeys(group.consumers, kept))
        for name, block in group.flat_consumers:  # channel c is the block of input columns [c * block, ...)
            columns[name] = (kept.unsqueeze(1) * block + torch.arange(block, device=kept.device)).flatten()
    return Kept(rows, columns)


_RESIZABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


def _resized(module: nn.Module, state: dict[str, torch.Tensor], like: torch.Tensor) -> nn.Module:
    """A new module of the same kind and settings, sized for the sliced `state`."""
    factory = {"device": like.device, "dtype": like.dtype}
    if isinstance(module, nn.Conv2d):
        out_channels, in_channels = state["weight"].shape[:2]
        groups = 1
        if is_depthwise(module):  # one filter per channel: the channels it keeps are its groups
            in_channels = groups = out_channels
        elif module.groups != 1:
            raise TicketlabError(f"cannot compact a grouped convolution ({module}); channel compaction needs groups=1 "
                                 "or a depthwise convolution (groups = in_channels = out_channels)")
        new = nn.Conv2d(
            in_channels,
            out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            **factory,
        )
    elif isinstance(module, nn.Linear):
        out_features, in_features = state["weight"].shape
        new = nn.Linear(in_features, out_features, bias=module.bias is not None, **factory)
    else:
        new = type(module)(
            like.shape[0], module.eps, module.momentum, module.affine, module.track_running_stats, **factory
        )
    new.load_state_dict(state)
    for key, p in new.named_parameters():
        p.requires_grad_(getattr(module, key).requires_grad)
    return new.train(module.training)


def _qualified(module: str, key: str) -> str:
    return f"{module}.{key}" if module else key


@torch.no_grad()
def compact(model: nn.Module, masks: Masks, multiple: int = 1) -> nn.Module:
    """A new, smaller `model` without the channels every producer of their group drops.

    Weights are multiplied by `masks` first, so pruned weights inside kept rows stay zero; the
    input is left untouched. A dropped channel must be silent (companions zero: train with
    `complete_channel_masks`), so the result computes what the masked model computes. `multiple`
    keeps silent channels too until each width is a multiple of it (see `_kept`).
    """
    out = copy.deepcopy(model)
    apply_masks(out, masks)
    kept = kept_entries(out, masks, multiple)
    aliases: dict[int, list[str]] = {}  # a module set as two attributes is one module, named once
    for name, module in out.named_modules(remove_duplicate=False):
        aliases.setdefault(id(module), []).append(name)
    for name, module in list(out.named_modules()):
        own = [key for key, _ in module.named_parameters(recurse=False)] + [
            key for key, _ in module.named_buffers(recurse=False)
        ]
        touched = [key for key in own if _qualified(name, key) in kept.rows or _qualified(name, key) in kept.columns]
        if not touched:
            continue
        if type(module) not in _RESIZABLE:
            raise TicketlabError(
                f"channel plan of {type(model).__name__} resizes {name}, a {type(module).__name__}; "
                "compaction resizes only Conv2d, Linear and BatchNorm1d/2d modules"
            )
        full = module.state_dict()
        cut = kept.shrink({_qualified(name, key): full[key] for key in touched})
        state = {**full, **{key: cut[_qualified(name, key)] for key in touched}}
        try:
            new = _resized(module, state, state[touched[0]])
        except RuntimeError as e:
            raise TicketlabError(
                f"channel plan of {type(model).__name__} resizes only some tensors of {name} ({e}); "
                "a plan must list every per-channel parameter and buffer of a layer it resizes"
            ) from None
        for alias in aliases[id(module)]:
            parent, _, child = alias.rpartition(".")
            setattr(out.get_submodule(parent), child, new)
    if not has_registered_plan(model):
        _check_same_graph(model, out)
    return out


def check_compacts(model: nn.Module) -> None:
    """Compact a copy of `model` with one channel of each group removed, so a forward that a narrower network
    breaks (one reading a layer's width) is found before a study trains, not once its first ticket is cut."""
    if has_registered_plan(model):
        return
    params = dict(model.named_parameters())
    masks = {}
    for group in channel_groups(model):
        if group.channels > 1:
            for name in group.producers:
                keep = torch.ones_like(params[name], dtype=torch.bool)
                keep[0] = False
                masks[name] = keep
    if masks:
        compact(model, complete_channel_masks(model, masks))


def _traced_code(model: nn.Module) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fx.symbolic_trace(model).code


def _check_same_graph(model: nn.Module, compacted: nn.Module) -> None:
    """A traced plan reads the forward as torch.fx records it, with Python values such as a layer's
    `in_features` fixed at what they were; a forward that reads one computes something else once the
    layer is narrower, and only a second trace shows it: the compacted copy must trace to the same code."""
    if _traced_code(model) != _traced_code(compacted):
        name = type(model).__name__
        raise TicketlabError(
            f"the forward of {name} reads a value that compaction changes (such as a layer's in_features or "
            "out_features), so its compacted copy would compute another function; keep such constants as "
            f"attributes set in {name}.__init__, or compute them from the input"
        )


def compaction_report(original: nn.Module, compacted: nn.Module) -> dict:
    """Parameters and per-group channels before and after compaction (JSON-ready).

    The groups are the original's, with widths read off the compacted weights: tracing the compacted
    network again could group its channels otherwise (a conv cut to one channel in and out reads as
    depthwise)."""
    before, params = channel_groups(original), dict(compacted.named_parameters())
    after = [{params[p].shape[0] for p in g.producers if p in params} for g in before]
    if any(len(widths) != 1 or not set(g.producers) <= set(params) for g, widths in zip(before, after)):
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
            {"producers": list(b.producers), "channels": {"before": b.channels, "after": next(iter(a))}}
            for b, a in zip(before, after)
        ],
    }
