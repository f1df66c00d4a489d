"""Augmentation as batched tensor ops on uint8 images, on whatever device holds the data.

Random draws are made once per epoch for every example (`draw`). Shifts and flips are applied to
the whole epoch at once (`shift_and_flip`, uint8), so a training step only slices, normalises and,
with cutout, masks its batch (`finish`): a few kernels per step rather than a few dozen, which is
what a fast GPU step waits on. The draws depend only on (seed, epoch), so a run resumed mid-epoch
sees exactly the augmentations of an uninterrupted one, and no per-worker RNG exists to save.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    crop_padding: int = 0  # random translation by up to this many pixels, zero fill (standard CIFAR crop)
    flip: bool = False  # horizontal flip with probability 1/2
    cutout: int = 0  # side of a square zeroed (in normalised space, i.e. set to the mean) per image
    reflect: bool = False  # translation fills with the mirror image instead of zeros (airbench)
    alternate_flip: bool = False  # odd epochs flip every image the other way from its first draw (airbench)

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip or self.cutout > 0


@dataclass(frozen=True)
class Draws:
    """Per-example random choices for one epoch, indexed like the training set."""

    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor
    cy: torch.Tensor
    cx: torch.Tensor

    def take(self, index: torch.Tensor) -> "Draws":
        return Draws(self.dy[index], self.dx[index], self.flip[index], self.cy[index], self.cx[index])

    def to(self, device: torch.device) -> "Draws":
        return Draws(*(t.to(device) for t in (self.dy, self.dx, self.flip, self.cy, self.cx)))


def draw(aug: Augment, n: int, height: int, width: int, generator: torch.Generator, epoch: int = 0,
         first: torch.Generator | None = None) -> Draws:
    """`generator` draws this epoch's choices; with `alternate_flip`, `first` draws the flips of
    epoch 0 that odd epochs invert, so every image is seen both ways every two epochs."""
    p = aug.crop_padding
    dy = torch.randint(-p, p + 1, (n,), generator=generator)
    dx = torch.randint(-p, p + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5 if aug.flip else torch.zeros(n, dtype=torch.bool)
    if aug.flip and aug.alternate_flip:
        if first is None:
            raise ValueError("alternate_flip needs the generator of the first epoch's flips")
        flip = (torch.rand(n, generator=first) < 0.5) ^ bool(epoch % 2)
    cy = torch.randint(0, height, (n,), generator=generator)
    cx = torch.randint(0, width, (n,), generator=generator)
    return Draws(dy, dx, flip, cy, cx)


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, padding: int, reflect: bool = False) -> torch.Tensor:
    """out[b, :, i, j] = x[b, :, i + dy[b], j + dx[b]]: a random crop of the image padded by
    `padding`, with zeros or (`reflect`) its mirror image across the border."""
    b, _, h, w = x.shape
    rows = dy.unsqueeze(1) + torch.arange(h, device=x.device)
    cols = dx.unsqueeze(1) + torch.arange(w, device=x.device)
    if reflect:
        source, rows, cols = x, _mirror(rows, h), _mirror(cols, w)
    else:
        source, rows, cols = F.pad(x, (padding, padding, padding, padding)), rows + padding, cols + padding
    batch = torch.arange(b, device=x.device)[:, None, None]
    # advanced indices split by a slice put the indexed dims first: [B, H, W, C]
    return source[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _mirror(index: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect out-of-range indices back inside (edge pixel not repeated, like F.pad 'reflect')."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def cutout_mask(shape: torch.Size, cy: torch.Tensor, cx: torch.Tensor, size: int, device) -> torch.Tensor:
    """1 where pixels are kept, 0 inside a size x size square centred at (cy, cx), clipped at borders."""
    _, _, h, w = shape
    ys = torch.arange(h, device=device)[None, :]
    xs = torch.arange(w, device=device)[None, :]
    half = size // 2
    in_y = (ys >= (cy[:, None] - half)) & (ys < (cy[:, None] - half + size))
    in_x = (xs >= (cx[:, None] - half)) & (xs < (cx[:, None] - half + size))
    return ~(in_y[:, :, None] & in_x[:, None, :])[:, None]


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] -> floats of mean's dtype, per-channel standardised (mean/std on the 0..1 scale,
    of shape [C] or already [1, C, 1, 1], which spares a training step two operations)."""
    if mean.dim() == 1:
        mean, std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    return (x.to(mean.dtype) / 255.0 - mean) / std


def shift_and_flip(aug: Augment, x: torch.Tensor, d: Draws) -> torch.Tensor:
    """The uint8 images `x` shifted and flipped, row i by draw i of `d`."""
    if aug.crop_padding > 0:
        x = translate(x, d.dy, d.dx, aug.crop_padding, aug.reflect)
    if aug.flip:
        x = torch.where(d.flip[:, None, None, None], x.flip(3), x)
    return x


def finish(aug: Augment, x: torch.Tensor, d: Draws, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A shifted and flipped uint8 batch, normalised, with its cutout squares (in normalised space)."""
    out = normalize(x, mean, std)
    if aug.cutout > 0:
        out = out * cutout_mask(out.shape, d.cy, d.cx, aug.cutout, x.device)
    return out
