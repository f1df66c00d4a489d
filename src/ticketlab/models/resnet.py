"""Residual networks with BasicBlocks (He et al. 2016, "Deep Residual Learning").

Two published shapes share one implementation:
  * cifar_resnet_{20,32,56,110}: the paper's CIFAR-10 nets (Sec. 4.2), 16/32/64 channels and
    n = (depth - 2) / 6 blocks per stage. Where the shape changes the shortcut is a 1x1 conv + BN
    (option B), and the init is OpenLTH's (common.openlth_init_), as in OpenLTH, the framework most
    lottery-ticket results on CIFAR come from.
  * resnet18 / resnet34: the ImageNet widths and depths (64..512 channels, [2,2,2,2] / [3,4,6,3])
    with the usual CIFAR stem: one 3x3 stride-1 conv and no max-pool, since 32x32 inputs cannot
    afford the 4x downsampling of the ImageNet stem, and torchvision's init.

Attribute names (`stem`, `stages[i][j]` blocks with `conv1, bn1, conv2, bn2, shortcut`, `fc`) are
relied on by the code that compacts pruned channels.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn

from ticketlab.models.common import OwnInit, kaiming_init_, openlth_init_
from ticketlab.models.registry import register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU (He et al. 2016, Fig. 2 left)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(OwnInit):
    """3x3 conv stem, stages of BasicBlocks (stride 2 from the second stage on), global average
    pool, linear classifier."""

    def __init__(self, widths: Sequence[int], depths: Sequence[int], num_classes: int, in_channels: int,
                 init: Callable[[nn.Module], None] = kaiming_init_) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                bn=nn.BatchNorm2d(widths[0]),
                relu=nn.ReLU(),
            )
        )
        stages = []
        channels = widths[0]
        for index, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for block in range(depth):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        self.init_fn = init
        self.init_fn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))


# He et al. 2016, Sec. 4.2: SGD momentum 0.9, wd 1e-4, batch 128, lr 0.1 divided by 10 at 32k and
# 48k iterations (= epochs 80 and 120 of 391 steps), 64k iterations in all (~160 epochs).
CIFAR_RESNET_RECIPE = {
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 1e-4,
    "batch_size": 128,
    "epochs": 160,
    "schedule": "step",
    "milestones": (80, 120),
    "gamma": 0.1,
}

# The common CIFAR recipe for ImageNet-shaped ResNets: cosine decay over 200 epochs, wd 5e-4.
RESNET_RECIPE = {
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 5e-4,
    "batch_size": 128,
    "epochs": 200,
    "schedule": "cosine",
}


def _register_cifar_resnet(depth: int) -> None:
    blocks = (depth - 2) // 6

    # He et al. warm ResNet-110 up at lr 0.01 until its training error is below 80% (about 400
    # iterations), then use 0.1; one epoch rising linearly from 0.01 is the trainer's nearest schedule
    recipe = {**CIFAR_RESNET_RECIPE, "warmup_epochs": 1.0, "lr_start": 0.1} if depth >= 110 else CIFAR_RESNET_RECIPE

    # revision 1: OpenLTH's init (was torchvision's fan_out init with BatchNorm scales of 1)
    @register_model(f"cifar_resnet_{depth}", recipe, revision=1)
    def build(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return ResNet((16, 32, 64), (blocks,) * 3, num_classes, in_channels, init=openlth_init_)

    build.__doc__ = f"ResNet-{depth} for CIFAR (He et al. 2016): {blocks} blocks per stage, 16/32/64 channels."


for _depth in (20, 32, 56, 110):
    _register_cifar_resnet(_depth)


@register_model("resnet18", RESNET_RECIPE)
def resnet18(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """ResNet-18 (He et al. 2016, Table 1) with a CIFAR stem."""
    return ResNet((64, 128, 256, 512), (2, 2, 2, 2), num_classes, in_channels)


@register_model("resnet34", RESNET_RECIPE)
def resnet34(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """ResNet-34 (He et al. 2016, Table 1) with a CIFAR stem."""
    return ResNet((64, 128, 256, 512), (3, 4, 6, 3), num_classes, in_channels)
