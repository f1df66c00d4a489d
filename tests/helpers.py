"""Tiny synthetic data and models so trainer tests run in a second on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.data import ImageDataset
from ticketlab.train.hooks import Hook

# a device parameter: the CUDA case is marked gpu (skipped without one), the CPU case checks the test itself
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def tiny_dataset(
    n: int = 96, n_test: int = 40, channels: int = 3, size: int = 8, classes: int = 4, seed: int = 0
) -> ImageDataset:
    """Class-dependent colour blobs: learnable in a few steps, so accuracy tests can fail."""
    g = torch.Generator().manual_seed(seed)

    # class k lights up channel k (mod channels) and, past the first round, every channel a little
    colour = torch.full((classes, channels), 40.0)
    for k in range(classes):
        colour[k, k % channels] = 200.0
        colour[k] += 60.0 * (k // channels)

    def make(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(m) % classes
        x = colour[y].view(m, channels, 1, 1) + torch.randn(m, channels, size, size, generator=g) * 20
        return x.clamp(0, 255).to(torch.uint8), y

    x, y = make(n)
    xt, yt = make(n_test)
    return ImageDataset.create("tiny", x, y, xt, yt, tuple(str(i) for i in range(classes)))


class InterruptAt(Hook):
    """Stops training after `at` steps through the same path as Ctrl-C (resume tests)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def after_step(self, trainer, step) -> None:
        if trainer.iteration == self.at:
            trainer.interrupt()

    def identity(self) -> str:
        return ""  # an interruption changes no number: the resumed run is the same run


class TinyNet(nn.Module):
    """Conv + BN + Linear: enough to exercise masks, BN buffers and momentum."""

    def __init__(self, channels: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class UserResNet(nn.Module):
    """A user's residual net in functional style: in-place and operator additions, a scaled branch,
    a pre-activation BatchNorm, mean pooling and a flatten by view."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=True)
        self.bn0 = nn.BatchNorm2d(8)
        self.a1 = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.a_bn = nn.BatchNorm2d(12)
        self.a2 = nn.Conv2d(12, 8, 3, padding=1)
        self.pre = nn.BatchNorm2d(8)
        self.b1 = nn.Conv2d(8, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 16, 1, stride=2)
        self.c1 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head = nn.Conv2d(16, 6, 1)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        x = x + 0.5 * self.a2(F.relu(self.a_bn(self.a1(x))))
        x += self.b1(F.gelu(self.pre(x)))
        x = torch.relu(self.down(x) + self.c1(x))
        x = F.max_pool2d(F.relu(self.head(x)), 2)
        return self.fc(x.view(x.size(0), -1))


class InvertedResiduals(nn.Module):
    """MobileNetV2's blocks: 1x1 expansion, depthwise 3x3, 1x1 projection added to the stream."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.blocks = nn.ModuleList()
        for _ in range(2):
            self.blocks.append(nn.Sequential(
                nn.Conv2d(8, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU6(),
                nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False), nn.BatchNorm2d(24), nn.ReLU6(),
                nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8)))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.bn(self.stem(x))
        for block in self.blocks:
            x = x + block(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# the architectures compaction supports: name -> (build options, input batch shape); small inputs keep every case fast
COMPACTABLE = {
    "cifar_resnet_20": ({"in_channels": 3, "image_size": 32}, (2, 3, 16, 16)),
    "resnet18": ({"in_channels": 3, "image_size": 32}, (2, 3, 32, 32)),
    "cifar_vgg_11": ({"in_channels": 3, "image_size": 32}, (2, 3, 32, 32)),
    "fastnet": ({"in_channels": 3, "image_size": 16, "widths": (8, 16, 16)}, (2, 3, 16, 16)),
    "lenet_300_100": ({"in_channels": 1, "image_size": 28}, (2, 1, 28, 28)),
    # pre-activation WRN (its dropout acts only in training) and Conv-2/4/6, whose last conv is flattened
    # into fc1 (Conv-6 at 8x8 pools down to 1x1, so there each channel is one column)
    "wide_resnet_16_4": ({"in_channels": 3, "image_size": 32, "dropout": 0.3}, (2, 3, 16, 16)),
    "conv_2": ({"in_channels": 3, "image_size": 16}, (2, 3, 16, 16)),
    "conv_4": ({"in_channels": 3, "image_size": 16}, (2, 3, 16, 16)),
    "conv_6": ({"in_channels": 3, "image_size": 8}, (2, 3, 8, 8)),
}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """`ticketlab ARGV` in this process: (exit code, stdout, stderr)."""
    from ticketlab.cli.main import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
