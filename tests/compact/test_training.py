import pytest
import torch

from ticketlab.compact import channel_groups, complete_channel_masks, kept_entries, tied_layers
from ticketlab.compact.training import compacted_for_training
from ticketlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ticketlab.data.augment import Augment
from ticketlab.data.batches import DeviceData
from ticketlab.errors import TicketlabError
from ticketlab.models import build_model
from ticketlab.sparsity import apply_masks, magnitude, prune_fraction, refill, select_prunable
from ticketlab.store import RunStore
from ticketlab.train import MaskHook, Trainer
from ticketlab.train.run import train_run

from helpers import COMPACTABLE, InterruptAt, tiny_dataset

CASES = {  # name -> (build options, tiny data options)
    "cifar_resnet_20": ({"in_channels": 3, "image_size": 8}, {"channels": 3, "size": 8}),
    "lenet_300_100": ({"in_channels": 1, "image_size": 8}, {"channels": 1, "size": 8}),
}


def ticket(name, fraction=0.5):
    """Seeded initial weights and a refilled channel ticket of them (what `find --structure channel` trains)."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=4, **CASES[name][0])
    names = list(select_prunable(model))
    params = dict(model.named_parameters())
    weights = prune_fraction(magnitude({n: params[n].detach() for n in names}),
                             {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}, fraction)
    weights = refill(weights, tied=tied_layers(model), keep={names[-1]})
    return model, complete_channel_masks(model, weights)


def config(name, epochs=2):
    return RunConfig(data=DataConfig(dataset="tiny"), model=ModelConfig(name=name),
                     train=TrainConfig(epochs=epochs, batch_size=32, lr=0.05))


def test_widths_are_padded_to_the_multiple_with_silent_channels_only():
    model, masks = ticket("cifar_resnet_20", fraction=0.6)
    apply_masks(model, masks)
    exact, padded = kept_entries(model, masks), kept_entries(model, masks, 8)
    for group in channel_groups(model):
        a, b = exact.rows[group.producers[0]], padded.rows[group.producers[0]]
        assert set(a.tolist()) <= set(b.tolist())  # every live channel stays
        assert len(b) == group.channels or len(b) % 8 == 0
        assert len(b) - len(a) < 8  # no more padding than needed
        extra = sorted(set(b.tolist()) - set(a.tolist()))
        assert all(not masks[p][extra].any() for p in group.producers)  # the padding is silent
    with pytest.raises(TicketlabError, match="at least 1"):
        kept_entries(model, masks, 0)


def test_expand_writes_the_small_state_back_and_leaves_removed_entries_as_they_were():
    model, masks = ticket("cifar_resnet_20")
    plan = compacted_for_training(model, masks)
    full = plan.full_state
    assert all(torch.equal(v, full[k]) for k, v in plan.trained_state().items())  # untrained: a round trip
    with torch.no_grad():
        for p in plan.small.parameters():
            p.add_(1.0)
        apply_masks(plan.small, plan.masks)  # what MaskHook does during training
    trained = plan.trained_state()
    for name, m in masks.items():
        assert torch.equal(trained[name][~m], full[name][~m])  # removed or pruned entries: as they started
    conv = "stages.1.0.conv1.weight"
    kept = plan.kept.rows[conv]
    live = masks[conv][kept][:, plan.kept.columns[conv]]
    assert live.any() and torch.equal(trained[conv][kept][:, plan.kept.columns[conv]][live],
                                      full[conv][kept][:, plan.kept.columns[conv]][live] + 1)


@pytest.mark.parametrize("name", CASES)
def test_compacted_training_gives_the_masked_training_numbers_up_to_rounding(tmp_path, name):
    model, masks = ticket(name)
    ds = tiny_dataset(n=96, **CASES[name][1])
    store = RunStore(tmp_path)
    options = dict(store=store, dataset=ds, masks=masks, init_state=model.state_dict(), progress=False)
    masked = train_run(config(name), **options)
    small = train_run(config(name), compacted=8, **options)

    assert small.run_id != masked.run_id and store.get(small.run_id).config["compacted"] == 8
    assert small.summary["trained_parameters"] < small.summary["parameters"] == masked.summary["parameters"]
    assert small.summary["density"] == masked.summary["density"]
    assert small.summary["test_accuracy"] == pytest.approx(masked.summary["test_accuracy"], abs=1 / 40)
    a, b = masked.model.state_dict(), small.model.state_dict()
    for key, value in a.items():
        if "running" not in key:  # BN statistics of removed channels keep their starting values (never read)
            assert torch.allclose(b[key], value, atol=1e-3), key
    for key, m in masks.items():
        assert torch.all(b[key][~m] == 0), key  # pruned weights and removed channels exactly zero
    again = train_run(config(name), compacted=8, **options)
    assert again.reused and all(torch.equal(again.model.state_dict()[k], v) for k, v in b.items())


def test_incomplete_channel_masks_train_compacted_as_their_completed_masks_train_masked(tmp_path):
    """Whole fc1 rows dropped but their biases and fc2's reading columns not: compaction removes those too, so the
    compacted run is (and is identified as) the masked run of the completed masks, not of the masks given."""
    from ticketlab.train.run import tensor_digest

    model, _ = ticket("lenet_300_100")
    keep = torch.arange(300) < 150
    given = {"hidden.fc1.weight": keep[:, None].expand(300, 64).clone()}
    completed = complete_channel_masks(model, given)
    assert set(completed) > set(given)
    ds = tiny_dataset(n=96, **CASES["lenet_300_100"][1])
    options = dict(store=RunStore(tmp_path), dataset=ds, init_state=model.state_dict(), progress=False)
    small = train_run(config("lenet_300_100"), compacted=8, masks=given, **options)
    masked = train_run(config("lenet_300_100"), masks=completed, **options)
    assert small.summary["density"] == masked.summary["density"]
    assert options["store"].get(small.run_id).config["masks"] == tensor_digest(completed)
    a, b = masked.model.state_dict(), small.model.state_dict()
    for key, value in a.items():
        if "running" not in key:
            assert torch.allclose(b[key], value, atol=1e-3), key


def test_an_interrupted_compacted_run_resumes_to_the_uninterrupted_numbers(tmp_path):
    model, masks = ticket("cifar_resnet_20")
    ds = tiny_dataset(n=96, channels=3, size=8)
    options = dict(dataset=ds, masks=masks, init_state=model.state_dict(), progress=False, compacted=8)
    reference = train_run(config("cifar_resnet_20", epochs=3), store=RunStore(tmp_path / "ref"), **options)
    store = RunStore(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        train_run(config("cifar_resnet_20", epochs=3), store=store, hooks=[InterruptAt(4)], **options)
    resumed = train_run(config("cifar_resnet_20", epochs=3), store=store, **options)
    assert resumed.run_id == reference.run_id and not resumed.reused
    for key, value in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_compacted_training_refuses_what_it_cannot_do(tmp_path):
    model, masks = ticket("cifar_resnet_20")
    ds = tiny_dataset(n=96, channels=3, size=8)
    options = dict(store=RunStore(tmp_path), dataset=ds, init_state=model.state_dict(), progress=False, compacted=8)
    unstructured = dict(masks)
    unstructured["stages.0.0.conv1.weight"] = torch.rand(masks["stages.0.0.conv1.weight"].shape) < 0.5
    with pytest.raises(TicketlabError, match="not channel-structured"):
        train_run(config("cifar_resnet_20"), masks=unstructured, **options)
    with pytest.raises(TicketlabError, match="no weight snapshots"):
        train_run(config("cifar_resnet_20"), masks=masks, save_at=(3,), **options)
    with pytest.raises(TicketlabError, match="needs channel masks"):
        train_run(config("cifar_resnet_20"), **options)
    assert RunStore(tmp_path).list() == []  # nothing half-written


@pytest.mark.gpu
def test_compacted_training_on_cuda_matches_masked_training(tmp_path, exact_cuda):
    """Without TF32 the two compute the same sums in another order, as on the CPU."""
    model, masks = ticket("cifar_resnet_20")
    ds = tiny_dataset(n=96, channels=3, size=8)
    options = dict(store=RunStore(tmp_path), dataset=ds, masks=masks, init_state=model.state_dict(),
                   progress=False, device="cuda")
    masked = train_run(config("cifar_resnet_20"), **options)
    small = train_run(config("cifar_resnet_20"), compacted=8, **options)
    a, b = masked.model.state_dict(), small.model.state_dict()
    assert all(t.device.type == "cuda" for t in b.values())
    for key, m in masks.items():
        assert torch.all(b[key][~m.to(b[key].device)] == 0), key
    for key, value in a.items():
        if "running" not in key:
            assert torch.allclose(b[key], value, atol=1e-2), key


@pytest.mark.parametrize("name", COMPACTABLE)
def test_every_compactable_architecture_trains_compacted_as_it_trains_masked(name):
    """A few steps with momentum, weight decay, EMA and lookahead, on every architecture with a channel plan:
    the same weights up to rounding. In float64: in fp32 a rounding difference that flips a ReLU or a
    max-pool choice grows, over a few steps, past any tolerance that would still catch a wrong wiring.
    (WRN's dropout is off: it draws its masks at the trained width.)"""
    options, shape = COMPACTABLE[name]
    options = {**options, "dropout": 0.0} if "dropout" in options else options
    torch.manual_seed(0)
    model = build_model(name, num_classes=4, **options).double()
    if name == "fastnet":  # its dirac init makes a kept channel that reads only removed ones constant, and the
        for module in model.modules():  # BatchNorm of a constant blows gradients up (1e9) in either form
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight)
    g = torch.Generator().manual_seed(2)
    params = dict(model.named_parameters())
    masks = {}
    for group in channel_groups(model):
        drop = torch.rand(group.channels, generator=g) < 0.4
        for producer in group.producers:
            masks[producer] = (~drop).view(-1, *[1] * (params[producer].dim() - 1)).expand_as(params[producer]).clone()
    masks["fc.weight"] = torch.rand(params["fc.weight"].shape, generator=g) < 0.7
    masks = complete_channel_masks(model, masks)
    x = torch.randint(0, 256, (48, *shape[1:]), generator=g, dtype=torch.uint8)
    data = DeviceData(x, torch.arange(48) % 4, (0.5,) * shape[1], (0.25,) * shape[1], "cpu", Augment(),
                      dtype=torch.float64)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, weight_decay=5e-4, ema_decay=0.9, ema_every=1,
                      lookahead_every=2)
    plan = compacted_for_training(model, masks)
    Trainer(model, data, cfg, hooks=[MaskHook(masks)], progress=False).fit()
    Trainer(plan.small, data, cfg, hooks=[MaskHook(plan.masks)], progress=False).fit()
    trained = plan.trained_state()
    assert sum(p.numel() for p in plan.small.parameters()) < sum(p.numel() for p in model.parameters())
    for key, value in model.state_dict().items():
        if "running" not in key:
            assert trained[key].dtype == value.dtype and torch.allclose(trained[key], value, atol=1e-10), key
