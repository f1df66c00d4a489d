"""LeNet-300-100 (LeCun et al. 1998), the fully connected MNIST net of the lottery-ticket paper."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ticketlab.models.common import OwnInit, glorot_init_
from ticketlab.models.registry import register_model


class LeNet300100(OwnInit):
    """Flatten -> 300 -> ReLU -> 100 -> ReLU -> classes; `hidden` holds fc1/fc2, `fc` the output."""

    def __init__(self, num_classes: int, in_features: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.hidden = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(in_features, 300),
                relu1=nn.ReLU(),
                fc2=nn.Linear(300, 100),
                relu2=nn.ReLU(),
            )
        )
        self.fc = nn.Linear(100, num_classes)
        self.init_fn = glorot_init_
        self.init_fn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.flatten(x)))


# Frankle & Carbin 2019, Fig. 2: Adam, lr 1.2e-3, batch 60 (they run 50k iterations, ~60 epochs;
# 10 epochs is enough for LeNet to converge and keeps iterative pruning affordable).
@register_model(
    "lenet_300_100",
    {"optimizer": "adam", "lr": 1.2e-3, "batch_size": 60, "epochs": 10, "schedule": "constant", "weight_decay": 0.0},
)
def lenet_300_100(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """LeNet-300-100 on flattened in_channels x image_size x image_size inputs."""
    return LeNet300100(num_classes, in_channels * image_size * image_size)
