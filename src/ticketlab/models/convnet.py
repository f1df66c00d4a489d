"""Conv-2, Conv-4 and Conv-6 (Frankle & Carbin 2019, Fig. 2): scaled-down VGG-style nets.

Pairs of 3x3/pad-1 convs with ReLU (no BatchNorm), each pair followed by a 2x2 max-pool, with
64, 128, 256 channels for the first, second, third pair; then fully connected 256, 256, classes.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ticketlab.models.common import OwnInit, glorot_init_, require_image_size
from ticketlab.models.registry import register_model


class ConvNet(OwnInit):
    """`features` (conv1, relu1, conv2, relu2, pool1, ...), `hidden` (fc1, relu1, fc2, relu2), `fc`."""

    def __init__(self, pairs: int, num_classes: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels, size = in_channels, image_size
        for pair in range(pairs):
            width = 64 * 2**pair
            for conv in (2 * pair + 1, 2 * pair + 2):
                layers[f"conv{conv}"] = nn.Conv2d(channels, width, 3, padding=1)
                layers[f"relu{conv}"] = nn.ReLU()
                channels = width
            layers[f"pool{pair + 1}"] = nn.MaxPool2d(2)
            size //= 2
        self.features = nn.Sequential(layers)
        self.flatten = nn.Flatten()
        self.hidden = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(channels * size * size, 256),
                relu1=nn.ReLU(),
                fc2=nn.Linear(256, 256),
                relu2=nn.ReLU(),
            )
        )
        self.fc = nn.Linear(256, num_classes)
        self.init_fn = glorot_init_
        self.init_fn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.flatten(self.features(x))))


def _register_convnet(convs: int, lr: float) -> None:
    pairs = convs // 2
    recipe = {
        "optimizer": "adam",
        "lr": lr,
        "batch_size": 60,
        "epochs": 20,
        "schedule": "constant",
        "weight_decay": 0.0,
    }

    @register_model(f"conv_{convs}", recipe)
    def build(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        require_image_size(f"conv_{convs}", image_size, 2**pairs, f"it halves the image {pairs} times")
        return ConvNet(pairs, num_classes, in_channels, image_size)

    build.__doc__ = f"Conv-{convs} of Frankle & Carbin 2019."


# Adam learning rates from Frankle & Carbin 2019, Fig. 2 (they train 20k/25k/30k iterations of
# batch 60, i.e. 24-36 CIFAR-10 epochs; 20 epochs is our cheaper default).
for _convs, _lr in ((2, 2e-4), (4, 3e-4), (6, 3e-4)):
    _register_convnet(_convs, _lr)
