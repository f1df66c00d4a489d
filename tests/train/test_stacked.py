import copy

import pytest
import torch
from torch import nn

from ticketlab.config import TrainConfig
from ticketlab.data.augment import Augment
from ticketlab.data.batches import DeviceData
from ticketlab.errors import TicketlabError
from ticketlab.train import MaskHook, StackedModels, Trainer, stack_masks

from helpers import InterruptAt, TinyNet, tiny_dataset


def _nets(count=3):
    torch.manual_seed(0)
    return [TinyNet() for _ in range(count)]


def _masks(net, seed):
    g = torch.Generator().manual_seed(seed)
    return {n: (torch.rand(p.shape, generator=g) < 0.4).float()
            for n, p in net.named_parameters() if n.endswith("weight") and p.dim() > 1}


def _train(model, hooks, seed=0, seeds=None):
    ds = tiny_dataset()
    data = DeviceData(ds.train_x, ds.train_y, ds.mean, ds.std, "cpu", Augment(crop_padding=1, flip=True))
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, weight_decay=5e-4, schedule="linear", warmup_epochs=1,
                      bias_lr_scale=4.0, lookahead_every=3, seed=seed)
    return Trainer(model, data, cfg, test=(ds.test_x, ds.test_y), hooks=hooks, progress=False, seeds=seeds).fit()


def test_stacked_forward_is_each_networks_forward():
    nets = _nets()
    x = torch.randn(5, 3, 8, 8)
    stacked = StackedModels(nets).eval()
    expected = torch.stack([n.eval()(x) for n in nets])
    assert torch.allclose(stacked(x), expected, atol=1e-6)


def test_training_together_equals_training_each_alone():
    nets = _nets()
    masks = [_masks(n, seed) for seed, n in enumerate(nets)]
    stacked = StackedModels(nets)
    together = _train(stacked, [MaskHook(stack_masks(masks))])
    alone = [_train(net, [MaskHook(m)]) for net, m in zip(nets, masks)]
    for k, (net, trained) in enumerate(zip(nets, stacked.unstack())):
        for name, value in net.state_dict().items():
            assert torch.allclose(trained.state_dict()[name].float(), value.float(), atol=1e-5), (k, name)
        for name, mask in masks[k].items():  # pruned weights stay exactly zero in every network
            assert torch.all(trained.get_parameter(name)[mask == 0] == 0)
    assert together.test["accuracies"] == pytest.approx([r.test["accuracy"] for r in alone], abs=1e-9)
    assert together.test["accuracy"] == pytest.approx(sum(r.test["accuracy"] for r in alone) / 3)
    assert together.history[-1]["train_loss"] == pytest.approx(
        sum(r.history[-1]["train_loss"] for r in alone) / 3, rel=1e-4)
    for each, key in (("train_losses", "train_loss"), ("train_accuracies", "train_accuracy")):
        assert together.history[-1][each] == pytest.approx([r.history[-1][key] for r in alone], rel=1e-4)


def test_networks_with_their_own_seeds_see_their_own_batches():
    """seeds=[...]: network k trains on seed k's data order and augmentations, as it would alone."""
    nets = _nets()
    masks = [_masks(n, seed) for seed, n in enumerate(nets)]
    stacked = StackedModels(nets)
    together = _train(stacked, [MaskHook(stack_masks(masks))], seeds=[5, 6, 7])
    alone = [_train(net, [MaskHook(m)], seed=5 + k) for k, (net, m) in enumerate(zip(nets, masks))]
    for net, trained in zip(nets, stacked.unstack()):
        for name, value in net.state_dict().items():
            assert torch.allclose(trained.state_dict()[name].float(), value.float(), atol=1e-5), name
    assert together.test["accuracies"] == pytest.approx([r.test["accuracy"] for r in alone], abs=1e-9)
    shared = StackedModels(_nets())  # without seeds all three share seed 0's batches: a different result
    _train(shared, [MaskHook(stack_masks(masks))])
    assert not torch.allclose(shared.unstack()[1].fc.weight, stacked.unstack()[1].fc.weight)
    with pytest.raises(TicketlabError, match="one per network"):
        _train(StackedModels(_nets()), [], seeds=[1, 2])


