"""Networks written as a user would write them, registered nowhere: what `ticketlab.compact` must
handle from their torch.fx graphs alone (benchmarks/structured_speed.py --models user_mobilenet_v2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InvertedResidual(nn.Module):
    """MobileNetV2's block (Sandler et al. 2018): 1x1 expansion, depthwise 3x3, linear 1x1 projection."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.expand = nn.Conv2d(cin, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self.bn1(self.expand(x)))
        out = F.relu6(self.bn2(self.depthwise(out)))
        out = self.bn3(self.project(out))
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 images: the ImageNet stages with the first two strides set to 1."""

    STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))  # (expansion, output channels, blocks, first stride)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(32)
        blocks, cin = [], 32
        for expansion, cout, count, stride in self.STAGES:
            for i in range(count):
                blocks.append(InvertedResidual(cin, cout, expansion, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(cin, 1280, 1, bias=False)
        self.bn_head = nn.BatchNorm2d(1280)
        self.fc = nn.Linear(1280, num_classes)
        for module in self.modules():  # the usual MobileNetV2 init; PyTorch's default fades out over 50 layers
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu6(self.bn(self.stem(x))))
        out = F.relu6(self.bn_head(self.head(out)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


USER_MODELS = {"user_mobilenet_v2": MobileNetV2}
