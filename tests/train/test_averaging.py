from types import SimpleNamespace

import pytest
import torch

from ticketlab.config import TrainConfig
from ticketlab.data.augment import Augment
from ticketlab.data.batches import DeviceData
from ticketlab.train import MaskHook, Trainer
from ticketlab.train.averaging import Lookahead
from ticketlab.train.hooks import Hook, Step

from helpers import InterruptAt, TinyNet, tiny_dataset


def _fake_trainer(model, total_steps=100):
    return SimpleNamespace(model=model, total_steps=total_steps)


def _step(iteration, steps_per_epoch=10):
    return Step(iteration, iteration // steps_per_epoch, None, None, None, None, None)


def _set(model, value):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_lookahead_averages_and_writes_back_on_its_schedule():
    net = TinyNet()
    trainer = _fake_trainer(net)
    lookahead = Lookahead(every=5)
    lookahead.on_start(trainer)
    _set(net, 1.0)
    lookahead.after_step(trainer, _step(3))  # not a sync step
    assert lookahead.average is None
    lookahead.after_step(trainer, _step(4))  # first sync: the average starts at the live weights
    assert torch.equal(lookahead.average["conv.weight"], net.conv.weight.detach())
    assert "bn.running_mean" in lookahead.average and "bn.num_batches_tracked" not in lookahead.average
    _set(net, 3.0)
    lookahead.after_step(trainer, _step(36))  # not a sync step: nothing moves
    assert torch.all(net.conv.weight == 3.0)
    lookahead.after_step(trainer, _step(39))  # 40 steps done: average moves by 1 - rho, live follows it
    rho = 0.95**5 * (40 / 100) ** 3
    expected = 1.0 + (1 - rho) * (3.0 - 1.0)
    assert torch.allclose(net.conv.weight, torch.full_like(net.conv.weight, expected))
    assert torch.allclose(lookahead.average["conv.weight"], net.conv.weight)


def test_lookahead_sets_the_average_after_the_last_step_only():
    net = TinyNet()
    trainer = _fake_trainer(net, total_steps=40)
    lookahead = Lookahead(every=3)
    lookahead.on_start(trainer)
    _set(net, 1.0)
    lookahead.after_step(trainer, _step(2))  # 3 steps done: first sync
    _set(net, 5.0)
    lookahead.after_step(trainer, _step(29))  # 30: a sync, at an epoch's end
    synced = net.conv.weight.detach().clone()
    _set(net, 7.0)
    lookahead.after_step(trainer, _step(30))  # 31: no sync, and an epoch end does not write back
    assert torch.all(net.conv.weight == 7.0)
    lookahead.after_step(trainer, _step(39))  # 40: no sync, but training ends: the live weights take the average
    assert torch.equal(net.conv.weight.detach(), synced)


def _trainer(tmp_path, cfg, hooks=(), model=None):
    ds = tiny_dataset()
    data = DeviceData(ds.train_x, ds.train_y, ds.mean, ds.std, "cpu", Augment(crop_padding=1, flip=True))
    torch.manual_seed(0)
    return Trainer(model or TinyNet(), data, cfg, test=(ds.test_x, ds.test_y), hooks=hooks,
                   checkpoint_dir=tmp_path, progress=False)


FAST = TrainConfig(epochs=4, batch_size=16, lr=0.05, schedule="linear", warmup_epochs=1, lr_start=0.2,
                   lr_end=0.07, bias_lr_scale=16.0, lookahead_every=4)


@pytest.mark.parametrize("stop_at", [3, 13, 20])  # before the first sync, after it, and mid-epoch
def test_resume_with_lookahead_equals_uninterrupted_bitwise(tmp_path, stop_at):
    reference = _trainer(tmp_path / "ref", FAST)
    ref_result = reference.fit()
    first = _trainer(tmp_path / "run", FAST, hooks=[InterruptAt(stop_at)])
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    torch.manual_seed(999)
    resumed = _trainer(tmp_path / "run", FAST, model=TinyNet())
    result = resumed.fit()
    for k, v in reference.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert result.test == ref_result.test
    assert reference.hooks[0].average is not None  # the lookahead did run


class _StopAfterFirstEpoch(Hook):
    def on_epoch_end(self, trainer, epoch):
        trainer.stop("enough")


def test_a_run_a_hook_stops_early_ends_on_the_lookahead_average_too():
    trainer = _trainer(None, FAST, hooks=[_StopAfterFirstEpoch()])
    trainer.fit()
    lookahead = trainer.hooks[0]
    # 6 steps an epoch, a sync every 4: the stop comes 2 live steps after the last sync
    assert trainer.iteration == trainer.steps_per_epoch == 6 and lookahead.average is not None
    for k, v in lookahead.average.items():
        assert torch.equal(v, trainer.model.state_dict()[k]), k


def test_pruned_weights_stay_zero_under_lookahead():
    model = TinyNet()
    g = torch.Generator().manual_seed(1)
    masks = {"conv.weight": (torch.rand(model.conv.weight.shape, generator=g) < 0.3).float()}
    _trainer(None, FAST, hooks=[MaskHook(masks)], model=model).fit()
    assert torch.all(model.conv.weight[masks["conv.weight"] == 0] == 0)
    assert torch.count_nonzero(model.conv.weight) > 0
