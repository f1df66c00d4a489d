import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ticketlab.compact import (
    channel_groups,
    compact,
    compaction_report,
    complete_channel_masks,
)
from ticketlab.compact.training import compacted_for_training
from ticketlab.errors import TicketlabError
from ticketlab.models import build_model
from ticketlab.models.wide_resnet import WideResNet
from ticketlab.sparsity import apply_masks
from ticketlab.train.hooks import MaskHook

from helpers import COMPACTABLE as ARCHITECTURES


def build(name):
    torch.manual_seed(0)
    return build_model(name, num_classes=10, **ARCHITECTURES[name][0])


def narrow_wrn():
    """WRN-16-1: 16/32/64 channels, so stage 0 has no projection and the stem shares its stream."""
    torch.manual_seed(0)
    return WideResNet(16, 1, num_classes=10, in_channels=3, dropout=0.3)


def rows(shape, keep):
    """Expand a per-output-channel bool vector to a weight-shaped mask."""
    return keep.view(-1, *[1] * (len(shape) - 1)).expand(shape).clone()


def channel_masks(model, g, drop=0.4, extra=0.2):
    """Random channel masks: per group a shared set of channels every producer drops (removable),
    plus channels each producer drops on its own (tied to kept ones, so they must stay); the
    classifier gets an unstructured mask."""
    params = dict(model.named_parameters())
    masks = {}
    for group in channel_groups(model):
        shared = torch.rand(group.channels, generator=g) < drop
        for name in group.producers:
            own = torch.rand(group.channels, generator=g) < extra
            masks[name] = rows(params[name].shape, ~(shared | own))
    masks["fc.weight"] = torch.rand(params["fc.weight"].shape, generator=g) < 0.7
    return masks


