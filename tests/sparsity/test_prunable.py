import pytest
import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.models import build_model
from ticketlab.sparsity import density, ends, select_prunable


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3)
        self.fc = nn.Linear(8, 2)


def test_module_order_and_first_last_exclusion():
    net = Net()
    assert list(select_prunable(net)) == ["conv1.weight", "conv2.weight", "fc.weight"]
    assert list(select_prunable(net, exclude_first=True)) == ["conv2.weight", "fc.weight"]
    assert list(select_prunable(net, exclude_last=True)) == ["conv1.weight", "conv2.weight"]
    both = select_prunable(net, exclude_first=True, exclude_last=True)
    assert list(both) == ["conv2.weight"] and both["conv2.weight"] is net.conv2.weight


class HeadFirst(nn.Module):
    """Registers its classifier before its body: module order would call the head the first layer."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 2)
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.conv2 = nn.Conv2d(8, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(self.conv1(x)).mean((2, 3)))


def test_first_and_last_are_the_layers_the_forward_pass_calls_first_and_last():
    net = HeadFirst()
    assert ends(net) == ("conv1.weight", "head.weight")
    assert list(select_prunable(net, exclude_last=True)) == ["conv1.weight", "conv2.weight"]
    assert list(select_prunable(net, exclude_first=True)) == ["head.weight", "conv2.weight"]
    assert ends(build_model("cifar_resnet_20")) == ("stem.conv.weight", "fc.weight")
    assert ends(Net()) == ("conv1.weight", "fc.weight")  # no forward to trace: module order


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.b.weight = self.a.weight  # one weight, two layers

    def forward(self, x):
        return self.fc(self.b(self.a(x)))


def test_a_weight_two_layers_share_is_one_prunable_weight_under_its_parameter_name():
    net = Tied()
    assert list(select_prunable(net)) == ["a.weight", "fc.weight"]
    assert set(select_prunable(net)) <= dict(net.named_parameters()).keys()


def test_include_and_exclude_are_searched_regexes():
    net = Net()
    assert list(select_prunable(net, include="conv")) == ["conv1.weight", "conv2.weight"]
    assert list(select_prunable(net, exclude=r"^fc\.")) == ["conv1.weight", "conv2.weight"]
    assert list(select_prunable(net, include="conv", exclude="2")) == ["conv1.weight"]
    assert list(select_prunable(net, exclude_first=True, include="conv")) == ["conv2.weight"]


def test_nothing_to_prune_and_bad_patterns_are_user_errors():
    with pytest.raises(TicketlabError, match="no prunable layer"):
        select_prunable(nn.Sequential(nn.BatchNorm1d(3), nn.ReLU()))
    with pytest.raises(TicketlabError, match="no Conv2d or Linear layer"):
        ends(nn.Sequential(nn.Conv1d(3, 4, 3), nn.ReLU()))
    with pytest.raises(TicketlabError, match="no prunable layer left"):
        select_prunable(Net(), include="nothing")
    with pytest.raises(TicketlabError, match="no prunable layer left"):
        select_prunable(nn.Linear(3, 2), exclude_last=True)
    with pytest.raises(TicketlabError, match="regular expression"):
        select_prunable(Net(), exclude="(")


def test_keep_streams_spares_exactly_the_writers_of_each_residual_stream():
    net = build_model("cifar_resnet_20")
    kept = set(select_prunable(net)) - set(select_prunable(net, keep_streams=True))
    blocks = [f"stages.{s}.{b}" for s in range(3) for b in range(3)]
    assert kept == ({"stem.conv.weight", "stages.1.0.shortcut.0.weight", "stages.2.0.shortcut.0.weight"}
                    | {f"{b}.conv2.weight" for b in blocks})
    assert list(select_prunable(net, keep_streams=True, exclude_last=True)) == [f"{b}.conv1.weight" for b in blocks]
    with pytest.raises(TicketlabError, match="VGG has none.*drop it"):  # no skip connection, nothing to keep
        select_prunable(build_model("cifar_vgg_11"), keep_streams=True)


def test_density_counts_nonzero_prunable_weights():
    net = Net()
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.bias.zero_()  # biases are not prunable and do not count
    total = 4 * 3 * 9 + 8 * 4 * 9 + 16
    assert density(net) == pytest.approx((total - 16) / total)
