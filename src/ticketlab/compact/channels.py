"""Which output channels are tied together, and which layers read them, per architecture.

A channel can be removed from a network only where every layer writing it drops it: in a residual
stage the stem (or the stage's projection shortcut) and every block's conv2 add into one stream,
so their channels are tied. A *plan* lists these groups for one model class:
the built-in architectures register theirs here, any other network gets the one its torch.fx
graph shows (`ticketlab.compact.trace`), and `register_channel_plan` covers a network fx cannot
read.

A channel whose weights are all zero is not silent: BatchNorm still outputs its shift
beta - gamma * mean / std (a Linear its bias). So the per-channel parameters after a producer
(its *companions*) must be masked too before the channel can be removed without changing the
function; `complete_channel_masks` adds those masks. In a pre-activation net (WideResNet) the
BatchNorm sits before the convs that read a channel: a zero channel still comes out of it as that
shift, so a reading BN's entries are companions of the channel's group too.

A conv channel flattened into a Linear is read as a block of H*W input columns, not one column;
such consumers are listed in `flat_consumers` with their block size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.models.convnet import ConvNet
from ticketlab.models.fastnet import FastNet
from ticketlab.models.lenet import LeNet300100
from ticketlab.models.resnet import ResNet
from ticketlab.models.vgg import VGG
from ticketlab.models.wide_resnet import WideResNet
from ticketlab.sparsity.masks import Masks, check_masks


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels written together by `producers` and read by `consumers`."""

    channels: int
    producers: tuple[str, ...]  # weight param names whose dim 0 indexes these channels (conv/linear weights)
    # other params whose dim 0 indexes these channels: producer biases, BN weight and bias, depthwise conv weights
    companions: tuple[str, ...]
    buffers: tuple[str, ...]  # BN running_mean / running_var of these channels
    consumers: tuple[str, ...]  # weight param names whose dim 1 indexes these channels
    # (Linear weight name, n): read through a flatten, channel c is input columns [c * n, (c + 1) * n), n = H * W
    flat_consumers: tuple[tuple[str, int], ...] = ()


Plan = Callable[[nn.Module], list[ChannelGroup]]

_PLANS: dict[type[nn.Module], Plan] = {}


def register_channel_plan(cls: type[nn.Module]) -> Callable[[Plan], Plan]:
    """Decorator: `plan(model) -> list[ChannelGroup]` describes every model of exactly class `cls`.

    Exact class, not subclasses: a subclass may wire its layers differently, and a wrong plan
    would silently change the compacted function.
    """

    def decorate(plan: Plan) -> Plan:
        if cls in _PLANS:
            raise TicketlabError(f"a channel plan for {cls.__name__} is already registered; register each class once")
        _PLANS[cls] = plan
        return plan

    return decorate


def has_registered_plan(model: nn.Module) -> bool:
    return type(model) in _PLANS


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """The channel groups of `model`, checked against its parameter shapes.

    A registered plan comes first; any other network gets the plan its torch.fx graph shows
    (`ticketlab.compact.trace`), or an error naming the operation that prevents one.
    """
    plan = _PLANS.get(type(model))
    if plan is None:
        from ticketlab.compact.trace import traced_plan

        try:
            groups = traced_plan(model)
            if not groups:
                raise TicketlabError("no layer's output channels are read by another layer")
        except TicketlabError as why:
            supported = ", ".join(sorted(cls.__name__ for cls in _PLANS))
            raise TicketlabError(
                f"no channel plan for {type(model).__name__}: {why}. Channel compaction has plans for {supported}, "
                "and reads one off any other network whose graph torch.fx can trace and whose channels only pass "
                "through layers, additions, ReLU-like activations and pooling. Otherwise register one with "
                f"@ticketlab.compact.register_channel_plan({type(model).__name__}) on a function "
                "model -> list[ChannelGroup]"
            ) from None
    else:
        groups = plan(model)
    _check_plan(model, groups)
    return groups


