import pytest
import torch
from torch import nn

from ticketlab.compact import (
    ChannelGroup,
    channel_groups,
    complete_channel_masks,
    register_channel_plan,
    tied_layers,
)
from ticketlab.errors import TicketlabError
from ticketlab.models import build_model


def resnet20():
    return build_model("cifar_resnet_20", num_classes=10, in_channels=3, image_size=32)


def lenet():
    return build_model("lenet_300_100", num_classes=10, in_channels=1, image_size=28)


def rows(weight_shape, dropped):
    """A channel-structured mask: the listed output channels fully pruned."""
    mask = torch.ones(weight_shape, dtype=torch.bool)
    mask[list(dropped)] = False
    return mask


def test_resnet_residual_streams_are_tied_per_stage():
    groups = {g.producers[0]: g for g in channel_groups(resnet20())}
    assert len(groups) == 3 + 9  # one stream per stage, one conv1 -> conv2 group per block

    stage0 = groups["stem.conv.weight"]
    assert stage0.producers == ("stem.conv.weight",) + tuple(f"stages.0.{b}.conv2.weight" for b in range(3))
    assert stage0.channels == 16
    assert "stem.bn.bias" in stage0.companions and "stages.0.2.bn2.weight" in stage0.companions
    assert "stem.bn.running_mean" in stage0.buffers and "stages.0.1.bn2.running_var" in stage0.buffers
    # every conv1 of the stage reads the stream, and the next stage's first block both through conv1 and shortcut
    assert stage0.consumers == tuple(f"stages.0.{b}.conv1.weight" for b in range(3)) + (
        "stages.1.0.conv1.weight",
        "stages.1.0.shortcut.0.weight",
    )

    stage1 = groups["stages.1.0.shortcut.0.weight"]
    assert stage1.producers == ("stages.1.0.shortcut.0.weight",) + tuple(f"stages.1.{b}.conv2.weight" for b in range(3))
    assert "stages.1.0.shortcut.1.weight" in stage1.companions

    stage2 = groups["stages.2.0.shortcut.0.weight"]
    assert stage2.consumers[-1] == "fc.weight" and stage2.channels == 64

    inner = groups["stages.1.2.conv1.weight"]
    assert inner == ChannelGroup(
        channels=32,
        producers=("stages.1.2.conv1.weight",),
        companions=("stages.1.2.bn1.weight", "stages.1.2.bn1.bias"),
        buffers=("stages.1.2.bn1.running_mean", "stages.1.2.bn1.running_var"),
        consumers=("stages.1.2.conv2.weight",),
    )
    assert tied_layers(resnet20()) == [groups[k].producers for k in ("stem.conv.weight",)] + [
        groups[k].producers for k in ("stages.1.0.shortcut.0.weight", "stages.2.0.shortcut.0.weight")
    ]


def test_plain_nets_chain_each_layer_to_the_next_and_never_group_the_classes():
    vgg = channel_groups(build_model("cifar_vgg_11", num_classes=10, in_channels=3, image_size=32))
    assert [g.producers[0] for g in vgg] == [f"features.conv{k}.weight" for k in range(1, 9)]
    assert [g.consumers for g in vgg][-2:] == [("features.conv8.weight",), ("fc.weight",)]

    fast = channel_groups(build_model("fastnet", num_classes=10, in_channels=3, image_size=32, widths=(8, 16)))
    convs = [f"groups.{g}.conv{k}.weight" for g in (0, 1) for k in (1, 2)]
    assert [g.producers[0] for g in fast] == ["whiten.weight"] + convs
    assert fast[0].companions == ("whiten.bias",) and fast[0].consumers == ("groups.0.conv1.weight",)

    hidden = channel_groups(lenet())
    assert [(g.producers, g.companions, g.consumers, g.channels) for g in hidden] == [
        (("hidden.fc1.weight",), ("hidden.fc1.bias",), ("hidden.fc2.weight",), 300),
        (("hidden.fc2.weight",), ("hidden.fc2.bias",), ("fc.weight",), 100),
    ]
    assert all(name not in g.producers for g in vgg + fast + hidden for name in ("fc.weight",))
    assert tied_layers(lenet()) == []


def test_companion_masks_drop_only_channels_every_producer_drops():
    model = resnet20()
    params = dict(model.named_parameters())
    stream = channel_groups(model)[-1]  # stage 2: shortcut conv and three conv2s, 64 channels
    masks = {name: rows(params[name].shape, [1, 5]) for name in stream.producers}
    masks[stream.producers[2]] = rows(params[stream.producers[2]].shape, [1, 5, 7])  # 7 is dropped by one only
    completed = complete_channel_masks(model, masks)

    expected = torch.ones(64, dtype=torch.bool)
    expected[[1, 5]] = False
    for name in stream.companions:
        assert torch.equal(completed[name], expected), name
    for name, mask in masks.items():
        assert completed[name] is mask
    # a group whose producers are not all masked is dense: every companion is kept
    inner = next(g for g in channel_groups(model) if g.producers == ("stages.0.0.conv1.weight",))
    assert all(bool(completed[name].all()) for name in inner.companions)
    masks.pop(stream.producers[0])
    assert all(bool(complete_channel_masks(model, masks)[name].all()) for name in stream.companions)


def test_companion_masks_on_linear_layers_and_bad_masks():
    model = lenet()
    completed = complete_channel_masks(model, {"hidden.fc1.weight": rows((300, 784), range(10, 20))})
    assert completed["hidden.fc1.bias"].tolist() == [i not in range(10, 20) for i in range(300)]
    assert bool(completed["hidden.fc2.bias"].all())
    with pytest.raises(TicketlabError, match="does not fit"):
        complete_channel_masks(model, {"hidden.fc1.weight": torch.ones(3, 3, dtype=torch.bool)})


class Unplanned(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)


def test_unsupported_architecture_names_the_class_the_choices_and_the_fix():
    message = r"no channel plan for Unplanned; .*FastNet, LeNet300100, .*ResNet, VGG.*register_channel_plan\(Unplanned"
    with pytest.raises(TicketlabError, match=message):
        channel_groups(Unplanned())


class Planned(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=True)
        self.fc = nn.Linear(4, 2)


@register_channel_plan(Planned)
def _planned(model: Planned) -> list[ChannelGroup]:
    return [ChannelGroup(model.conv.out_channels, ("conv.weight",), ("conv.bias",), (), ("fc.weight",))]


class Subclass(Planned):
    pass


def test_registered_plans_are_used_for_their_exact_class_and_checked():
    assert channel_groups(Planned())[0].consumers == ("fc.weight",)
    with pytest.raises(TicketlabError, match="no channel plan for Subclass"):
        channel_groups(Subclass())
    with pytest.raises(TicketlabError, match="already registered"):
        register_channel_plan(Planned)(_planned)

    wrong = Planned()
    wrong.fc = nn.Linear(5, 2)
    with pytest.raises(TicketlabError, match=r"fc.weight has shape \(2, 5\).*dim 1.*4 channels"):
        channel_groups(wrong)
    wrong.conv.bias = None
    with pytest.raises(TicketlabError, match="names conv.bias, which the model does not have"):
        channel_groups(wrong)