@torch.no_grad()
def randomise(model, g):
    """BN statistics and affine parameters, and biases, far from their init, so a wrongly removed
    channel shows up in the output."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=g))
            module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)
            module.weight.copy_(torch.rand(module.num_features, generator=g) + 0.5)
            module.bias.copy_(torch.randn(module.num_features, generator=g))
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)


def count(model):
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def max_gap(a, b, x):
    return float((a.eval()(x) - b.eval()(x)).abs().max())


@pytest.mark.parametrize("multiple", [1, 8])  # 8: widths padded with silent channels (compact/training.py)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_compacted_model_computes_the_masked_function_with_fewer_parameters(name, multiple):
    g = torch.Generator().manual_seed(1)
    model = build(name)
    randomise(model, g)
    masks = complete_channel_masks(model, channel_masks(model, g))
    reference = copy.deepcopy(model)
    apply_masks(reference, masks)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    small = compact(model, masks, multiple)  # the unmasked model: compact masks first

    x = torch.randn(ARCHITECTURES[name][1], generator=g)
    assert max_gap(small, reference, x) <= 1e-4
    assert count(small) < count(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the input is untouched
    report = compaction_report(model, small)
    assert report["parameters"] == {"before": count(model), "after": count(small)}
    for group, entry in zip(channel_groups(model), report["groups"]):
        dropped = int((~torch.stack([masks[p].flatten(1).any(1) for p in group.producers])).all(0).sum())
        live = max(1, group.channels - dropped)
        after = min(group.channels, -(-live // multiple) * multiple)
        assert entry["channels"] == {"before": group.channels, "after": after}
    tied = [entry for entry in report["groups"] if len(entry["producers"]) > 1]
    if multiple == 1:
        assert all(e["channels"]["after"] < e["channels"]["before"] for e in tied)  # residual streams did shrink


def test_channels_dropped_by_only_some_tied_producers_are_kept():
    model = build("cifar_resnet_20")
    params = dict(model.named_parameters())
    stream = channel_groups(model)[-1]  # stage 2: shortcut conv and three conv2s
    keep = torch.ones(64, dtype=torch.bool)
    keep[:10] = False
    masks = {name: rows(params[name].shape, keep) for name in stream.producers}
    masks[stream.producers[1]] = rows(params[stream.producers[1]].shape, torch.arange(64) >= 4)
    small = compact(model, complete_channel_masks(model, masks))
    assert small.fc.in_features == 60 and small.stages[2][1].conv1.in_channels == 60
    assert small.stages[2][1].conv2.out_channels == 60 and small.stages[2][0].shortcut[1].num_features == 60
    # a dense (unmasked) producer keeps every channel of its group
    masks.pop(stream.producers[0])
    assert compact(model, complete_channel_masks(model, masks)).fc.in_features == 64


def test_wrn_tied_streams_drop_only_channels_every_writer_drops():
    """The stem and stage 0's conv2s write one stream; every BN that normalises it (each block's bn1, which
    comes before the convs in a pre-activation net) and every conv reading it shrink to one channel set."""
    g = torch.Generator().manual_seed(6)
    model = narrow_wrn()
    randomise(model, g)
    params = dict(model.named_parameters())
    stream = next(group for group in channel_groups(model) if group.producers[0] == "stem.weight")
    assert stream.producers == ("stem.weight", "stages.0.0.conv2.weight", "stages.0.1.conv2.weight")
    keep = torch.arange(16) >= 6
    masks = {name: rows(params[name].shape, keep) for name in stream.producers}
    masks["stages.0.1.conv2.weight"] = rows(params["stages.0.1.conv2.weight"].shape, torch.arange(16) >= 9)
    masks = complete_channel_masks(model, masks)
    small = compact(model, masks)

    block0, block1, next_stage = small.stages[0][0], small.stages[0][1], small.stages[1][0]
    assert small.stem.out_channels == block0.conv2.out_channels == block1.conv2.out_channels == 10
    assert block0.bn1.num_features == block1.bn1.num_features == next_stage.bn1.num_features == 10
    assert block0.conv1.in_channels == block1.conv1.in_channels == next_stage.conv1.in_channels == 10
    assert next_stage.shortcut[0].in_channels == 10 and next_stage.shortcut[0].out_channels == 32
    assert block0.bn2.num_features == 16 and small.bn.num_features == 64  # other groups untouched
    assert count(model) - count(small) == 6 * (27 + 3 * 2 + 2 * 144 + 288 + 2 * 144 + 32)
    reference = copy.deepcopy(model)
    apply_masks(reference, masks)
    assert max_gap(small, reference, torch.randn(2, 3, 16, 16, generator=g)) <= 1e-4

    # the next stage's pre-activation BN reads the stream too: unmasked, it would turn the zeros into its shift
    unsilenced = {name: mask for name, mask in masks.items() if not name.startswith("stages.1.0.bn1.")}
    with pytest.raises(TicketlabError, match=r"6 dropped channels of stem.weight.*stages.1.0.bn1.weight"):
        compact(model, unsilenced)


def test_last_conv_channels_remove_their_blocks_of_fc1_columns():
    """Conv-2 at 16x16: each conv2 channel is 8 * 8 = 64 consecutive fc1 inputs; fc1's hidden units shrink too."""
    model = build("conv_2")
    randomise(model, torch.Generator().manual_seed(7))
    dropped = torch.tensor([0, 5, 6, 63])
    keep = torch.ones(64, dtype=torch.bool)
    keep[dropped] = False
    masks = complete_channel_masks(
        model,
        {
            "features.conv1.weight": rows((64, 3, 3, 3), torch.arange(64) >= 2),
            "features.conv2.weight": rows((64, 64, 3, 3), keep),
            "hidden.fc1.weight": rows((256, 4096), torch.arange(256) < 200),
        },
    )
    small = compact(model, masks)
    assert small.features.conv2.out_channels == 60 and small.hidden.fc1.weight.shape == (200, 60 * 64)
    kept_columns = torch.arange(4096).view(64, 64)[keep].flatten()
    assert torch.equal(small.hidden.fc1.weight, model.hidden.fc1.weight[:200][:, kept_columns])
    assert count(model) - count(small) == (
        2 * (27 + 1) + 2 * 64 * 9  # conv1 rows and bias, conv2 input columns
        + 4 * (62 * 9 + 1) + 4 * 64 * 256  # conv2 rows (62 inputs left) and bias, fc1 column blocks
        + 56 * (60 * 64 + 1) + 56 * 256  # fc1 rows (of the narrowed fc1) and bias, fc2 columns
    )
    reference = copy.deepcopy(model)
    apply_masks(reference, masks)
    assert max_gap(small, reference, torch.randn(2, 3, 16, 16)) <= 1e-4


