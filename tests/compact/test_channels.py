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


def wrn16_4():
    return build_model("wide_resnet_16_4", num_classes=10, in_channels=3, image_size=32)


def conv2():
    return build_model("conv_2", num_classes=10, in_channels=3, image_size=16)


def bn(name):
    return (f"{name}.weight", f"{name}.bias"), (f"{name}.running_mean", f"{name}.running_var")


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


def test_wide_resnet_groups_own_the_batchnorms_before_their_readers():
    """Pre-activation: a block's bn1 normalises the stream the block reads, bn2 conv1's output, and the
    final bn the last stream; the stem alone writes stage 0's input, as the first block projects it."""
    groups = {g.producers[0]: g for g in channel_groups(wrn16_4())}
    assert len(groups) == 1 + 3 + 6  # the stem's, one stream per stage, one conv1 -> conv2 group per block

    stem = groups["stem.weight"]
    assert stem == ChannelGroup(
        channels=16,
        producers=("stem.weight",),
        companions=bn("stages.0.0.bn1")[0],
        buffers=bn("stages.0.0.bn1")[1],
        consumers=("stages.0.0.conv1.weight", "stages.0.0.shortcut.0.weight"),
    )
    stage0 = groups["stages.0.0.shortcut.0.weight"]
    assert stage0.producers == ("stages.0.0.shortcut.0.weight", "stages.0.0.conv2.weight", "stages.0.1.conv2.weight")
    assert stage0.channels == 64
    assert stage0.companions == bn("stages.0.1.bn1")[0] + bn("stages.1.0.bn1")[0]
    assert stage0.buffers == bn("stages.0.1.bn1")[1] + bn("stages.1.0.bn1")[1]
    assert stage0.consumers == ("stages.0.1.conv1.weight", "stages.1.0.conv1.weight", "stages.1.0.shortcut.0.weight")
    last = groups["stages.2.0.shortcut.0.weight"]
    assert last.companions == bn("stages.2.1.bn1")[0] + bn("bn")[0] and last.channels == 256
    assert last.consumers == ("stages.2.1.conv1.weight", "fc.weight")

    inner = groups["stages.1.1.conv1.weight"]
    assert (inner.companions, inner.buffers) == bn("stages.1.1.bn2") and inner.consumers == ("stages.1.1.conv2.weight",)
    # every BatchNorm belongs to exactly one group
    norms = [name for g in groups.values() for name in g.companions if name.endswith(".weight")]
    assert sorted(norms) == sorted(n + ".weight" for n, m in wrn16_4().named_modules() if isinstance(m, nn.BatchNorm2d))
    assert tied_layers(wrn16_4()) == [groups[k].producers for k in groups if k.endswith("shortcut.0.weight")]


def test_convnet_flattens_its_last_conv_into_fc1_in_blocks():
    groups = channel_groups(conv2())
    assert [(g.producers, g.companions, g.consumers, g.flat_consumers, g.channels) for g in groups] == [
        (("features.conv1.weight",), ("features.conv1.bias",), ("features.conv2.weight",), (), 64),
        (("features.conv2.weight",), ("features.conv2.bias",), (), (("hidden.fc1.weight", 8 * 8),), 64),
        (("hidden.fc1.weight",), ("hidden.fc1.bias",), ("hidden.fc2.weight",), (), 256),
        (("hidden.fc2.weight",), ("hidden.fc2.bias",), ("fc.weight",), (), 256),
    ]
    six = channel_groups(build_model("conv_6", num_classes=10, in_channels=3, image_size=32))
    assert [g.producers[0] for g in six[:6]] == [f"features.conv{k}.weight" for k in range(1, 7)]
    assert six[5].flat_consumers == (("hidden.fc1.weight", 4 * 4),) and tied_layers(conv2()) == []

    wrong = conv2()
    wrong.hidden.fc1 = nn.Linear(64 * 8 * 8 + 1, 256)  # not a whole number of 8x8 blocks
    with pytest.raises(TicketlabError, match=r"hidden.fc1.weight has shape \(256, 4097\).*64 channels in blocks of 64"):
        channel_groups(wrong)


def test_companion_masks_silence_the_preactivation_batchnorms_and_conv_biases():
    model = wrn16_4()
    params = dict(model.named_parameters())
    stream = next(g for g in channel_groups(model) if g.producers[0] == "stages.1.0.shortcut.0.weight")
    masks = {name: rows(params[name].shape, [0, 3]) for name in stream.producers}
    completed = complete_channel_masks(model, masks)
    expected = torch.ones(128, dtype=torch.bool)
    expected[[0, 3]] = False
    for name in bn("stages.1.1.bn1")[0] + bn("stages.2.0.bn1")[0]:
        assert torch.equal(completed[name], expected), name
    for name in stream.consumers:  # the weights that read the dropped channels are dead, and masked
        assert torch.equal(completed[name].flatten(2).all(2).all(0), expected), name
        assert bool(completed[name][:, expected].all()), name
    readers = set(stream.consumers)
    others = [name for name in completed if name not in masks and name not in set(stream.companions) | readers]
    assert "stages.1.0.bn1.weight" in others and "stages.1.0.bn2.weight" in others  # other groups' BNs stay whole
    assert all(bool(completed[name].all()) for name in others)

    model = conv2()
    completed = complete_channel_masks(model, {"features.conv2.weight": rows((64, 64, 3, 3), range(8))})
    assert completed["features.conv2.bias"].tolist() == [i >= 8 for i in range(64)]
    assert bool(completed["features.conv1.bias"].all()) and bool(completed["hidden.fc1.bias"].all())
    # hidden.fc1 reads conv2's 64 channels through a flatten, 8 x 8 columns each: the first 8 channels' are dead
    assert completed["hidden.fc1.weight"].all(0).tolist() == [i >= 8 * 64 for i in range(64 * 64)]


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
    message = (
        r"no channel plan for Unplanned: .*ConvNet, FastNet, LeNet300100, .*ResNet, VGG, WideResNet.*"
        r"register_channel_plan\(Unplanned"
    )
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
