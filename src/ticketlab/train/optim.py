"""Optimisers and learning-rate schedules as plain functions of the iteration.

The learning rate is set from `lr_factor(iteration)` before every step rather than by a stateful
scheduler, so a run resumed (or rewound, for lottery tickets) at iteration k gets exactly the
schedule of an uninterrupted run with nothing else to restore.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ticketlab.config import TrainConfig

# Layers whose bias is a learned shift of normalised activations (`bias_lr_scale` applies to these).
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def norm_biases(model: nn.Module) -> set[nn.Parameter]:
    return {
        m.bias for m in model.modules()
        if isinstance(m, NORM_LAYERS) and isinstance(getattr(m, "bias", None), nn.Parameter)
    }


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """One parameter group, or two when `bias_lr_scale` != 1.

    The fast CIFAR recipe trains BatchNorm biases with a 64x larger lr but the same decay per
    step, so their group divides weight decay by the scale. Each group's `lr_scale` multiplies
    the scheduled lr (the trainer sets every group's lr before each step).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": params, "lr_scale": 1.0, "weight_decay": cfg.weight_decay}]
    if cfg.bias_lr_scale != 1.0:
        biases = norm_biases(model)
        scaled = [p for p in params if p in biases]
        groups = [
            {"params": [p for p in params if p not in biases], "lr_scale": 1.0, "weight_decay": cfg.weight_decay},
            {"params": scaled, "lr_scale": cfg.bias_lr_scale, "weight_decay": cfg.weight_decay / cfg.bias_lr_scale},
        ]
        groups = [g for g in groups if g["params"]]
    # On a GPU the fused kernels update every tensor of a group in one launch: the fast recipe's
    # step is bound by the host issuing kernels, and fused SGD ran its run 11% faster (BENCHMARKS.md).
    fused = fused_on(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               fused=fused)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, fused=fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


def fused_on(params: list[torch.Tensor]) -> bool | None:
    """Fused updates for parameters that all live on a CUDA device; torch's default elsewhere."""
    return True if params and all(p.is_cuda for p in params) else None


def lr_factor(cfg: TrainConfig, iteration: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at `iteration` (0-based), warm-up included.

    Warm-up rises linearly from `lr_start` to 1; cosine and linear decay fall from 1 to `lr_end`
    (airbench's triangle is warm-up 0.2 -> 1 over 23% of training, then linear to 0.07).
    """
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if iteration < warmup:
        return cfg.lr_start + (1.0 - cfg.lr_start) * (iteration + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        epoch = iteration / steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    progress = (iteration - warmup) / max(1, total - warmup)
    if cfg.schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:  # "linear"
        shape = 1.0 - progress
    return cfg.lr_end + (1.0 - cfg.lr_end) * shape
