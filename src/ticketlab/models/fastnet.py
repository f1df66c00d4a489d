"""The fast residual-free CIFAR-10 network of the airbench family (Jordan 2024, "94% on CIFAR-10
in 3.29 Seconds on a Single GPU"; after Page's and tysam-code's speed-run nets).

A frozen 2x2 "whitening" conv initialised from the data's patch covariance, GELU, then groups of
conv3x3 -> max-pool -> BN -> GELU (-> conv3x3 -> BN -> GELU)*, a global max-pool, and a bias-free
linear head whose output is scaled down (by 1/9) so the initial logits are small. The group convs
start as partial identities (dirac), an implicit residual for a net without skips; the whitening
bias trains for the first 3 epochs only.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.models.common import OwnInit, require_image_size
from ticketlab.models.registry import register_model

# Added to the eigenvalues before dividing by their square root, so that directions of
# near-zero variance are not blown up (airbench's value, for normalised CIFAR images).
WHITEN_EPS = 5e-4
# airbench calls its BN momentum 0.6 in the "fraction of the old statistics kept" convention and
# passes 1 - 0.6 to PyTorch, whose momentum is the weight of the new batch: 0.4 here.
BN_MOMENTUM = 0.4
BN_EPS = 1e-12
# Images are read in 2x2 patches by the whitening conv.
PATCH = 2
# airbench trains the whitening bias for this many epochs, then freezes it (saves its backward).
WHITEN_BIAS_EPOCHS = 3


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    """BN with a fast-moving running average and a frozen scale of 1 (only the shift trains),
    as in airbench: with the next conv's weights free, a learned scale adds nothing."""
    norm = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    norm.weight.requires_grad_(False)
    return norm


@torch.no_grad()
def _fastnet_init_(model: nn.Module) -> None:
    """On top of PyTorch's layer defaults: the whitening bias at zero (as airbench: only the data-fitted filters
    shape the first layer), and each group conv's first `in_channels` filters passing their input channel
    through (dirac)."""
    nn.init.zeros_(model.whiten.bias)
    for module in model.groups.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.dirac_(module.weight[:module.in_channels])


class ConvGroup(nn.Sequential):
    """conv1 -> pool -> bn1 -> act1, then (convK -> bnK -> actK) for K = 2..convs."""

    def __init__(self, in_channels: int, out_channels: int, convs: int) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for k in range(1, convs + 1):
            source = in_channels if k == 1 else out_channels
            layers[f"conv{k}"] = nn.Conv2d(source, out_channels, 3, padding=1, bias=False)
            if k == 1:
                layers["pool"] = nn.MaxPool2d(2)
            layers[f"bn{k}"] = _batch_norm(out_channels)
            layers[f"act{k}"] = nn.GELU()
        super().__init__(layers)


class FastNet(OwnInit):
    """`whiten` conv + `act`, `groups` of ConvGroups, global max `pool` (over the `final_size` map the
    groups leave), `fc` times `head_scale`."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        whiten_width: int,
        widths: Sequence[int],
        convs_per_group: int,
        head_scale: float,
        final_size: int,
    ) -> None:
        super().__init__()
        self.whiten = nn.Conv2d(in_channels, whiten_width, PATCH, padding=0, bias=True)
        self.act = nn.GELU()
        groups = []
        channels = whiten_width
        for width in widths:
            groups.append(ConvGroup(channels, width, convs_per_group))
            channels = width
        self.groups = nn.Sequential(*groups)
        # The global max-pool as one plain max-pool window over the final map (3x3 for CIFAR), as
        # airbench does: the same values and gradients as nn.AdaptiveMaxPool2d(1), whose CUDA kernels
        # (an atomic backward) took 7% of the GPU time of a fastnet run (BENCHMARKS.md).
        self.pool = nn.MaxPool2d(final_size)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes, bias=False)
        self.head_scale = head_scale
        self.init_fn = _fastnet_init_
        self.init_fn(self)

    def training_hooks(self) -> list:
        """Hooks the trainer adds to any run of this model."""
        from ticketlab.train.hooks import FreezeAfter  # the train package imports the model zoo

        return [FreezeAfter([self.whiten.bias], WHITEN_BIAS_EPOCHS)]

    @property
    def needs_data_init(self) -> bool:
        """True until `initialize_from_data` has fitted (and frozen) the whitening filters."""
        return self.whiten.weight.requires_grad

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Fresh draws of the constructor's random init (a re-initialised baseline, another seed of a user's
        fastnet); whitening filters fitted to data are data, not init, and stay."""
        fitted = None if self.needs_data_init else self.whiten.weight.clone()
        super().reset_parameters()
        if fitted is not None:
            self.whiten.weight.copy_(fitted)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.groups(self.act(self.whiten(x)))
        return self.fc(self.flatten(self.pool(out))) * self.head_scale

    @torch.no_grad()
    def initialize_from_data(self, x: torch.Tensor) -> None:
        """Set the whitening filters from a normalised batch of training images [N, C, H, W]
        (a few thousand suffice) and freeze them.

        With Sigma = V diag(lambda) V^T the second-moment matrix of all 2x2 patches (not centred, as
        in airbench: the images are normalised already), filter k is
        V_k / sqrt(lambda_k + eps) (largest lambda first), so the first C*4 output channels are
        decorrelated with unit variance; the other C*4 are their negatives, letting the GELU
        keep both signs of each whitened component.
        """
        channels = self.whiten.in_channels
        dims = channels * PATCH * PATCH
        if x.ndim != 4 or x.shape[1] != channels or not x.is_floating_point():
            raise TicketlabError(
                f"initialize_from_data needs a float batch of shape [N, {channels}, H, W], "
                f"got {x.dtype} {tuple(x.shape)}; pass normalised training images"
            )
        patches_per_image = (x.shape[2] - PATCH + 1) * (x.shape[3] - PATCH + 1)
        if x.shape[2] < PATCH or x.shape[3] < PATCH or x.shape[0] * patches_per_image <= dims:
            raise TicketlabError(
                f"initialize_from_data needs more than {dims} 2x2 patches to estimate their covariance, "
                f"got images of shape {tuple(x.shape)}; pass a few thousand training images"
            )
        # Each image's patches as columns [C*2*2, (H-1)*(W-1)], flattened like the conv weight (im2col),
        # its second moments summed in float32, the images' sums in float64: a few thousand images
        # give millions of patches, and no copy of all of them is made.
        x = x.detach().float()
        outer = torch.zeros(dims, dims, dtype=torch.float64, device=x.device)
        for chunk in x.split(256):
            patches = torch.nn.functional.unfold(chunk, PATCH)
            outer += torch.bmm(patches, patches.transpose(1, 2)).sum(0, dtype=torch.float64)
        count = x.shape[0] * patches_per_image
        outer = outer.cpu()
        eigenvalues, eigenvectors = torch.linalg.eigh(outer / count)  # ascending order
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
        filters = (eigenvectors / torch.sqrt(eigenvalues.clamp(min=0) + WHITEN_EPS)).T
        filters = filters.reshape(dims, channels, PATCH, PATCH)
        weight = self.whiten.weight
        weight.copy_(torch.cat([filters, -filters]).to(weight.device, weight.dtype))
        weight.requires_grad_(False)


