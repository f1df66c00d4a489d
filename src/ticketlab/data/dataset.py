"""The in-memory form every dataset takes, whatever file format it came from.

Images stay uint8 (N, C, H, W) so a whole dataset fits in memory four times smaller
than float32; normalisation happens per batch, with the per-channel statistics
stored here so every run of the same data normalises identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ticketlab.errors import TicketlabError


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A train and a test split of uint8 images with int64 labels 0..K-1.

    Build it with :meth:`create`, which makes the tensors contiguous, computes
    ``mean``/``std`` from the training images and validates everything.
    ``mean`` and ``std`` are per-channel, on the 0..1 pixel scale, and come from
    the training split only, so no test (or held-out) image leaks into training.
    ``eq=False`` because comparing tensors element-wise has no single truth value.
    """

    name: str
    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def create(
        cls,
        name: str,
        train_x: torch.Tensor | np.ndarray,
        train_y: torch.Tensor | np.ndarray,
        test_x: torch.Tensor | np.ndarray,
        test_y: torch.Tensor | np.ndarray,
        classes: Sequence[str],
    ) -> ImageDataset:
        """Build a validated dataset; numpy arrays are accepted and labels widened to int64."""
        train_x, test_x = _as_tensor(train_x), _as_tensor(test_x)
        train_y, test_y = _as_labels(_as_tensor(train_y)), _as_labels(_as_tensor(test_y))
        if train_x.dtype != torch.uint8 or train_x.dim() != 4 or train_x.shape[0] == 0:
            # Checked before statistics are computed; validate() repeats it for direct construction.
            raise TicketlabError(_layout_problem(name, "train_x", train_x))
        mean, std = _channel_stats(train_x)
        dataset = cls(name, train_x, train_y, test_x, test_y, tuple(str(c) for c in classes), mean, std)
        dataset.validate()
        return dataset

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    @property
    def image_size(self) -> int:
        """Image height H; models that need non-square sizes should read :attr:`image_shape`."""
        return int(self.train_x.shape[2])

    def validate(self) -> None:
        """Raise TicketlabError unless shapes, dtypes, labels and statistics are consistent."""
        name = self.name
        if not self.classes:
            raise TicketlabError(f"dataset {name!r} has no class names; give at least one class")
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4 or x.shape[0] == 0:
                raise TicketlabError(_layout_problem(name, f"{split}_x", x))
            if not x.is_contiguous():
                raise TicketlabError(
                    f"dataset {name!r}: {split}_x is not contiguous; build it with ImageDataset.create"
                )
            if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
                got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
                raise TicketlabError(f"dataset {name!r}: {split}_y must be an int64 tensor of shape (N,), got {got}")
            if y.shape[0] != x.shape[0]:
                raise TicketlabError(
                    f"dataset {name!r}: {split} split has {x.shape[0]} images but {y.shape[0]} labels; "
                    "give one label per image"
                )
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= self.num_classes:
                raise TicketlabError(
                    f"dataset {name!r}: {split} labels range over {low}..{high} but there are "
                    f"{self.num_classes} classes; labels must be 0..{self.num_classes - 1}"
                )
        if self.test_x.shape[1:] != self.train_x.shape[1:]:
            raise TicketlabError(
                f"dataset {name!r}: test images are {tuple(self.test_x.shape[1:])} but train images are "
                f"{tuple(self.train_x.shape[1:])}; both splits need the same (C, H, W)"
            )
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise TicketlabError(
                f"dataset {name!r}: mean/std need one value per channel ({self.in_channels}); "
                "build the dataset with ImageDataset.create"
            )
        flat = [c for c, s in enumerate(self.std) if s == 0]
        if flat:
            raise TicketlabError(
                f"dataset {name!r}: every training pixel of channel {flat[0]} has the same value, so the images "
                "cannot be normalised (their std is 0); check that the images were read correctly"
            )


def _as_tensor(a: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        # torch cannot share a read-only buffer (e.g. from np.frombuffer) safely, so copy those.
        a = np.ascontiguousarray(a) if a.flags.writeable else np.array(a, order="C")
        return torch.from_numpy(a)
    return a.contiguous() if isinstance(a, torch.Tensor) else a


def _as_labels(y: torch.Tensor) -> torch.Tensor:
    """Widen integer labels to int64; anything else is left for validate() to reject."""
    if isinstance(y, torch.Tensor) and not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool:
        return y.to(torch.int64)
    return y


def _layout_problem(name: str, what: str, x: object) -> str:
    got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
    return f"dataset {name!r}: {what} must be a non-empty uint8 tensor of shape (N, C, H, W), got {got}"


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std on the 0..1 scale.

    Computed from a 256-bin histogram per channel: exact, fast, and no float copy of the images.
    """
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        mean = (counts * values).sum() / counts.sum()
        var = (counts * (values - mean) ** 2).sum() / counts.sum()
        means.append(float(mean) / 255)
        stds.append(float(var.sqrt()) / 255)
    return tuple(means), tuple(stds)
