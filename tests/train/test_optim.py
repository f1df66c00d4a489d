import math

import pytest
import torch

from ticketlab.config import TrainConfig
from ticketlab.data.augment import Augment
from ticketlab.data.batches import DeviceData
from ticketlab.errors import TicketlabError
from ticketlab.train import Hook, Trainer
from ticketlab.train.optim import fused_on, lr_factor, make_optimizer

from helpers import TinyNet, tiny_dataset


def test_step_schedule_drops_at_milestones():
    cfg = TrainConfig(epochs=10, schedule="step", milestones=(4, 8), gamma=0.1)
    assert lr_factor(cfg, 0, 10) == 1.0
    assert lr_factor(cfg, 39, 10) == 1.0
    assert lr_factor(cfg, 40, 10) == pytest.approx(0.1)
    assert lr_factor(cfg, 80, 10) == pytest.approx(0.01)


def test_cosine_and_linear_with_warmup():
    cos = TrainConfig(epochs=10, schedule="cosine", warmup_epochs=1)
    assert lr_factor(cos, 0, 10) == pytest.approx(0.1)
    assert lr_factor(cos, 9, 10) == pytest.approx(1.0)
    assert lr_factor(cos, 10, 10) == pytest.approx(1.0)
    assert lr_factor(cos, 55, 10) == pytest.approx(0.5)
    lin = TrainConfig(epochs=10, schedule="linear", warmup_epochs=2)
    assert lr_factor(lin, 20, 10) == pytest.approx(1.0)
    assert lr_factor(lin, 60, 10) == pytest.approx(0.5)
    assert lr_factor(lin, 99, 10) == pytest.approx(1 / 80)
    assert all(math.isfinite(lr_factor(lin, i, 10)) for i in range(100))


@pytest.mark.parametrize("kwargs,match", [
    (dict(epochs=0), "epochs"), (dict(lr=-1.0), "lr"), (dict(optimizer="lbfgs"), "optimizer"),
    (dict(schedule="step"), "milestones"), (dict(schedule="step", milestones=(20,)), "milestones"),
    (dict(warmup_epochs=20), "warmup"), (dict(batch_size=0), "batch"), (dict(momentum=1.5), "momentum"),
])
def test_impossible_settings_are_user_errors(kwargs, match):
    with pytest.raises(TicketlabError, match=match):
        TrainConfig(epochs=kwargs.pop("epochs", 10), **kwargs).validate()


def test_warmup_starts_and_decay_ends_at_the_given_fractions():
    # airbench's triangle: 0.2 -> 1 over the warm-up, then linear to 0.07
    cfg = TrainConfig(epochs=10, schedule="linear", warmup_epochs=2, lr_start=0.2, lr_end=0.07)
    assert lr_factor(cfg, 0, 10) == pytest.approx(0.2 + 0.8 / 20)
    assert lr_factor(cfg, 19, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 20, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 60, 10) == pytest.approx(0.07 + 0.93 * 0.5)
    assert lr_factor(cfg, 100, 10) == pytest.approx(0.07)
    cos = TrainConfig(epochs=10, schedule="cosine", lr_end=0.1)
    assert lr_factor(cos, 50, 10) == pytest.approx(0.55) and lr_factor(cos, 100, 10) == pytest.approx(0.1)


def test_bias_lr_scale_puts_norm_biases_in_their_own_group():
    net = TinyNet()
    opt = make_optimizer(net, TrainConfig(bias_lr_scale=64.0, weight_decay=1e-3))
    plain, scaled = opt.param_groups
    assert [id(p) for p in scaled["params"]] == [id(net.bn.bias)]
    assert {id(net.bn.weight), id(net.conv.bias)} <= {id(p) for p in plain["params"]}  # only norm-layer biases
    assert scaled["lr_scale"] == 64.0 and plain["lr_scale"] == 1.0
    # the decay per step (lr x weight_decay) is the same for both groups
    assert scaled["weight_decay"] * scaled["lr_scale"] == pytest.approx(plain["weight_decay"])
    assert len(make_optimizer(net, TrainConfig()).param_groups) == 1


def test_fused_updates_only_when_every_parameter_is_on_a_gpu():
    class OnGpu:
        is_cuda = True

    assert fused_on([OnGpu(), OnGpu()]) is True
    assert fused_on([OnGpu(), torch.zeros(1)]) is None and fused_on([]) is None
    for name in ("sgd", "adam", "adamw"):  # CPU parameters get torch's default kernels
        assert make_optimizer(TinyNet(), TrainConfig(optimizer=name)).param_groups[0]["fused"] is None


def test_trainer_steps_norm_biases_with_the_scaled_lr():
    ds = tiny_dataset()
    data = DeviceData(ds.train_x, ds.train_y, ds.mean, ds.std, "cpu", Augment())
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.01, momentum=0.0, weight_decay=0.0, schedule="constant",
                      bias_lr_scale=10.0)
    torch.manual_seed(0)
    net = TinyNet()
    before = net.bn.bias.detach().clone()
    grads = {}

    class Grab(Hook):
        def after_backward(self, trainer):
            if not grads:
                grads["bias"] = net.bn.bias.grad.clone()
                trainer.interrupt()

    with pytest.raises(KeyboardInterrupt):
        Trainer(net, data, cfg, hooks=[Grab()], progress=False).fit()
    assert torch.allclose(net.bn.bias.detach(), before - 0.1 * grads["bias"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr_start=1.5), "--lr-start"), (dict(lr_end=-0.1), "--lr-end"), (dict(bias_lr_scale=0.0), "bias-lr"),
    (dict(lookahead_every=-1), "lookahead"),
])
def test_fast_recipe_settings_are_checked(kwargs, match):
    with pytest.raises(TicketlabError, match=match):
        TrainConfig(**kwargs).validate()