def _check_plan(model: nn.Module, groups: list[ChannelGroup]) -> None:
    """A registered plan must name real tensors whose channel dimension has the group's size."""
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    where = f"channel plan of {type(model).__name__}"
    for group in groups:
        expected = [(name, params, 0, 1) for name in group.producers + group.companions]
        expected += [(name, buffers, 0, 1) for name in group.buffers]
        expected += [(name, params, 1, 1) for name in group.consumers]
        expected += [(name, params, 1, block) for name, block in group.flat_consumers]
        for name, tensors, dim, block in expected:
            if name not in tensors:
                raise TicketlabError(f"{where} names {name}, which the model does not have; fix the registered plan")
            if tensors[name].dim() <= dim or tensors[name].shape[dim] != group.channels * block:
                blocks = f" in blocks of {block} columns" if block != 1 else ""
                raise TicketlabError(
                    f"{where}: {name} has shape {tuple(tensors[name].shape)}, but its dim {dim} should index the "
                    f"group's {group.channels} channels{blocks}; fix the registered plan"
                )


def is_depthwise(module: nn.Module) -> bool:
    """A conv with one filter per channel: channel c in, channel c out."""
    return isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels


def tied_layers(model: nn.Module) -> list[tuple[str, ...]]:
    """Layers that must keep or drop a channel together: the writers of a residual stream, and with
    a group's producers the depthwise convs that filter its channels one by one (refilled alone, a
    depthwise conv would pick channels of its own, which its producer still computes)."""
    params = dict(model.named_parameters())
    tied = []
    for group in channel_groups(model):
        members = group.producers + tuple(name for name in group.companions if params[name].dim() > 1)
        if len(members) > 1:
            tied.append(members)
    return tied


def pruned_channels(group: ChannelGroup, masks: Masks) -> torch.Tensor:
    """Bool [channels]: True where every producer's mask drops the whole output channel.

    A producer absent from `masks` is dense, so it keeps every channel of its group.
    """
    if any(name not in masks for name in group.producers):
        return torch.zeros(group.channels, dtype=torch.bool)
    pruned = torch.ones(group.channels, dtype=torch.bool, device=masks[group.producers[0]].device)
    for name in group.producers:
        pruned &= ~masks[name].bool().flatten(1).any(1).to(pruned.device)
    return pruned


def complete_channel_masks(model: nn.Module, masks: Masks) -> Masks:
    """`masks` plus, at the channels all producers drop, False for every group's companions and for the
    consumers' weights that read those channels.

    Training with these keeps a dropped channel's bias and BN affine parameters at zero, so the
    channel outputs exactly zero and `compact` can remove it without changing the function. The weights
    that read it are dead (their input is zero, so is their gradient); masking them too makes the masks
    say what the network keeps, and keeps them at zero whether a ticket trains masked (where weight decay
    would shrink them) or compacted (where they are absent), so both train the same chain.
    """
    check_masks(model, masks)
    params = dict(model.named_parameters())
    completed = dict(masks)

    def narrowed(name: str, keep: torch.Tensor) -> None:
        before = completed.get(name)
        completed[name] = keep & before.bool() if before is not None else keep.clone()

    groups = channel_groups(model)
    for group in groups:
        kept = ~pruned_channels(group, masks)
        for name in group.companions:
            shape = params[name].shape
            narrowed(name, kept.to(params[name].device).view(-1, *[1] * (len(shape) - 1)).expand(shape))
    for name, dead in dead_inputs(params, groups, masks).items():
        base = completed[name].bool() if name in completed else torch.ones_like(dead)
        keep = base & ~dead
        # a row that reads only dropped channels still outputs its bias or BatchNorm shift: a kept (constant)
        # channel, not a dropped one, so its row stays as it was
        emptied = base.flatten(1).any(1) & ~keep.flatten(1).any(1)
        keep[emptied] = base[emptied]
        completed[name] = keep
    return completed


