"""Optimisers and learning-rate schedules as plain functions of the iteration.

The learning rate is set from `lr_factor(iteration)` before every step rather than by a stateful
scheduler, so a run resumed (or rewound, for lottery tickets) at iteration k gets exactly the
schedule of an uninterrupted run with nothing else to restore.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from ticketlab.config import TrainConfig


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov and cfg.momentum > 0,
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, iteration: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at `iteration` (0-based), warm-up included."""
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if iteration < warmup:
        return (iteration + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        epoch = iteration / steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    progress = (iteration - warmup) / max(1, total - warmup)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress  # "linear": decay to zero at the end of training
