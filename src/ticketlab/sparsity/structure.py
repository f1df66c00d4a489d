"""Refill: an unstructured mask turned into whole output channels (Chen et al. 2022, "Coarsening the granularity").

A mask that keeps or drops whole output channels (dim-0 rows of a conv [C_out, C_in, k, k] or
linear [out, in] weight) can be compacted into a smaller dense network, which is faster on any
device; an unstructured mask of the same density is not. Refill spends a layer's surviving-weight
budget on the channels that deserve it most: c = nnz / (weights per channel) channels could be
filled completely, so it keeps int(c + (C_out − c)·r) channels dense and drops the rest. r = 0
keeps the parameter count; r > 0 ("refill+") adds channels back. With `multiple` M > 1 that count is
rounded to the nearest multiple of M: AVX-512 and tensor-core kernels run such widths far faster
than the widths in between (BENCHMARKS.md), at about the same parameter count.

In a residual network the convs that write into one skip-connection stream must keep the same
channels (a removed channel must vanish from every addend), so such layers are refilled as one
tied group with one pooled budget and one shared ranking.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.config import REFILL_CRITERIA
from ticketlab.errors import TicketlabError
from ticketlab.sparsity.masks import Masks, apply_masks, check_masks

Batch = tuple[torch.Tensor, torch.Tensor]


def _rows(mask: torch.Tensor, layer: str) -> torch.Tensor:
    """The mask as [C_out, weights per channel] bool."""
    if mask.dim() < 2:
        raise TicketlabError(
            f"{layer} has a {mask.dim()}-D mask; refill works on the output channels (dim 0) of conv or linear "
            "weights, so leave 1-D parameters out of the mask set"
        )
    return mask.bool().flatten(1)


def kept_channels(mask: torch.Tensor) -> torch.Tensor:
    """bool [C_out]: output channels (dim 0 rows; conv [C_out, C_in, k, k] or linear [out, in]) with any kept weight."""
    return _rows(mask, "the layer").any(1)


def is_channel_structured(mask: torch.Tensor) -> bool:
    """Every output row all pruned or keeping what every other kept row keeps: all its weights, or all but
    whole input channels (those a completed mask drops because the previous layer removed them). What
    physical compaction needs of one layer; whether the inputs it skips are the ones an earlier layer
    removed depends on the model, which `compact` checks."""
    rows = _rows(mask, "the layer")
    kept = rows[rows.any(1)]
    if kept.shape[0] == 0:
        return True
    per_input = kept[0].view(mask.shape[1], -1)
    return bool((kept == kept[0]).all()) and bool((per_input.all(1) | ~per_input.any(1)).all())


def channel_counts(mask: torch.Tensor) -> torch.Tensor:
    """float [C_out]: surviving weights per output channel (refill's default ranking)."""
    return _rows(mask, "the layer").sum(1).float()


def _check_r(r: float) -> None:
    if not 0.0 <= r < 1.0:
        raise TicketlabError(
            f"refill rate r must be in [0, 1), got {r}; r = 0 keeps the parameter count, r > 0 (refill+) adds channels"
        )


def _checked_scores(score: torch.Tensor, c_out: int, layer: str, device: torch.device) -> torch.Tensor:
    if tuple(score.shape) != (c_out,):
        raise TicketlabError(
            f"channel scores of {layer} have shape {tuple(score.shape)} but its mask has {c_out} output channels; "
            "give one score per output channel"
        )
    if not torch.isfinite(score).all():  # an infinite score would turn the tied groups' vote into NaN
        raise TicketlabError(
            f"channel scores of {layer} contain NaN or infinity; the refill criterion diverged on this model or batch"
        )
    return score.detach().to(device=device, dtype=torch.float64)


def _dense_rows(keep: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The mask of `like`'s shape that keeps exactly the rows in `keep`, all of each."""
    return keep.to(like.device).view(-1, *[1] * (like.dim() - 1)).expand(like.shape).contiguous()


def _check_multiple(multiple: int) -> None:
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise TicketlabError(f"the refill multiple must be a positive integer (1 keeps the exact count; 16 suits "
                             f"AVX-512 CPUs, 8 tensor cores), got {multiple!r}")


def _rounded(count: Fraction, c_out: int, multiple: int) -> int:
    """The channel count to keep: `count` floored (at least 1), or, with `multiple` > 1 and a layer wider
    than it, rounded to the nearest multiple (halves up) within [multiple, c_out]."""
    if multiple == 1 or c_out <= multiple:
        return max(1, math.floor(count))
    return min(c_out, max(multiple, multiple * math.floor(count / multiple + Fraction(1, 2))))


def _refill_group(masks: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor] | None, r: float,
                  widths: Mapping[str, int] | None = None, multiple: int = 1) -> Masks:
    """One channel set for all of `masks` (a single layer is a group of one).

    Budget: c = (Σ nnz) / (Σ weights per channel), so the group keeps the parameters its members
    had together; a channel's weights are its whole row, or `widths[name]` of them where only those
    are live (the rest read channels an earlier layer removed). Ranking: each member's scores scaled
    to unit L1 norm (sum 1 for the non-negative scores every criterion gives), then summed, so a wide
    member does not outvote a narrow one.
    """
    rows = {name: _rows(mask, f"layer {name}") for name, mask in masks.items()}
    sizes = {name: rw.shape[0] for name, rw in rows.items()}
    if len(set(sizes.values())) > 1:
        raise TicketlabError(
            f"tied layers must have the same number of output channels, got {sizes}; "
            "tie only the layers that write into one skip-connection stream"
        )
    c_out = next(iter(sizes.values()))
    device = next(iter(rows.values())).device
    vote = torch.zeros(c_out, dtype=torch.float64, device=device)
    for name in sorted(rows):  # one summation order whatever the order the group lists its members in
        score = rows[name].sum(1).float() if scores is None else scores[name]
        score = _checked_scores(score, c_out, f"layer {name}", device)
        total = score.abs().sum()
        vote += score / total if total > 0 else score
    # votes equal in exact arithmetic can differ in their last bits (a/x + b/y against b/y + a/x); rounded to
    # 2^-32 (each member adds at most 1) they tie, and the tie rule below decides
    vote = torch.round(vote * 2.0**32)
    # exact arithmetic: in floats, 100 channels at r = 0.29 give int(28.999999999999996) = 28, not 29
    width = sum((widths or {}).get(name, rw.shape[1]) for name, rw in rows.items())
    c = Fraction(sum(int(rw.sum()) for rw in rows.values()), width)
    # at least one channel, so that refill never cuts the network in two
    n = _rounded(c + (c_out - c) * Fraction(str(r)), c_out, multiple)
    # stable descending sort: ties go to the lower channel index, so the result is deterministic
    order = torch.sort(vote, descending=True, stable=True).indices[:n]
    keep = torch.zeros(c_out, dtype=torch.bool, device=device)
    keep[order] = True
    return {name: _dense_rows(keep, mask) for name, mask in masks.items()}


def refill_layer(mask: torch.Tensor, scores: torch.Tensor | None = None, r: float = 0.0,
                 multiple: int = 1) -> torch.Tensor:
    """c = nnz / (weights per channel); keep int(c + (C_out - c) * r) channels fully dense (at least 1; with
    `multiple` > 1 the nearest multiple of it instead), ranked by `scores` [C_out] (default:
    channel_counts(mask)), ties to the lower index; all other rows False."""
    _check_r(r)
    _check_multiple(multiple)
    key = "passed to refill_layer"  # how errors name this mask
    return _refill_group({key: mask}, None if scores is None else {key: scores}, r, multiple=multiple)[key]


def _groups(masks: Masks, tied: Sequence[Sequence[str]], keep: Collection[str]) -> list[list[str]]:
    """The tied groups restricted to the refilled layers, then every other refilled layer on its own."""
    grouped: set[str] = set()
    groups = []
    for group in tied:
        if isinstance(group, str):
            raise TicketlabError(
                "tied must be a list of groups of layer names, e.g. [['a.weight', 'b.weight']]; "
                f"got the bare name {group!r}"
            )
        members = [name for name in dict.fromkeys(group) if name in masks and name not in keep]
        for name in members:
            if name in grouped:
                raise TicketlabError(
                    f"layer {name} is in two tied groups; channels tied to a common layer are tied to each other, "
                    "so merge the two groups"
                )
            grouped.add(name)
        if members:
            groups.append(members)
    return groups + [[name] for name in masks if name not in grouped and name not in keep]


def refill(
    masks: Masks,
    *,
    r: float = 0.0,
    scores: Mapping[str, torch.Tensor] | None = None,
    tied: Sequence[Sequence[str]] = (),
    keep: Collection[str] = (),
    widths: Mapping[str, int] | None = None,
    multiple: int = 1,
) -> Masks:
    """Refill every layer of `masks`, except the names in `keep` (returned unchanged: e.g. the classifier,
    whose outputs are classes).

    `widths`: per layer, how many weights of a row are live, where an earlier level removed some of its
    input channels (default: the whole row). The budget then counts a kept channel by its live weights,
    as the paper's rule counts whole rows of a network whose every input is live.

    `multiple`: keep a multiple of this many channels per layer (or tied group), the nearest to the
    count the rule gives; a layer no wider than `multiple` keeps the rule's count. The nearest can be
    the layer's live width: 2M live channels pruned by 20% give 1.6M, kept as 2M, so small IMP steps
    can leave a layer as wide as it was.

    `tied`: groups of layer names whose output channels are tied (the convs writing into one
    skip-connection stream); a group gets ONE channel set, see `_refill_group`. Names in `tied` or
    `keep` that are not in `masks` are ignored (e.g. an excluded first layer), and so are `keep`
    names inside a group: a layer left unchanged cannot share a channel set.
    """
    _check_r(r)
    _check_multiple(multiple)
    keep = {keep} if isinstance(keep, str) else set(keep)  # one name, not the set of its characters
    for name, width in (widths or {}).items():
        row = masks[name][0].numel() if name in masks and masks[name].dim() >= 2 else None
        if row is not None and (isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= row):
            raise TicketlabError(f"widths[{name!r}] counts the live weights of a row, so it must be an integer "
                                 f"from 1 to {row}, got {width!r}")
    if scores is not None:
        missing = [name for name in masks if name not in keep and name not in scores]
        if missing:
            raise TicketlabError(
                f"no channel scores for layer {missing[0]}; give scores for every refilled layer "
                "(channel_scores scores them all)"
            )
    out: Masks = {}
    for group in _groups(masks, tied, keep):
        out.update(_refill_group({name: masks[name] for name in group}, scores, r, widths, multiple))
    return {name: out.get(name, masks[name]) for name in masks}


# ---- channel scores -------------------------------------------------------------------------

_CHANNEL_DIM = {nn.Conv1d: 1, nn.Conv2d: 1, nn.Conv3d: 1, nn.Linear: -1}


def _layer_module(net: nn.Module, name: str) -> tuple[nn.Module, int]:
    """The module whose weight `name` is, and the dim of its output that holds the channels."""
    path, _, attr = name.rpartition(".")
    module = net.get_submodule(path)
    dim = next((d for kind, d in _CHANNEL_DIM.items() if isinstance(module, kind)), None)
    if dim is None or attr != "weight":
        raise TicketlabError(
            f"layer {name} is not the weight of a Conv or Linear module; activation and taylor scores read that "
            "module's output channels, so score it with 'count' or 'l1'"
        )
    return module, dim


def _masked_copy(model: nn.Module, masks: Masks) -> nn.Module:
    """An eval-mode copy with the pruned weights zeroed: the scores describe the ticket, and the
    caller's weights, modes and BatchNorm statistics stay untouched."""
    net = copy.deepcopy(model).eval()
    apply_masks(net, masks)
    return net


def _record_outputs(net: nn.Module, masks: Masks) -> dict[str, list[tuple[torch.Tensor, int]]]:
    """Forward hooks (on the throwaway copy) collecting every output of each masked layer.

    The network continues on a clone of each output, so an in-place op downstream (ReLU(inplace=True)
    right after a conv) cannot overwrite the recorded activation or reroute its gradient.
    """
    outputs: dict[str, list[tuple[torch.Tensor, int]]] = {name: [] for name in masks}

    def recorder(store: list[tuple[torch.Tensor, int]], dim: int) -> Callable[..., torch.Tensor]:
        def hook(_module: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
            store.append((out, dim))
            return out.clone()

        return hook

    for name in masks:
        module, dim = _layer_module(net, name)
        module.register_forward_hook(recorder(outputs[name], dim))
    return outputs


def _per_channel(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[C, everything else]: batch and spatial positions flattened."""
    return t.movedim(dim, 0).flatten(1)


def _ran(outputs: dict[str, list[tuple[torch.Tensor, int]]]) -> None:
    unused = [name for name, outs in outputs.items() if not outs]
    if unused:
        raise TicketlabError(
            f"layer {unused[0]} did not run in the model's forward pass, so it has no activations to score; "
            "score it with 'count' or 'l1'"
        )


def _on_model_device(model: nn.Module, batch: Batch) -> Batch:
    device = next(model.parameters()).device
    return batch[0].to(device), batch[1].to(device)


def _activation_norms(model: nn.Module, masks: Masks, batch: Batch) -> dict[str, torch.Tensor]:
    net = _masked_copy(model, masks)
    outputs = _record_outputs(net, masks)
    with torch.no_grad():
        net(_on_model_device(model, batch)[0])
    _ran(outputs)
    return {
        name: torch.cat([_per_channel(out, dim) for out, dim in outs], 1).norm(dim=1)
        for name, outs in outputs.items()
    }


def _taylor(
    model: nn.Module, masks: Masks, batch: Batch, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Mean over examples of |Σ_positions a · ∂L/∂a| per output channel (Molchanov et al. 2017, eq. 8):
    each example's first-order loss change when the channel is zeroed. The absolute value is taken per
    example, as the paper does, because summed over a batch of a trained network the signed terms cancel."""
    net = _masked_copy(model, masks).requires_grad_(True)  # frozen weights would leave no graph to differentiate
    outputs = _record_outputs(net, masks)
    inputs, targets = _on_model_device(model, batch)
    loss = loss_fn(net(inputs), targets)
    _ran(outputs)
    flat = [(name, out, dim) for name, outs in outputs.items() for out, dim in outs]
    grads = torch.autograd.grad(loss, [out for _, out, _ in flat], allow_unused=True)
    terms: dict[str, list[torch.Tensor]] = {name: [] for name in masks}
    for (name, out, dim), grad in zip(flat, grads):
        # no gradient: the loss does not depend on this output, so its first-order change is 0
        g = torch.zeros_like(out) if grad is None else grad
        per_channel = (out.detach() * g).movedim(dim, 0)  # [C, N, positions...]: batch first in every output
        terms[name].append(per_channel.reshape(per_channel.shape[0], out.shape[0], -1).sum(2))
    # a layer run twice changes the loss through both outputs: sum them before the per-example |.|
    return {name: torch.stack(t).sum(0).abs().mean(1) for name, t in terms.items()}


def channel_scores(
    criterion: str,
    model: nn.Module,
    masks: Masks,
    batch: Batch | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-layer channel scores [C_out] for the layers in `masks`, higher = keep.

    count: surviving weights; l1: L1 norm of the channel's masked weights; activation: L2 norm of
    the channel's output over the batch and positions; taylor: |Σ activation · ∂loss/∂activation| per
    example, averaged over the batch (loss_fn default cross-entropy). activation and taylor run an
    eval-mode copy of the model with the masks applied, on `batch` = (inputs, targets).
    """
    if criterion not in REFILL_CRITERIA:
        raise TicketlabError(f"unknown refill criterion {criterion!r}; choose one of: {', '.join(REFILL_CRITERIA)}")
    check_masks(model, masks)
    if criterion == "count":
        return {name: channel_counts(mask) for name, mask in masks.items()}
    if criterion == "l1":
        params = dict(model.named_parameters())
        return {
            name: (params[name].detach() * mask.to(params[name].device)).abs().flatten(1).sum(1)
            for name, mask in masks.items()
        }
    if batch is None:
        raise TicketlabError(f"refill criterion {criterion!r} needs one batch of data, batch=(inputs, targets)")
    if criterion == "activation":
        return _activation_norms(model, masks, batch)
    return _taylor(model, masks, batch, F.cross_entropy if loss_fn is None else loss_fn)