def dead_inputs(params: Mapping[str, torch.Tensor], groups: list[ChannelGroup], masks: Masks) -> Masks:
    """Per consumer weight that reads a dropped channel: True at the entries that read one (they see only
    zeros, so they are dead whatever their value)."""
    dead: dict[str, torch.Tensor] = {}
    for group in groups:
        pruned = pruned_channels(group, masks)
        if not bool(pruned.any()):
            continue
        readers = [(name, pruned.view(1, -1, *[1] * (params[name].dim() - 2))) for name in group.consumers]
        readers += [(name, pruned.repeat_interleave(n).view(1, -1)) for name, n in group.flat_consumers]
        for name, columns in readers:
            columns = columns.to(params[name].device).expand(params[name].shape)
            dead[name] = dead[name] | columns if name in dead else columns.clone()
    return dead


def _norm(model: nn.Module, norm: str) -> tuple[list[str], list[str]]:
    """(companions, buffers) of the BatchNorm `norm`."""
    bn = model.get_submodule(norm)
    companions = [f"{norm}.weight", f"{norm}.bias"] if bn.affine else []
    buffers = [f"{norm}.running_mean", f"{norm}.running_var"] if bn.track_running_stats else []
    return companions, buffers


def _layer(model: nn.Module, layer: str, norm: str | None) -> tuple[list[str], list[str]]:
    """(companions, buffers) of a Conv2d/Linear `layer` optionally followed by the BatchNorm `norm`."""
    companions = [f"{layer}.bias"] if model.get_submodule(layer).bias is not None else []
    buffers: list[str] = []
    if norm is not None:
        c, b = _norm(model, norm)
        companions += c
        buffers += b
    return companions, buffers


def _group(
    model: nn.Module,
    writers: Sequence[tuple[str, str | None]],
    consumers: Sequence[str],
    norms: Sequence[str] = (),
    flat_consumers: Sequence[tuple[str, int]] = (),
) -> ChannelGroup:
    """One group from its (layer, norm) writers, the weights that read it, the BatchNorms that
    normalise it before a consumer (pre-activation) and the Linears that read it flattened."""
    companions: list[str] = []
    buffers: list[str] = []
    for layer, norm in writers:
        c, b = _layer(model, layer, norm)
        companions += c
        buffers += b
    for norm in norms:
        c, b = _norm(model, norm)
        companions += c
        buffers += b
    return ChannelGroup(
        channels=model.get_submodule(writers[0][0]).weight.shape[0],
        producers=tuple(f"{layer}.weight" for layer, _ in writers),
        companions=tuple(companions),
        buffers=tuple(buffers),
        consumers=tuple(consumers),
        flat_consumers=tuple(flat_consumers),
    )


def _chain(model: nn.Module, layers: Sequence[tuple[str, str | None]]) -> list[ChannelGroup]:
    """Plain feed-forward nets: each layer is read by the next one, the last by the classifier `fc`
    (after global pooling, so its input columns are the channels)."""
    readers = [f"{layer}.weight" for layer, _ in layers[1:]] + ["fc.weight"]
    return [_group(model, [writer], [reader]) for writer, reader in zip(layers, readers)]


def _convs(module: nn.Module) -> int:
    return sum(isinstance(child, nn.Conv2d) for child in module.children())


@register_channel_plan(ResNet)
def _resnet_plan(model: ResNet) -> list[ChannelGroup]:
    """Each conv1 -> bn1 -> conv2 is a group; all writers of a stage's residual stream are one.

    An identity shortcut passes the stream on, so the block's conv2 adds into it; a projection
    shortcut (1x1 conv + BN) starts a new stream, which it and the next conv2s write.
    """
    groups = []
    writers: list[tuple[str, str | None]] = [("stem.conv", "stem.bn")]
    readers: list[str] = []
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            p = f"stages.{s}.{b}"
            if isinstance(block.shortcut, nn.Sequential):
                groups.append(_group(model, writers, readers + [f"{p}.conv1.weight", f"{p}.shortcut.0.weight"]))
                writers, readers = [(f"{p}.shortcut.0", f"{p}.shortcut.1")], []
            else:
                readers.append(f"{p}.conv1.weight")
            groups.append(_group(model, [(f"{p}.conv1", f"{p}.bn1")], [f"{p}.conv2.weight"]))
            writers.append((f"{p}.conv2", f"{p}.bn2"))
    groups.append(_group(model, writers, readers + ["fc.weight"]))
    return groups


