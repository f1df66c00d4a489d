"""VGG with BatchNorm for CIFAR (Simonyan & Zisserman 2015, configs A/B/D/E = VGG-11/13/16/19).

Each conv is 3x3/pad 1 -> BN -> ReLU (BN after Ioffe & Szegedy 2015, which lets these deep plain
nets train without the paper's staged init). As in OpenLTH, whose lottery-ticket results these nets
are compared with: four max-pools, not the ImageNet plan's five (the last stage runs at 2x2 on CIFAR),
then an average pool and one linear layer 512 -> classes instead of the three large ImageNet fully
connected layers, and OpenLTH's init (common.openlth_init_). Conv biases are dropped: the BN that
follows cancels them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from ticketlab.models.common import OwnInit, openlth_init_, require_image_size
from ticketlab.models.registry import register_model
from ticketlab.models.resnet import CIFAR_RESNET_RECIPE

POOL = "M"

# Simonyan & Zisserman 2015, Table 1 (numbers are output channels, "M" a 2x2 max-pool), without the
# last max-pool, as OpenLTH's plans: its average pool takes the mean of the final 2x2 map, not the max.
CONFIGS: dict[int, tuple[int | str, ...]] = {
    11: (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512),
    13: (64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512),
    16: (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512),
    19: (
        64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL,
        512, 512, 512, 512, POOL, 512, 512, 512, 512,
    ),
}  # fmt: skip


class VGG(OwnInit):
    """`features` (conv-BN-ReLU and max-pools, named conv1, bn1, relu1, pool1, ...), global
    average pool, `fc`."""

    def __init__(self, config: Sequence[int | str], num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels, convs, pools = in_channels, 0, 0
        for item in config:
            if item == POOL:
                pools += 1
                layers[f"pool{pools}"] = nn.MaxPool2d(2)
            else:
                convs += 1
                layers[f"conv{convs}"] = nn.Conv2d(channels, int(item), 3, padding=1, bias=False)
                layers[f"bn{convs}"] = nn.BatchNorm2d(int(item))
                layers[f"relu{convs}"] = nn.ReLU()
                channels = int(item)
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        # with torchvision's fan_out init and BN scales of 1, VGG-16 at lr 0.1 blew up in its first steps and
        # stayed at chance; with OpenLTH's init it learns fastest (BENCHMARKS.md, "starts learning")
        self.init_fn = openlth_init_
        self.init_fn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


def _register_vgg(depth: int) -> None:
    config = CONFIGS[depth]
    pools = config.count(POOL)

    # OpenLTH trains its CIFAR VGGs with the ResNet-20 recipe. Revision 1: OpenLTH's four max-pools (was
    # five, so the head took the max of the last 2x2 map) and its fan_in init of every conv and the fc.
    @register_model(f"cifar_vgg_{depth}", CIFAR_RESNET_RECIPE, revision=1)
    def build(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        require_image_size(f"cifar_vgg_{depth}", image_size, 2**pools, f"it halves the image {pools} times")
        return VGG(config, num_classes, in_channels)

    build.__doc__ = f"VGG-{depth} with BatchNorm and a one-layer CIFAR head."


for _depth in CONFIGS:
    _register_vgg(_depth)
