import json

import torch

from ticketlab.compact import complete_channel_masks
from ticketlab.models import build_model
from ticketlab.sparsity import load_masks, select_prunable
from ticketlab.store import read_tensors
from ticketlab.tickets import TicketConfig, find_ticket
from ticketlab.tickets.constant_units import constant_units, drop_constant_units
from ticketlab.tickets.oneshot import prune_model

from helpers import TinyNet, tiny_dataset


def _fastnet():
    torch.manual_seed(0)
    return build_model("fastnet", num_classes=4, in_channels=3, image_size=8, widths=(8, 8))


def _all_kept(model):
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in select_prunable(model).items()}


def test_removing_a_channel_under_identity_filters_makes_them_constant_downstream():
    model = _fastnet()
    weights = _all_kept(model)
    weights["groups.0.conv1.weight"][3] = False  # channel 3 of group 0's first conv goes
    x = torch.randn(16, 3, 8, 8)
    found = constant_units(model, complete_channel_masks(model, weights), model.state_dict(), x)
    # conv2 (an identity at init) reads only channel 3 for its filter 3, and so on down the identities
    assert {n: rows.nonzero().flatten().tolist() for n, rows in found.items()} == {
        "groups.0.conv2.weight": [3], "groups.1.conv1.weight": [3], "groups.1.conv2.weight": [3]}
    kept = drop_constant_units(weights, found)
    assert not kept["groups.1.conv2.weight"][3].any() and kept["groups.1.conv2.weight"][2].all()
    assert constant_units(model, complete_channel_masks(model, kept), model.state_dict(), x) == {}
    # from trained (non-identity) weights the same ticket has no constant filter
    trained = {k: v + 0.1 * torch.randn_like(v) if v.dim() == 4 else v for k, v in model.state_dict().items()}
    assert constant_units(model, complete_channel_masks(model, weights), trained, x) == {}


class Untraceable(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        return self.fc(out.mean((2, 3)) if x.sum() > 0 else out.amax((2, 3)))  # control flow fx cannot record


def test_only_filters_a_batchnorm_normalises_count():
    """A zero filter without BatchNorm after it trains normally (think of a zero-initialised head)."""
    lenet = build_model("lenet_300_100", in_channels=1, image_size=28)
    state = lenet.state_dict()
    state["hidden.fc1.weight"][7] = 0.0
    assert constant_units(lenet, _all_kept(lenet), state, torch.randn(8, 1, 28, 28)) == {}
    net = TinyNet()  # a user module: its conv -> BatchNorm is read off its traced graph
    state = net.state_dict()
    state["conv.weight"][0] = 0.0
    found = constant_units(net, _all_kept(net), state, torch.randn(8, 3, 8, 8))
    assert found["conv.weight"].nonzero().flatten().tolist() == [0]
    net = Untraceable()
    assert constant_units(net, _all_kept(net), state, torch.randn(8, 3, 8, 8)) == {}  # which BN reads what: unknown
    kept = _all_kept(net)
    assert drop_constant_units(kept, {}) is kept


def test_a_fastnet_channel_ticket_rewound_to_zero_drops_its_constant_filters(tmp_path):
    ds = tiny_dataset(n=128, channels=3, size=8)
    tickets = TicketConfig(levels=1, baselines=("reinit",), structure="channel", fraction=0.5)
    result = find_ticket("fastnet", ds, model_options={"widths": (8, 8)}, tickets=tickets, store=tmp_path,
                         epochs=2, batch_size=32, progress=False)
    row = result.summary["levels"][0]
    assert row["constant_units_dropped"][0] > 0
    assert any("constant at the rewind point" in w for w in result.summary["warnings"])
    model = build_model("fastnet", num_classes=4, in_channels=3, image_size=8, widths=(8, 8))
    per_seed = json.loads((result.folder / "per_seed.json").read_text())
    dense = per_seed[0][0]["runs"]["ticket"]
    init = tmp_path / "runs" / dense / "weights" / "it_0.safetensors"
    masks = load_masks(result.folder / "seed_0" / "level_1" / "masks.safetensors")
    x = torch.randn(32, 3, 8, 8)
    assert constant_units(model, masks, read_tensors(init), x) == {}
    assert 0.0 <= row["ticket"]["mean"] <= 1.0 and 0.0 <= row["reinit"]["mean"] <= 1.0


def test_one_shot_masks_drop_the_filters_constant_where_training_starts():
    ds = tiny_dataset(n=64, channels=3, size=8)
    start = _fastnet().state_dict()
    trained = _fastnet()
    with torch.no_grad():  # off the identities, as training leaves them
        for p in trained.parameters():
            if p.dim() == 4:
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(32, 3, 8, 8)
    masks = prune_model(trained, ds, density=0.4, structure="channel", start=start)
    assert constant_units(trained, masks, start, x) == {}
    kept_here = prune_model(trained, ds, density=0.4, structure="channel")  # training starts from these weights
    assert sum(int(m.sum()) for m in kept_here.values()) > sum(int(m.sum()) for m in masks.values())
    assert constant_units(trained, kept_here, start, x) != {}
