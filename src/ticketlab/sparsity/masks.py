"""Masks from scores, and what to do with masks.

A mask set is `dict[param_name -> bool tensor of the weight's shape]`; True = kept. Scores follow
one convention everywhere: higher = more important = kept. Every ranking breaks ties by position
(layer order, then flat index), so the same scores always give the same mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.sparsity.budgets import BUDGETS, check_density
from ticketlab.sparsity.prunable import prunable_parameters
from ticketlab.store.files import read_tensors, write_tensors

Masks = dict[str, torch.Tensor]
Scores = Mapping[str, torch.Tensor]


def _checked(scores: Scores, current: Masks | None) -> None:
    for name, s in scores.items():
        if torch.isnan(s).any():
            raise TicketlabError(f"scores of {name} contain NaN; the pruning criterion diverged on this model or batch")
    if current is None:
        return
    if set(current) != set(scores):
        raise TicketlabError(
            f"current masks cover {sorted(current)} but the scores cover {sorted(scores)}; "
            "score exactly the layers the masks were made for"
        )
    for name, s in scores.items():
        if current[name].shape != s.shape:
            raise TicketlabError(
                f"current mask of {name} has shape {tuple(current[name].shape)}, its scores {tuple(s.shape)}"
            )


def _available(scores: Scores, current: Masks | None, name: str) -> torch.Tensor:
    s = scores[name]
    if current is None:
        return torch.ones(s.numel(), dtype=torch.bool, device=s.device)
    return current[name].to(device=s.device, dtype=torch.bool).flatten()


def _top_k(score: torch.Tensor, available: torch.Tensor, k: int) -> torch.Tensor:
    """Flat bool mask of the k highest scores among the available entries; ties go to the lower index.

    Only available entries are ranked, so a pruned weight is never revived, whatever its score.
    """
    left = int(available.sum())
    if k > left:
        raise TicketlabError(
            f"cannot keep {k} weights when only {left} are unpruned; pruning never revives a weight, "
            "so ask for a lower density (or start from no current masks)"
        )
    idx = available.nonzero().squeeze(1)
    order = torch.sort(score.detach().flatten()[idx], descending=True, stable=True).indices[:k]
    keep = torch.zeros_like(available)
    keep[idx[order]] = True
    return keep


def _unflatten(flat: torch.Tensor, like: Scores) -> Masks:
    parts = flat.split([s.numel() for s in like.values()])
    return {name: part.view(s.shape) for (name, s), part in zip(like.items(), parts)}


def global_masks(scores: Scores, density: float, current: Masks | None = None) -> Masks:
    """Keep the k = round(density · total) highest scores across all layers together.

    `total` counts every weight of the scored layers (pruned ones included), so `density` is the
    overall fraction kept; with `current`, only still-unpruned weights compete.
    """
    check_density(density)
    _checked(scores, current)
    flat = torch.cat([s.detach().flatten() for s in scores.values()])
    available = torch.cat([_available(scores, current, n) for n in scores])
    return _unflatten(_top_k(flat, available, round(density * flat.numel())), scores)


def layerwise_masks(scores: Scores, densities: Mapping[str, float], current: Masks | None = None) -> Masks:
    """Keep k_l = round(d_l · N_l) highest scores in each layer l (d_l = 0 empties the layer)."""
    _checked(scores, current)
    if set(densities) != set(scores):
        raise TicketlabError(
            f"layer densities cover {sorted(densities)} but the scores cover {sorted(scores)}; "
            "give one density per scored layer"
        )
    masks = {}
    for name, s in scores.items():
        d = densities[name]
        if not 0.0 <= d <= 1.0:
            raise TicketlabError(f"density of layer {name} must be in [0, 1], got {d}")
        keep = _top_k(s.flatten(), _available(scores, current, name), round(d * s.numel()))
        masks[name] = keep.view(s.shape)
    return masks


def masks_from_scores(scores: Scores, density: float, budget: str = "global", current: Masks | None = None) -> Masks:
    """One-shot pruning to `density` under a named budget ("global", "uniform", "er", "erk")."""
    densities = BUDGETS.get(budget)({n: tuple(s.shape) for n, s in scores.items()}, density)
    if densities is None:
        return global_masks(scores, density, current)
    return layerwise_masks(scores, densities, current)


def prune_fraction(
    scores: Scores,
    current: Masks | None,
    fraction: float,
    scope: Literal["global", "layerwise"] = "global",
    layer_fractions: Mapping[str, float] | None = None,
) -> Masks:
    """One IMP step: remove `fraction` of the weights still unpruned (Frankle & Carbin 2019).

    Global: R unpruned weights over all layers become round((1 − fraction)·R), lowest scores out.
    Layer-wise: the same per layer; `layer_fractions` overrides the fraction of named layers
    (the LeNet-300-100 rule prunes the output layer at half the rate; 0 leaves a layer as it is).
    """
    if not 0.0 < fraction < 1.0:
        raise TicketlabError(
            f"pruning fraction must be in (0, 1), got {fraction}; it is the share of remaining weights removed"
        )
    _checked(scores, current)
    if scope == "global":
        if layer_fractions:
            raise TicketlabError("layer_fractions only apply to scope='layerwise'; drop them or switch scope")
        flat = torch.cat([s.detach().flatten() for s in scores.values()])
        available = torch.cat([_available(scores, current, n) for n in scores])
        k = round((1.0 - fraction) * int(available.sum()))
        return _unflatten(_top_k(flat, available, k), scores)
    if scope != "layerwise":
        raise TicketlabError(f"pruning scope must be 'global' or 'layerwise', got {scope!r}")
    layer_fractions = dict(layer_fractions or {})
    unknown = sorted(set(layer_fractions) - set(scores))
    if unknown:
        raise TicketlabError(
            f"layer_fractions name layers that are not pruned: {', '.join(unknown)}; use names of the scored layers"
        )
    masks = {}
    for name, s in scores.items():
        f = layer_fractions.get(name, fraction)
        if not 0.0 <= f < 1.0:
            raise TicketlabError(f"pruning fraction of layer {name} must be in [0, 1), got {f}")
        available = _available(scores, current, name)
        masks[name] = _top_k(s.flatten(), available, round((1.0 - f) * int(available.sum()))).view(s.shape)
    return masks


def nm_masks(scores: Scores, n: int = 2, m: int = 4) -> Masks:
    """N:M masks: in every group of m consecutive weights along the input dimension keep the n best.

    Groups run along the GEMM reduction dimension with input channels innermost, the layout of
    2:4 sparse tensor cores: a Linear [O, I] is grouped along I; a Conv2d [O, I, k_h, k_w] is
    viewed as [O, k_h, k_w, I] (the channels-last implicit GEMM) and grouped along I at every
    (o, k_h, k_w). So the input channel count must be divisible by m (first convs with 3 input
    channels are not; exclude them).
    """
    if not 0 < n <= m:
        raise TicketlabError(f"N:M sparsity needs 0 < n <= m, got n={n}, m={m}")
    _checked(scores, None)
    masks = {}
    for name, s in scores.items():
        if s.dim() < 2:
            raise TicketlabError(f"layer {name} has a {s.dim()}-D weight; N:M masks need [out, in, ...] weights")
        t = s.detach().movedim(1, -1)
        if t.shape[-1] % m:
            raise TicketlabError(
                f"layer {name} has {t.shape[-1]} inputs, not divisible by m={m}; "
                "N:M groups run along the input dimension, so leave this layer out of the N:M set"
            )
        groups = t.reshape(-1, m)
        best = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
        keep = torch.zeros(groups.shape, dtype=torch.bool, device=s.device).scatter_(1, best, True)
        masks[name] = keep.view(t.shape).movedim(-1, 1).contiguous()
    return masks


def random_like(masks: Masks, generator: torch.Generator) -> Masks:
    """Random pruning baseline: a uniformly random mask with exactly each layer's kept count
    (the random-pruning sanity check: the same per-layer densities, other positions)."""
    out = {}
    for name, mask in masks.items():
        chosen = torch.randperm(mask.numel(), generator=generator, device=generator.device)[: int(mask.count_nonzero())]
        keep = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
        keep[chosen.to(mask.device)] = True
        out[name] = keep.view(mask.shape)
    return out


def shuffle_within_layers(masks: Masks, generator: torch.Generator) -> Masks:
    """Layer-wise mask shuffling baseline: each layer's mask entries randomly permuted.

    Same distribution as `random_like`; a separate name because the sanity-check papers report it
    as a separate baseline.
    """
    out = {}
    for name, mask in masks.items():
        perm = torch.randperm(mask.numel(), generator=generator, device=generator.device).to(mask.device)
        out[name] = mask.bool().flatten()[perm].view(mask.shape)
    return out


def _row(kept: int, total: int) -> dict[str, float | int]:
    return {"kept": kept, "total": total, "density": kept / total if total else 1.0}


def density_report(masks: Masks, model: nn.Module | None = None) -> dict[str, dict]:
    """{"layers": {name: {"kept", "total", "density"}}, "total": {"kept", "total", "density"}}.

    With `model`, exactly the prunable layers of the model are listed (in module order), those without a
    mask as dense, so "total" is the density over all Conv2d/Linear weights, as papers report it; the
    BatchNorm and bias entries of completed channel masks are not weights of those layers and are left out.
    """
    counts = {name: (int(m.count_nonzero()), m.numel()) for name, m in masks.items()}
    if model is not None:
        check_masks(model, masks)
        counts = {name: counts.get(name, (w.numel(), w.numel())) for name, w in prunable_parameters(model).items()}
    kept = sum(k for k, _ in counts.values())
    total = sum(t for _, t in counts.values())
    return {"layers": {name: _row(k, t) for name, (k, t) in counts.items()}, "total": _row(kept, total)}


def overall_density(masks: Masks) -> float:
    """Fraction of the masked weights that are kept (1.0 for no masks)."""
    total = sum(m.numel() for m in masks.values())
    return sum(int(m.count_nonzero()) for m in masks.values()) / total if total else 1.0


def check_masks(model: nn.Module, masks: Masks) -> None:
    params = dict(model.named_parameters())
    unknown = [name for name in masks if name not in params]
    if unknown:
        raise TicketlabError(
            f"mask does not fit the model: it has no parameter {', '.join(unknown[:5])}; "
            "build masks from this model's parameter names (ticketlab.sparsity.select_prunable)"
        )
    for name, mask in masks.items():
        if tuple(mask.shape) != tuple(params[name].shape):
            raise TicketlabError(
                f"mask does not fit the model: mask of {name} has shape {tuple(mask.shape)} but the weight is "
                f"{tuple(params[name].shape)}; the masks were made for another architecture or width"
            )
        if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
            raise TicketlabError(
                f"mask of {name} holds values other than 0 and 1; a mask keeps (1) or prunes (0) each weight, "
                "and anything between would shrink the kept weights at every step: pass a boolean mask"
            )


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the pruned weights in place."""
    check_masks(model, masks)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        p = params[name]
        p.mul_(mask.to(device=p.device, dtype=p.dtype))


def save_masks(path: str | Path, masks: Masks) -> None:
    write_tensors(Path(path), {name: m.bool() for name, m in masks.items()})


def load_masks(path: str | Path, device: str | torch.device = "cpu") -> Masks:
    path = Path(path)
    if not path.is_file():
        raise TicketlabError(f"no mask file at {path}; give the path of a file written by save_masks")
    masks = read_tensors(path, device=device)
    wrong = [name for name, m in masks.items() if m.dtype != torch.bool]
    if wrong:
        raise TicketlabError(f"{path} is not a mask file: {wrong[0]} has dtype {masks[wrong[0]].dtype}, masks are bool")
    if masks and not any(bool(m.any()) for m in masks.values()):
        raise TicketlabError(f"the masks in {path} keep no weight at all, so the network could only output a "
                             "constant; prune to a higher density")
    return masks