@register_channel_plan(VGG)
def _vgg_plan(model: VGG) -> list[ChannelGroup]:
    """conv_k -> bn_k, read by conv_{k+1}; ReLU and max-pool map a zero channel to zero."""
    return _chain(model, [(f"features.conv{k}", f"features.bn{k}") for k in range(1, _convs(model.features) + 1)])


@register_channel_plan(FastNet)
def _fastnet_plan(model: FastNet) -> list[ChannelGroup]:
    """The whitening conv (its bias is the companion), then every conv_k -> bn_k of every group;
    GELU(0) = 0 and max-pools keep zero channels zero."""
    layers: list[tuple[str, str | None]] = [("whiten", None)]
    for g, group in enumerate(model.groups):
        layers += [(f"groups.{g}.conv{k}", f"groups.{g}.bn{k}") for k in range(1, _convs(group) + 1)]
    return _chain(model, layers)


@register_channel_plan(LeNet300100)
def _lenet_plan(model: LeNet300100) -> list[ChannelGroup]:
    """The hidden units of fc1 and fc2; their biases are the companions."""
    return _chain(model, [("hidden.fc1", None), ("hidden.fc2", None)])


@register_channel_plan(WideResNet)
def _wide_resnet_plan(model: WideResNet) -> list[ChannelGroup]:
    """Pre-activation blocks: bn2 normalises conv1's output, so conv1 -> bn2 -> conv2 is a group;
    bn1 normalises the block's input, so it belongs to the stream the block reads, as the final bn
    does to the last stream. The stem, projection shortcuts (reading bn1's output) and conv2s
    write the streams, which identity shortcuts pass on as in ResNet. No writer has a bias or a BN
    of its own: the reading BNs' entries are what must be zero for a dropped channel to stay zero.
    """
    groups = []
    writers: list[tuple[str, str | None]] = [("stem", None)]
    readers: list[str] = []
    norms: list[str] = []
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            p = f"stages.{s}.{b}"
            norms.append(f"{p}.bn1")
            if isinstance(block.shortcut, nn.Sequential):
                reads = readers + [f"{p}.conv1.weight", f"{p}.shortcut.0.weight"]
                groups.append(_group(model, writers, reads, norms))
                writers, readers, norms = [(f"{p}.shortcut.0", None)], [], []
            else:
                readers.append(f"{p}.conv1.weight")
            groups.append(_group(model, [(f"{p}.conv1", f"{p}.bn2")], [f"{p}.conv2.weight"]))
            writers.append((f"{p}.conv2", None))
    groups.append(_group(model, writers, readers + ["fc.weight"], norms + ["bn"]))
    return groups


@register_channel_plan(ConvNet)
def _convnet_plan(model: ConvNet) -> list[ChannelGroup]:
    """conv_k (its bias the companion) read by conv_{k+1}; ReLU and max-pool keep zero channels
    zero. The last conv is flattened into hidden.fc1, each channel a block of H*W input columns;
    then the hidden units of fc1 and fc2, as in LeNet."""
    convs = [f"features.conv{k}" for k in range(1, _convs(model.features) + 1)]
    groups = [_group(model, [(conv, None)], [f"{reader}.weight"]) for conv, reader in zip(convs, convs[1:])]
    spatial = model.hidden.fc1.in_features // model.get_submodule(convs[-1]).out_channels
    groups.append(_group(model, [(convs[-1], None)], [], flat_consumers=[("hidden.fc1.weight", spatial)]))
    return groups + _chain(model, [("hidden.fc1", None), ("hidden.fc2", None)])
