import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.compact import channel_groups, compact, compaction_report, complete_channel_masks, tied_layers
from ticketlab.compact.channels import _PLANS
from ticketlab.compact.trace import traced_plan
from ticketlab.errors import TicketlabError
from ticketlab.models import build_model
from ticketlab.sparsity import apply_masks

from helpers import COMPACTABLE, InvertedResiduals, UserResNet


def normalised(groups):
    """Groups as comparable sets; a flattened channel read as one column is a plain consumer."""
    out = set()
    for g in groups:
        consumers = set(g.consumers) | {name for name, block in g.flat_consumers if block == 1}
        blocks = {(name, block) for name, block in g.flat_consumers if block != 1}
        out.add((g.channels, frozenset(g.producers), frozenset(g.companions), frozenset(g.buffers),
                 frozenset(consumers), frozenset(blocks)))
    return out


@pytest.mark.parametrize("name", COMPACTABLE)
def test_tracing_reads_the_registered_plan_of_every_built_in_architecture(name):
    model = build_model(name, num_classes=10, **COMPACTABLE[name][0])
    registered = _PLANS[type(model)](model)
    assert normalised(traced_plan(model)) == normalised(registered)


def test_a_user_residual_network_gets_its_streams_tied_and_compacts_exactly():
    torch.manual_seed(0)
    model = UserResNet()
    groups = {g.producers: g for g in channel_groups(model)}
    assert set(groups) == {("stem.weight", "a2.weight", "b1.weight"), ("a1.weight",),
                           ("down.weight", "c1.weight"), ("head.weight",)}
    stream = groups["stem.weight", "a2.weight", "b1.weight"]
    # every BatchNorm on the stream, after its writer or before a reader, must be silenced with it
    assert set(stream.companions) == {"stem.bias", "bn0.weight", "bn0.bias", "a2.bias", "pre.weight", "pre.bias",
                                      "b1.bias"}
    assert set(stream.consumers) == {"a1.weight", "b1.weight", "down.weight", "c1.weight"}
    assert groups[("head.weight",)].flat_consumers == (("fc.weight", 16),)

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(generator=g)
                module.running_var.uniform_(0.5, 2, generator=g)
                module.bias.normal_(generator=g)
    params = dict(model.named_parameters())
    masks = {}
    for producers in groups:
        dropped = torch.rand(params[producers[0]].shape[0], generator=g) < 0.4
        for name in producers:
            masks[name] = (~dropped).view(-1, 1, 1, 1).expand_as(params[name]).clone()
    masks = complete_channel_masks(model, masks)
    model.eval()
    small = compact(model, masks)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        apply_masks(masked, masks)
    x = torch.randn(4, 3, 16, 16, generator=g)
    with torch.no_grad():
        assert (small(x) - masked(x)).abs().max() <= 1e-4
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert small.fc.in_features == 16 * small.head.out_channels < model.fc.in_features


def test_depthwise_convolutions_pass_their_channels_on_and_compact_with_them():
    torch.manual_seed(0)
    model = InvertedResiduals().eval()
    groups = {g.producers: g for g in channel_groups(model)}
    assert set(groups) == {("stem.weight", "blocks.0.6.weight", "blocks.1.6.weight"), ("blocks.0.0.weight",),
                           ("blocks.1.0.weight",)}
    expansion = groups[("blocks.0.0.weight",)]
    assert expansion.companions == ("blocks.0.1.weight", "blocks.0.1.bias", "blocks.0.3.weight",
                                    "blocks.0.4.weight", "blocks.0.4.bias")
    assert expansion.consumers == ("blocks.0.6.weight",)
    # refill gives an expansion conv and its depthwise conv one channel set
    assert set(tied_layers(model)) == {("stem.weight", "blocks.0.6.weight", "blocks.1.6.weight"),
                                       ("blocks.0.0.weight", "blocks.0.3.weight"),
                                       ("blocks.1.0.weight", "blocks.1.3.weight")}
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(generator=g)
                module.bias.normal_(generator=g)
    params = dict(model.named_parameters())
    masks = {"blocks.0.3.weight": torch.rand(24, 1, 3, 3, generator=g) < 0.8}  # the depthwise layer's own mask
    for producers in groups:
        dropped = torch.rand(params[producers[0]].shape[0], generator=g) < 0.4
        for name in producers:
            masks[name] = (~dropped).view(-1, 1, 1, 1).expand_as(params[name]).clone()
    completed = complete_channel_masks(model, masks)
    dropped = ~masks["blocks.0.0.weight"][:, 0, 0, 0]
    assert not completed["blocks.0.3.weight"][dropped].any()  # the dropped channels' filters go
    kept = ~dropped
    assert torch.equal(completed["blocks.0.3.weight"][kept], masks["blocks.0.3.weight"][kept])  # the rest as masked
    masked = copy.deepcopy(model)
    with torch.no_grad():
        apply_masks(masked, completed)
    small = compact(model, completed)
    depthwise = small.blocks[0][3]
    assert depthwise.groups == depthwise.in_channels == depthwise.out_channels == int(kept.sum())
    x = torch.randn(3, 3, 8, 8, generator=g)
    with torch.no_grad():
        assert (small(x) - masked(x)).abs().max() <= 1e-4


