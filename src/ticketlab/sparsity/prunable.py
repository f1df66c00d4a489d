"""The prunable tensors of a model: Conv2d and Linear weights, never biases or BatchNorm.

This is the convention of the lottery-ticket literature (methods.md section 1); it applies to
any `nn.Module`, including users' own, without subclassing.
"""

from __future__ import annotations

import torch
from torch import nn


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> weight of every Conv2d and Linear layer, in module order."""
    return {
        f"{name}.weight" if name else "weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    }


def density(model: nn.Module) -> float:
    """Fraction of prunable weights that are nonzero (1.0 for a dense model)."""
    weights = list(prunable_parameters(model).values())
    total = sum(w.numel() for w in weights)
    if total == 0:
        return 1.0
    with torch.no_grad():
        return sum(int(torch.count_nonzero(w)) for w in weights) / total