@pytest.mark.parametrize("make", [lambda: build("fastnet"), narrow_wrn], ids=["fastnet", "wrn_16_1"])
def test_training_with_completed_masks_keeps_compaction_exact(make):
    """The mask hook keeps dropped channels silent through SGD with momentum and weight decay,
    in train-mode BatchNorm (and dropout) too, so the trained network compacts exactly."""
    g = torch.Generator().manual_seed(2)
    model = make()
    masks = complete_channel_masks(model, channel_masks(model, g))
    hook = MaskHook(masks)
    hook.on_start(SimpleNamespace(model=model))
    params = [p for p in model.parameters() if p.requires_grad]
    velocity = [torch.zeros_like(p) for p in params]
    model.train()
    for _ in range(3):
        x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        hook.after_backward(None)
        with torch.no_grad():  # SGD, momentum 0.9, weight decay 5e-4
            for p, v in zip(params, velocity):
                p.sub_(v.mul_(0.9).add_(p.grad + 5e-4 * p), alpha=0.1)
        hook.after_step(None, None)
    small = compact(model, masks)
    assert count(small) < count(model)
    assert max_gap(small, model, torch.randn(2, 3, 16, 16, generator=g)) <= 1e-4


def test_layers_keep_their_settings_and_frozen_flags():
    g = torch.Generator().manual_seed(3)
    model = build("fastnet")
    model.whiten.weight.requires_grad_(False)
    small = compact(model, complete_channel_masks(model, channel_masks(model, g)))
    bn = small.groups[1].bn2
    assert (bn.eps, bn.momentum) == (model.groups[1].bn2.eps, model.groups[1].bn2.momentum)
    assert not bn.weight.requires_grad and bn.bias.requires_grad
    assert not small.whiten.weight.requires_grad and small.whiten.bias.requires_grad
    assert small.whiten.bias is not None and small.fc.bias is None
    resnet = build("cifar_resnet_20")
    small = compact(resnet, complete_channel_masks(resnet, channel_masks(resnet, g)))
    assert small.stages[1][0].shortcut[0].stride == (2, 2) and small.stages[1][0].conv1.padding == (1, 1)


def test_a_group_keeps_one_channel_when_every_channel_is_dropped():
    model = build("lenet_300_100")
    randomise(model, torch.Generator().manual_seed(4))
    masks = complete_channel_masks(model, {"hidden.fc2.weight": torch.zeros(100, 300, dtype=torch.bool)})
    small = compact(model, masks)
    assert small.hidden.fc2.out_features == 1 and small.fc.in_features == 1
    reference = copy.deepcopy(model)
    apply_masks(reference, masks)
    assert max_gap(small, reference, torch.randn(2, 1, 28, 28)) <= 1e-6


def test_a_layer_whose_every_input_was_dropped_keeps_its_constant_channels():
    """fc2 reads only dropped channels, yet its kept rows still output their biases: completion keeps those
    rows (it would otherwise call them dropped and, completing again, mask their biases too)."""
    model = build("lenet_300_100")
    randomise(model, torch.Generator().manual_seed(4))
    masks = {"hidden.fc1.weight": torch.zeros(300, 784, dtype=torch.bool),
             "hidden.fc2.weight": rows((100, 300), torch.arange(100) < 50)}
    once = complete_channel_masks(model, masks)
    assert int(once["hidden.fc2.weight"].any(1).sum()) == 50 and int(once["hidden.fc2.bias"].sum()) == 50
    twice = complete_channel_masks(model, once)
    assert all(torch.equal(once[n], twice[n]) for n in once)  # idempotent
    reference = copy.deepcopy(model)
    apply_masks(reference, once)
    x = torch.randn(2, 1, 28, 28)
    assert max_gap(compact(model, once), reference, x) <= 1e-6
    training = compacted_for_training(model, once)
    assert max_gap(training.small, reference, x) <= 1e-6


