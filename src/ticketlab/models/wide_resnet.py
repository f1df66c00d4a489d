"""Wide residual networks (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

WRN-d-k: a 3x3 conv to 16 channels, then three stages of n = (d - 4) / 6 pre-activation blocks
(BN-ReLU-conv3x3, BN-ReLU-[dropout]-conv3x3) with 16k, 32k, 64k channels and strides 1, 2, 2;
where the shape changes the shortcut is a 1x1 conv on the pre-activated input, as in the authors'
code. A final BN-ReLU, global average pool and linear layer close the net.
"""

from __future__ import annotations

import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.models.common import OwnInit, kaiming_init_
from ticketlab.models.registry import register_model


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016b, "Identity Mappings"), widened, with the WRN
    paper's dropout between the two convs."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv1(activated)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        # A projection sees the activated input; the identity passes x itself (authors' code).
        shortcut = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(activated)
        return out + shortcut


class WideResNet(OwnInit):
    """WRN-depth-widen: `stem` conv, `stages[i][j]` PreActBlocks, final `bn`/`relu`, pool, `fc`."""

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int, dropout: float) -> None:
        super().__init__()
        blocks = (depth - 4) // 6
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        stages = []
        channels = 16
        for index, width in enumerate((16 * widen, 32 * widen, 64 * widen)):
            stage = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                stage.append(PreActBlock(channels, width, stride, dropout))
                channels = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        self.init_fn = kaiming_init_
        self.init_fn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn(self.stages(self.stem(x))))
        return self.fc(self.flatten(self.pool(out)))


# Zagoruyko & Komodakis 2016, Sec. 3: SGD with Nesterov momentum 0.9, wd 5e-4, batch 128,
# lr 0.1 multiplied by 0.2 at epochs 60, 120 and 160, 200 epochs in all.
WRN_RECIPE = {
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "batch_size": 128,
    "epochs": 200,
    "schedule": "step",
    "milestones": (60, 120, 160),
    "gamma": 0.2,
}


def _check_dropout(dropout: float) -> None:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise TicketlabError(f"dropout must be in [0, 1), got {dropout!r} (the WRN paper uses 0.3 when it uses any)")


@register_model("wide_resnet_16_4", WRN_RECIPE)
def wide_resnet_16_4(num_classes: int, in_channels: int, image_size: int, dropout: float = 0.0) -> nn.Module:
    """WRN-16-4: 2 blocks per stage, 64/128/256 channels (~2.7M parameters)."""
    _check_dropout(dropout)
    return WideResNet(16, 4, num_classes, in_channels, dropout)


@register_model("wide_resnet_28_10", WRN_RECIPE)
def wide_resnet_28_10(num_classes: int, in_channels: int, image_size: int, dropout: float = 0.0) -> nn.Module:
    """WRN-28-10: 4 blocks per stage, 160/320/640 channels (~36.5M parameters)."""
    _check_dropout(dropout)
    return WideResNet(28, 10, num_classes, in_channels, dropout)
