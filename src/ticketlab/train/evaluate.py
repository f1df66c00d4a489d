"""Accuracy and loss on a held-out set, optionally with flip/shift test-time augmentation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.data.augment import normalize, translate


def eval_batch_size(device: torch.device) -> int:
    """Large batches feed a GPU; on the CPU they spill out of cache: ResNet-20 evaluates 1.8x
    faster in batches of 128 than of 1000 on 2 cores (BENCHMARKS.md)."""
    return 1000 if device.type == "cuda" else 128


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then every submodule's own mode back: `model.train(was_training)`
    would also switch on a BatchNorm the user froze in eval mode."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def _views(x: torch.Tensor, tta: str) -> list[tuple[float, torch.Tensor]]:
    """(weight, uint8 view) pairs whose weighted logits are averaged.

    flip_shift follows airbench: half the weight on the image and its mirror, half on the two
    one-pixel diagonal shifts of the image (reflect-padded) and the mirrors of those.
    """
    if tta == "none":
        return [(1.0, x)]
    flipped = x.flip(3)
    if tta == "flip":
        return [(0.5, x), (0.5, flipped)]
    views = [(0.25, x), (0.25, flipped)]
    n = len(x)
    for d in (-1, 1):
        shift = torch.full((n,), d, device=x.device)
        shifted = translate(x, shift, shift, 1, reflect=True)
        views += [(0.125, shifted), (0.125, shifted.flip(3))]
    return views


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    batch_size: int | None = None,
    tta: str = "none",
    autocast: contextlib.AbstractContextManager | None = None,
    channels_last: bool = False,
    output_classes: int | None = None,
) -> dict[str, float]:
    """Top-1 accuracy (a fraction) and mean cross-entropy of uint8 images `x` on `model`'s device.

    For stacked networks (logits [K, B, C]) these are the means over the K networks, and
    `accuracies` / `losses` list each network's.
    """
    device = mean.device
    batch_size = batch_size or eval_batch_size(device)
    correct, loss_sum = 0, 0
    stacked = False
    with eval_mode(model):
        for i in range(0, len(y), batch_size):
            xb = x[i : i + batch_size].to(device, non_blocking=True)
            yb = y[i : i + batch_size].to(device, non_blocking=True)
            logits = 0
            for weight, view in _views(xb, tta):
                inputs = normalize(view, mean, std)
                if channels_last:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                with autocast or contextlib.nullcontext():
                    logits = logits + weight * model(inputs).float()[..., :output_classes]
            stacked = logits.dim() == 3
            per_model = logits if stacked else logits[None]  # [K, B, C]
            correct = correct + (per_model.argmax(-1) == yb).sum(-1)
            loss_sum = loss_sum + F.cross_entropy(
                per_model.permute(0, 2, 1), yb.expand(len(per_model), -1), reduction="none").sum(-1)
    n = max(1, len(y))
    accuracies = (torch.as_tensor(correct, dtype=torch.float64) / n).reshape(-1).tolist()
    losses = (torch.as_tensor(loss_sum, dtype=torch.float64) / n).reshape(-1).tolist()
    out = {"accuracy": sum(accuracies) / len(accuracies), "loss": sum(losses) / len(losses)}
    if stacked:
        out.update(accuracies=accuracies, losses=losses)
    return out


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, mean, std, batch_size: int | None = None,
            tta: str = "none") -> torch.Tensor:
    """Float logits (on the CPU) of uint8 images in eval mode on the model's device, with `evaluate`'s
    test-time augmentation (none: the images as they are)."""
    device = next(model.parameters()).device
    batch_size = batch_size or eval_batch_size(device)
    m = torch.as_tensor(mean, dtype=torch.float32, device=device)
    s = torch.as_tensor(std, dtype=torch.float32, device=device)
    out = []
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            views = _views(x[i:i + batch_size].to(device), tta)
            out.append(sum(weight * model(normalize(view, m, s)).float() for weight, view in views).cpu())
    return torch.cat(out) if out else torch.zeros(0)