# airbench94's hyperparameters (lr 11.5 and wd 0.0153 "per 1024 examples" on a summed loss,
# Nesterov momentum 0.85) converted to plain torch SGD on a mean loss: lr = 11.5 / (1 + 1 / (1 -
# 0.85)) = 1.5, weight_decay = 0.0153 / 11.5 = 1.33e-3. Its triangular schedule: warm-up from 0.2
# of the lr to all of it over 23% of training, then linear decay to 0.07. BatchNorm biases train
# with a 64x lr at the same decay per step; lookahead every 5 steps. Full batches only, as in
# airbench: 10 epochs of 48 steps here (480), against airbench's ceil(9.9 * 48) = 476.
FASTNET_RECIPE = {
    "optimizer": "sgd",
    "lr": 1.5,
    "momentum": 0.85,
    "nesterov": True,
    "weight_decay": 1.33e-3,
    "batch_size": 1024,
    "drop_last": True,
    "epochs": 10,
    "schedule": "linear",
    "warmup_epochs": 2.3,
    "lr_start": 0.2,
    "lr_end": 0.07,
    "bias_lr_scale": 64.0,
    "lookahead_every": 5,
    "label_smoothing": 0.2,
    "ema_decay": 0.0,
    "tta": "flip_shift",
}
# airbench's augmentation: translate by up to 2 pixels with reflect padding, and flips that
# alternate by epoch (random in epoch 0, every image mirrored relative to that in odd epochs).
FASTNET_AUGMENT = {"crop_padding": 2, "reflect": True, "flip": True, "alternate_flip": True}


# revision 1: the whitening bias starts at zero, as in airbench (was PyTorch's random conv bias)
@register_model("fastnet", FASTNET_RECIPE, FASTNET_AUGMENT, revision=1)
def fastnet(
    num_classes: int,
    in_channels: int,
    image_size: int,
    widths: Sequence[int] = (64, 256, 256),
    convs_per_group: int = 2,
    head_scale: float = 1 / 9,
) -> nn.Module:
    """airbench94's net. Its whitening width is 2 * in_channels * 4 (24 for RGB): the eigenvectors
    of the 2x2 patch covariance and their negatives, the only width the data-dependent init fills."""
    whiten_width = 2 * in_channels * PATCH * PATCH
    if not isinstance(widths, (list, tuple)) or not widths or any(
            isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise TicketlabError(f"fastnet widths must be a non-empty sequence of positive integers, got {widths!r}")
    widths = tuple(widths)
    if isinstance(convs_per_group, bool) or not isinstance(convs_per_group, int) or convs_per_group < 1:
        raise TicketlabError(f"fastnet convs_per_group must be a positive integer, got {convs_per_group!r}")
    if isinstance(head_scale, bool) or not isinstance(head_scale, (int, float)) or not (
            math.isfinite(head_scale) and head_scale > 0):
        raise TicketlabError(f"fastnet head_scale must be a positive finite number (airbench: 1/9), got {head_scale!r}")
    # The 2x2 whitening conv (no padding) trims one pixel, then every group halves the image.
    require_image_size(
        "fastnet", image_size, 2 ** len(widths) + 1, f"its 2x2 whitening conv and {len(widths)} max-pools",
        "give fewer widths (one max-pool each)",
    )
    final_size = image_size - PATCH + 1
    for _ in widths:
        final_size //= 2
    return FastNet(num_classes, in_channels, whiten_width, widths, convs_per_group, float(head_scale), final_size)
