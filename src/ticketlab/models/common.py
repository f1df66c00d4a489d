"""Small helpers shared by several model families."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ticketlab.errors import TicketlabError


def kaiming_init_(model: nn.Module) -> None:
    """He et al. 2015 init as torchvision's ResNets and the WRN reference code use it: conv weights
    Kaiming normal (fan_out, ReLU gain), BatchNorm weight 1 and bias 0; linear layers keep PyTorch's
    default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def openlth_init_(model: nn.Module) -> None:
    """OpenLTH's init for its CIFAR ResNets and VGGs (model_init='kaiming_normal',
    batchnorm_init='uniform'), whose lottery-ticket results these nets are compared with: Conv2d and
    Linear weights Kaiming normal with fan_in and ReLU gain, BatchNorm scales U(0, 1) and shifts 0;
    biases keep PyTorch's default. Global magnitude pruning ranks weights across layers, so each
    layer's starting scale decides what IMP removes."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight)
            nn.init.zeros_(module.bias)


def glorot_init_(model: nn.Module) -> None:
    """Gaussian Glorot init, which Frankle & Carbin (2019) use for LeNet and the Conv-2/4/6 nets."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class OwnInit(nn.Module):
    """A zoo net whose `reset_parameters` draws its own init (`init_fn`) afresh, not only PyTorch's layer
    defaults: ticketlab re-initialises a module handed in (other seeds, the re-init baseline) through it."""

    init_fn: Callable[[nn.Module], None]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()  # what the init below leaves alone (biases) is drawn afresh too
        self.init_fn(self)


def require_image_size(model: str, image_size: int, minimum: int, reason: str,
                       instead: str = "pick a model with less downsampling (e.g. cifar_resnet_20)") -> None:
    """Fail early, with the fix, when pooling would shrink the feature maps to nothing."""
    if image_size < minimum:
        raise TicketlabError(
            f"{model} needs image_size >= {minimum} ({reason}), got {image_size}; "
            f"pad or resize the images to at least {minimum}x{minimum}, or {instead}"
        )