def test_a_depthwise_conv_cut_to_one_channel_is_still_read_as_depthwise():
    model = InvertedResiduals().eval()
    params = dict(model.named_parameters())
    masks = {"blocks.0.0.weight": (torch.arange(24) == 5).view(-1, 1, 1, 1).expand_as(params["blocks.0.0.weight"])}
    small = compact(model, complete_channel_masks(model, masks))
    assert small.blocks[0][3].out_channels == 1
    report = compaction_report(model, small)  # re-tracing the small model finds the same groups
    assert [g["channels"]["after"] for g in report["groups"]] == [8, 1, 24]


def test_a_batchnorm_without_affine_weights_whose_removed_channels_have_a_mean_is_refused():
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8, affine=False), nn.ReLU(), nn.Linear(8, 2)).eval()
    masks = {"0.weight": (torch.arange(8) < 4).view(-1, 1).expand(8, 6).clone()}
    masks = complete_channel_masks(model, masks)
    assert compact(model, masks)[1].num_features == 4  # running means of 0: the removed channels are silent
    with torch.no_grad():
        model[1].running_mean[6] = 0.3
    with pytest.raises(TicketlabError, match="BatchNorm 1 has no affine weights and 1 of their running means"):
        compact(model, masks)


class Squeezed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.pool, self.fc = nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.pool(F.silu(self.conv(x))).squeeze(-1).squeeze(-1) / 2)


def test_pooled_channels_squeezed_to_a_vector_are_read_one_column_each():
    (group,) = channel_groups(Squeezed())
    assert group.producers == ("conv.weight",) and group.consumers == ("fc.weight",)
    assert group.companions == ("conv.bias",) and not group.flat_consumers


def test_an_mlp_with_batchnorm1d_compacts_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).eval()
    first, second = channel_groups(model)
    assert first.companions == ("1.bias", "2.weight", "2.bias") and first.buffers == ("2.running_mean", "2.running_var")
    with torch.no_grad():
        model[2].running_mean.normal_()
        model[2].bias.normal_()
    masks = {"1.weight": (torch.arange(16) % 2 == 0).view(-1, 1).expand(16, 12).clone()}
    masks = complete_channel_masks(model, masks)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        apply_masks(masked, masks)
    small = compact(model, masks)
    assert small[2].num_features == 8 and isinstance(small[2], nn.BatchNorm1d)
    x = torch.randn(5, 3, 2, 2)
    with torch.no_grad():
        assert (small(x) - masked(x)).abs().max() <= 1e-5


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.cat([self.a(x), self.b(x)], 1).mean((2, 3)))


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 1), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.sigmoid(self.conv(x)).mean((2, 3)))


class Shifted(Gated):
    def forward(self, x):
        return self.fc((self.conv(x) + 1).mean((2, 3)))


class Inverted(Gated):
    def forward(self, x):
        return self.fc((1 / self.conv(x)).mean((2, 3)))


class ChannelMean(Gated):
    def forward(self, x):
        return self.fc(self.conv(x).mean(1).flatten(1)[:, :4])


class Twice(Gated):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.stem = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.fc(self.conv(self.conv(self.stem(x))).mean((2, 3)))


class Grouped(Gated):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, groups=2)

    def forward(self, x):
        return self.fc(self.conv(self.stem(x)).mean((2, 3)))


class Clamped(Gated):
    def forward(self, x):
        return self.fc(F.hardtanh(self.conv(x), 0.5, 2.0).mean((2, 3)))


class LayerScaled(Gated):
    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, 4, 1, 1))

    def forward(self, x):
        return self.fc((self.gamma * self.conv(x)).mean((2, 3)))