def test_stacked_seeds_resume_bitwise(tmp_path):
    ds = tiny_dataset()
    data = DeviceData(ds.train_x, ds.train_y, ds.mean, ds.std, "cpu", Augment(crop_padding=1, flip=True))
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, lookahead_every=3)

    def trainer(folder, hooks=()):
        return Trainer(StackedModels(_nets(2)), data, cfg, hooks=hooks, checkpoint_dir=folder, progress=False,
                       seeds=[3, 4])

    reference = trainer(tmp_path / "ref")
    reference.fit()
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "run", [InterruptAt(7)]).fit()
    resumed = trainer(tmp_path / "run")
    resumed.fit()
    for name, value in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def test_only_one_architecture_stacks():
    with pytest.raises(TicketlabError, match="one architecture"):
        StackedModels([TinyNet(), TinyNet(classes=5)])
    with pytest.raises(TicketlabError, match="at least one"):
        StackedModels([])
    with pytest.raises(TicketlabError, match="same parameters"):
        stack_masks([{"conv.weight": torch.ones(8, 3, 3, 3)}, {}])


def test_what_one_batched_call_cannot_hold_is_a_clear_error():
    """Dropout's batched draws depend on the group (a member's run id would name two results); tied weights and
    cumulative BatchNorm averages broke inside vmap; seeds without a stack crashed."""
    dropout = [nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Dropout(0.5)) for _ in range(2)]
    with pytest.raises(TicketlabError, match="random numbers.*dropout"):
        StackedModels(dropout)(torch.randn(3, 3, 2, 2))
    silent = [nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Dropout(0.0)) for _ in range(2)]
    assert StackedModels(silent)(torch.randn(3, 3, 2, 2)).shape == (2, 3, 4)  # p = 0 draws nothing
    assert StackedModels(dropout).eval()(torch.randn(3, 3, 2, 2)).shape == (2, 3, 4)  # nor does evaluation
    tied = TinyNet()
    tied.extra = nn.Linear(8, 8)
    tied.other = nn.Linear(8, 8)
    tied.other.weight = tied.extra.weight
    with pytest.raises(TicketlabError, match="ties"):
        StackedModels([tied, copy.deepcopy(tied)])
    cumulative = TinyNet()
    cumulative.bn.momentum = None
    with pytest.raises(TicketlabError, match="momentum=None"):
        StackedModels([cumulative, TinyNet()])
    with pytest.raises(TicketlabError, match="StackedModels"):
        _train(TinyNet(), [], seeds=[3])


def test_stacked_keeps_frozen_parameters_frozen():
    net = TinyNet()
    net.bn.weight.requires_grad_(False)
    stacked = StackedModels([net, TinyNet()])
    assert not stacked.body.bn.weight.requires_grad and stacked.body.bn.weight.shape == (2, 8)
    assert isinstance(stacked.unstack()[1].bn.weight, nn.Parameter)


@pytest.mark.gpu
def test_stacked_networks_train_on_cuda():
    ds = tiny_dataset()
    data = DeviceData(ds.train_x, ds.train_y, ds.mean, ds.std, "cuda", Augment(crop_padding=1, flip=True))
    stacked = StackedModels(_nets())
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, precision="bf16")
    result = Trainer(stacked, data, cfg, test=(ds.test_x, ds.test_y), progress=False).fit()
    assert len(result.test["accuracies"]) == 3 and min(result.test["accuracies"]) > 0.5


def test_stacked_fp16_needs_a_fixed_loss_scale():
    """One dynamic scaler skips every network's step when one overflows: the networks would not train as alone."""
    ds = tiny_dataset()
    data = DeviceData(ds.train_x, ds.train_y, ds.mean, ds.std, "cpu", Augment())
    cfg = TrainConfig(epochs=1, batch_size=16, precision="fp16")
    with pytest.raises(TicketlabError, match="fp16 needs a fixed --loss-scale"):
        Trainer(StackedModels(_nets(2)), data, cfg, progress=False)
    Trainer(StackedModels(_nets(2)), data, TrainConfig(epochs=1, batch_size=16, precision="fp16", loss_scale=1024.0),
            progress=False)
    Trainer(_nets(1)[0], data, cfg, progress=False)  # one network owns its scaler