def test_report_counts_parameters_and_channels():
    model = build("lenet_300_100")
    masks = {
        "hidden.fc1.weight": rows((300, 784), torch.arange(300) < 200),
        "hidden.fc2.weight": rows((100, 300), torch.arange(100) < 50),
    }
    report = compaction_report(model, compact(model, complete_channel_masks(model, masks)))
    assert report == {
        "parameters": {
            "before": 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10,
            "after": 784 * 200 + 200 + 200 * 50 + 50 + 50 * 10 + 10,
        },
        "groups": [
            {"producers": ["hidden.fc1.weight"], "channels": {"before": 300, "after": 200}},
            {"producers": ["hidden.fc2.weight"], "channels": {"before": 100, "after": 50}},
        ],
    }
    with pytest.raises(TicketlabError, match="not a compaction"):
        compaction_report(model, build("cifar_vgg_11"))


class _OneChannelChain(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = (nn.Conv2d(c, 8, 3, padding=1) for c in (3, 8, 8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))
        return self.fc(x.mean((2, 3)))


def test_report_of_a_traced_network_cut_to_one_channel_a_layer():
    """Compacted, c2 is a 1 -> 1 conv, which a second trace would read as depthwise: the report keeps the
    original's groups."""
    model = _OneChannelChain()
    masks = complete_channel_masks(model, {f"c{i}.weight": torch.zeros(8, c, 3, 3, dtype=torch.bool)
                                           for i, c in ((1, 3), (2, 8), (3, 8))})
    small = compact(model, masks)
    report = compaction_report(model, small)
    assert [g["channels"] for g in report["groups"]] == [{"before": 8, "after": 1}] * 3
    assert report["parameters"]["after"] == sum(p.numel() for p in small.parameters())


class _ScalesByWidth(nn.Module):
    """Scales by 1/sqrt(fan-in) read from the layers: compaction changes what the forward reads."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(20, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)) / self.fc2.in_features ** 0.5)


def test_a_forward_reading_a_width_compaction_changes_is_refused():
    model = _ScalesByWidth()
    masks = complete_channel_masks(model, {"fc1.weight": rows((16, 20), torch.arange(16) < 8)})
    with pytest.raises(TicketlabError, match="_ScalesByWidth reads a value that compaction changes"):
        compact(model, masks)


def test_unstructured_producer_masks_are_refused_with_the_fix():
    model = build("lenet_300_100")
    mask = torch.ones(300, 784, dtype=torch.bool)
    mask[:5, :10] = False  # five channels partly kept
    with pytest.raises(TicketlabError, match=r"hidden.fc1.weight is not channel-structured: 5 of its 300.*refill"):
        compact(model, {"hidden.fc1.weight": mask})


def test_channels_that_still_output_a_constant_are_not_removed():
    """Zero conv weights and a non-zero BN shift: the channel outputs beta, so removing it would
    change the function unless complete_channel_masks zeroed the companions."""
    model = build("cifar_vgg_11")
    randomise(model, torch.Generator().manual_seed(5))
    masks = {"features.conv3.weight": rows((256, 128, 3, 3), torch.arange(256) >= 3)}
    message = r"3 dropped channels of features.conv3.weight.*features.bn3.*complete_channel_masks"
    with pytest.raises(TicketlabError, match=message):
        compact(model, masks)
    with torch.no_grad():  # silent companions (as after training with completed masks): allowed, same function
        model.features.bn3.weight[:3] = 0
        model.features.bn3.bias[:3] = 0
    assert compact(model, masks).features.conv3.out_channels == 253


def test_masks_that_do_not_fit_and_unsupported_models_are_refused():
    model = build("lenet_300_100")
    with pytest.raises(TicketlabError, match="does not fit"):
        compact(model, {"hidden.fc1.weight": torch.ones(300, 10, dtype=torch.bool)})
    with pytest.raises(TicketlabError, match="does not fit"):
        compact(model, {"hidden.fc9.weight": torch.ones(300, 784, dtype=torch.bool)})
    with pytest.raises(TicketlabError, match="no channel plan for Linear"):
        compact(nn.Linear(3, 4), {})
