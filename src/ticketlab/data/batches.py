"""Seeded batching over data that already lives on the training device (no DataLoader workers).

The order and augmentation draws of epoch e are a pure function of (seed, e), so resuming at
any iteration reproduces the uninterrupted run's batches exactly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ticketlab.data.augment import Augment, Draws, draw, finish, normalize, shift_and_flip
from ticketlab.errors import TicketlabError


def steps_per_epoch(examples: int, batch_size: int, drop_last: bool = False) -> int:
    """Batches per epoch. By default the last, smaller batch is kept, so every example is seen every
    epoch (per-example records need it); `drop_last` uses full batches only, as airbench does."""
    return examples // batch_size if drop_last else -(-examples // batch_size)


def check_batch_size(batch_size: int, examples: int) -> None:
    if batch_size > examples:
        raise TicketlabError(f"--batch-size {batch_size} is larger than the {examples} training examples; "
                             f"pass --batch-size {examples} or less")


def stream_seed(*parts: object) -> int:
    """A 63-bit seed from named parts, so separate random streams never collide."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class Epoch:
    order: torch.Tensor  # a permutation of the training set, on the data's device
    draws: Draws  # augmentation choices, indexed by example
    labels: torch.Tensor  # the labels in `order`: a batch's are a slice, no gather
    images: torch.Tensor | None = None  # the shifted and flipped uint8 images, in `order`


class DeviceData:
    """Images as uint8 on the device, labels as int64; float batches are made on demand, in `dtype`
    (float64 lets a test compare two computations without fp32 rounding amplified by training)."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, mean, std, device: str | torch.device, augment: Augment,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.mean = torch.as_tensor(mean, dtype=dtype, device=self.device)
        self.std = torch.as_tensor(std, dtype=dtype, device=self.device)
        self._mean4, self._std4 = self.mean.view(1, -1, 1, 1), self.std.view(1, -1, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.y)

    def steps_per_epoch(self, batch_size: int, drop_last: bool = False) -> int:
        return steps_per_epoch(len(self), batch_size, drop_last)

    def epoch(self, seed: int, epoch: int) -> Epoch:
        g = torch.Generator().manual_seed(stream_seed("data", seed, epoch))
        order = torch.randperm(len(self), generator=g)
        _, _, h, w = self.x.shape
        first = torch.Generator().manual_seed(stream_seed("first-flips", seed))
        # drawn on the CPU (the same numbers on any device), then moved once: batches index them
        # on the device, with no per-step copy or host sync
        draws = draw(self.augment, len(self), h, w, g, epoch, first).to(self.device)
        order = order.to(self.device)
        # one pass over the epoch (a uint8 copy of the training set), so each step only slices it
        images = shift_and_flip(self.augment, self.x[order], draws.take(order)) if self.augment.active else None
        return Epoch(order, draws, self.y[order], images)

    def batch(self, ep: Epoch, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs, labels, example indices) of batch `step` of an epoch."""
        rows = slice(step * batch_size, (step + 1) * batch_size)
        idx = ep.order[rows]
        if ep.images is not None:
            cutout = ep.draws.take(idx) if self.augment.cutout > 0 else ep.draws
            inputs = finish(self.augment, ep.images[rows], cutout, self._mean4, self._std4)
        else:
            inputs = normalize(self.x[idx], self._mean4, self._std4)
        return inputs, ep.labels[rows], idx