class WidthScaled(Gated):
    def forward(self, x):
        h = self.conv(x).mean((2, 3))
        return self.fc(h / h.shape[1] ** 0.5)


class FramesFolded(Gated):
    """Frames folded into the batch: `view(b, -1)` lays features out frame-major, not as a flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):  # x: [B, 2, 3, H, W]
        b = x.size(0)
        h = self.conv(x.view(-1, 3, x.size(3), x.size(4))).mean((2, 3))
        return self.fc(h.view(b, -1))


class SharedWeight(Twice):
    def __init__(self) -> None:
        super().__init__()
        self.other = nn.Conv2d(4, 4, 1)
        self.other.weight = self.conv.weight

    def forward(self, x):
        return self.fc(self.other(self.conv(self.stem(x))).mean((2, 3)))


class DataDependent(Gated):
    def forward(self, x):
        if x.sum() > 0:
            x = -x
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("model, why", [
    (Concat(), r"cat combines channel spaces, which only an addition may"),
    (Gated(), r"sigmoid may mix channels or make a removed channel non-zero"),
    (Shifted(), r"addition to a channel space of something no layer wrote"),
    (Inverted(), r"dividing by a channel space"),
    (Clamped(), r"hardtanh clamps to \[0.5, 2.0\], which moves a removed channel away from zero"),
    (LayerScaled(), r"mul by the parameter gamma, which compaction does not resize"),
    (WidthScaled(), r"pow uses a channel count, which compaction changes"),
    (FramesFolded(), r"view\(n, -1\) with an n the trace cannot tie to this tensor's batch size"),
    (SharedWeight(), r"other.weight is the same tensor as conv.weight"),
    (ChannelMean(), r"mean over the channel dimension"),
    (Twice(), r"conv is called twice"),
    (Grouped(), r"grouped convolution \(groups=2\); compaction needs groups=1 or a depthwise"),
    (DataDependent(), r"torch.fx cannot trace DataDependent"),
    (nn.Linear(3, 4), r"no layer's output channels are read by another layer"),
])
def test_networks_whose_channels_could_come_back_are_refused_with_the_operation_named(model, why):
    with pytest.raises(TicketlabError, match=rf"no channel plan for {type(model).__name__}: .*{why}.*"
                                             r"register_channel_plan"):
        channel_groups(model)


class Tolerant(nn.Module):
    """Operations that keep a removed channel at zero, written as users write them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.bn, self.up, self.act = nn.BatchNorm2d(8), nn.Upsample(scale_factor=2), nn.ReLU6()
        self.c, self.fc = nn.Conv2d(8, 6, 3), nn.Linear(6 * 4, 3)
        self.head = self.fc  # one module under two names: compaction must replace both
        self.shift = nn.Parameter(torch.full((1, 3, 1, 1), 0.1))

    def forward(self, x):
        b = x.size(0)  # the batch read before the input is normalised: element-wise steps keep it
        x = F.relu((x - self.shift) * 2)
        h = self.stem(x)
        h = torch.add(h, self.a(h), alpha=0.5) - self.b(-h)
        h = sum([self.act(self.bn(h)), torch.clamp(h, min=0)])
        h = F.interpolate(self.up(h.data), size=h.shape[2:]) * 0.5
        h = F.max_pool2d(self.c(F.pad(h, (1, 1, 1, 1))), 4)
        return self.head(h.view(b, -1))


def test_operations_that_keep_removed_channels_at_zero_are_traced_and_compact_exactly():
    torch.manual_seed(0)
    model = Tolerant().eval()
    groups = {g.producers: g for g in channel_groups(model)}
    assert set(groups) == {("stem.weight", "a.weight", "b.weight"), ("c.weight",)}
    assert groups[("c.weight",)].flat_consumers == (("fc.weight", 4),)
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.bias.normal_()
    masks = {name: (torch.arange(shape[0]) % 3 != 0).view(-1, 1, 1, 1).expand(shape).clone()
             for name, shape in [("stem.weight", (8, 3, 3, 3)), ("a.weight", (8, 8, 3, 3)),
                                 ("b.weight", (8, 8, 1, 1)), ("c.weight", (6, 8, 3, 3))]}
    masks = complete_channel_masks(model, masks)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        apply_masks(masked, masks)
    small = compact(model, masks)
    assert small.head is small.fc and small.fc.in_features == 4 * 4
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert (small(x) - masked(x)).abs().max() <= 1e-5
