"""The prunable tensors of a model: Conv2d and Linear weights, never biases or BatchNorm.

This is the convention of the lottery-ticket literature (Frankle & Carbin 2019 and after); it applies to
any `nn.Module`, including users' own, without subclassing.
"""

from __future__ import annotations

import re

import torch
from torch import fx, nn

from ticketlab.errors import TicketlabError


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> weight of every Conv2d and Linear layer, in module order; a weight two layers share (tied) once,
    under the name `named_parameters` gives it, so that masks, scores and densities count it once."""
    canonical = {id(p): name for name, p in model.named_parameters()}
    out: dict[str, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and id(module.weight) in canonical:
            out.setdefault(canonical[id(module.weight)], module.weight)
    return out


def ends(model: nn.Module) -> tuple[str, str]:
    """The weights of the first and the last Conv2d/Linear the forward pass calls (the stem and the classifier),
    read off its traced graph: a module may register its head before its body. Module order where the forward
    cannot be traced."""
    names = list(prunable_parameters(model))
    if not names:
        raise TicketlabError(f"{type(model).__name__} has no Conv2d or Linear layer, so it has no first or last "
                             "layer to prune or keep; ticketlab prunes the weights of those two module types")
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # data-dependent control flow and the like: module order it is
        return names[0], names[-1]
    called = [f"{node.target}.weight" for node in graph.nodes if node.op == "call_module"
              and f"{node.target}.weight" in names]
    return (called[0], called[-1]) if called else (names[0], names[-1])


def select_prunable(
    model: nn.Module,
    *,
    exclude_first: bool = False,
    exclude_last: bool = False,
    keep_streams: bool = False,
    include: str | None = None,
    exclude: str | None = None,
) -> dict[str, nn.Parameter]:
    """The weights a pruning method may touch, in module order.

    `exclude_first` keeps the first Conv2d/Linear the forward pass calls dense and `exclude_last` the last
    one (the classifier; `ends`): the common IMP variants. `keep_streams` keeps every layer
    that writes into a residual stream dense (the stem, projection shortcuts, each block's last
    conv), so channel pruning narrows only the layers inside blocks and the streams keep their
    width: the usual way to prune ResNets' channels (Li et al. 2017). `include` / `exclude` are
    regular expressions searched in the parameter name (`re.search`), applied after these rules.
    """
    params = prunable_parameters(model)
    if not params:
        raise TicketlabError(
            "model has no prunable layer (no Conv2d or Linear module); "
            "ticketlab prunes the weights of Conv2d and Linear layers only"
        )
    names = list(params)
    if exclude_first or exclude_last:
        first, last = ends(model)
        names = [n for n in names if not (exclude_first and n == first or exclude_last and n == last)]
    if keep_streams:
        writers = stream_writers(model)
        names = [n for n in names if n not in writers]
    if include is not None:
        pattern = _compile(include, "include")
        names = [n for n in names if pattern.search(n)]
    if exclude is not None:
        pattern = _compile(exclude, "exclude")
        names = [n for n in names if not pattern.search(n)]
    if not names:
        raise TicketlabError(
            f"model has no prunable layer left after exclude_first={exclude_first}, "
            f"exclude_last={exclude_last}, keep_streams={keep_streams}, include={include!r}, exclude={exclude!r} "
            f"(its prunable weights: {_preview(list(params))}); loosen these filters"
        )
    return {n: params[n] for n in names}


def stream_writers(model: nn.Module) -> set[str]:
    """The weights whose output channels add into a residual stream: those of every channel group
    with more than one producer (`ticketlab.compact.channel_groups`)."""
    from ticketlab.compact.channels import channel_groups  # compact builds on sparsity: imported when asked

    writers = {name for group in channel_groups(model) if len(group.producers) > 1 for name in group.producers}
    if not writers:
        raise TicketlabError(
            f"keep_streams (--keep-streams) keeps the layers that write a residual stream dense, but "
            f"{type(model).__name__} has none (no channels are written by two layers); drop it"
        )
    return writers


def _compile(pattern: str, option: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise TicketlabError(
            f"{option} pattern {pattern!r} is not a valid regular expression ({e}); fix the pattern"
        ) from None


def _preview(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def density(model: nn.Module) -> float:
    """Fraction of prunable weights that are nonzero (1.0 for a dense model)."""
    weights = list(prunable_parameters(model).values())
    total = sum(w.numel() for w in weights)
    if total == 0:
        return 1.0
    with torch.no_grad():
        return sum(int(torch.count_nonzero(w)) for w in weights) / total
