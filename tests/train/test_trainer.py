import os
import signal
from dataclasses import replace

import pytest
import torch
from torch import nn

from ticketlab.config import TrainConfig
from ticketlab.data.augment import Augment
from ticketlab.data.batches import DeviceData
from ticketlab.errors import TicketlabError
from ticketlab.store import read_tensors
from ticketlab.train import Hook, MaskHook, Trainer

from helpers import DEVICES, InterruptAt, TinyNet, tiny_dataset


def _trainer(tmp_path=None, *, cfg=None, hooks=(), seed=0, save_at=(), model=None, device="cpu"):
    ds = tiny_dataset()
    data = DeviceData(ds.train_x, ds.train_y, ds.mean, ds.std, device, Augment(crop_padding=1, flip=True, cutout=2))
    cfg = cfg or TrainConfig(epochs=3, batch_size=16, lr=0.05, seed=seed, schedule="cosine", warmup_epochs=0.5)
    torch.manual_seed(seed)
    model = model or TinyNet()
    return Trainer(model, data, cfg, test=(ds.test_x, ds.test_y), hooks=hooks,
                   checkpoint_dir=tmp_path, save_at=save_at, progress=False)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _masks(model, density=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {n: (torch.rand(p.shape, generator=g) < density).float()
            for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}


def test_a_model_handed_in_eval_mode_trains_in_training_mode():
    seen = []

    class Mode(Hook):
        def after_step(self, trainer, step):
            seen.append(trainer.model.training)

    t = _trainer(cfg=TrainConfig(epochs=1, batch_size=16), hooks=[Mode()], model=TinyNet().eval())
    t.fit()
    assert seen and all(seen)
    assert t.model.bn.num_batches_tracked.item() == len(seen)  # BatchNorm statistics were updated


def test_training_learns():
    t = _trainer(cfg=TrainConfig(epochs=8, batch_size=16, lr=0.1))
    result = t.fit()
    assert result.test["accuracy"] >= 0.9  # chance is 0.25
    assert len(result.history) == 8 and result.iterations == 8 * 6


def test_same_seed_same_numbers_different_seed_differs():
    a, b, c = _trainer(seed=0), _trainer(seed=0), _trainer(seed=1)
    for t in (a, b, c):
        t.fit()
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert not torch.equal(a.model.conv.weight, c.model.conv.weight)


@pytest.mark.parametrize("optimizer,wd", [("sgd", 5e-4), ("adam", 1e-4), ("adamw", 1e-2)])
def test_pruned_weights_stay_exactly_zero(optimizer, wd):
    model = TinyNet()
    masks = _masks(model)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, optimizer=optimizer, weight_decay=wd, momentum=0.9)
    t = _trainer(cfg=cfg, hooks=[MaskHook(masks)], model=model)
    before = _state(model)
    t.fit()
    for name, mask in masks.items():
        w = dict(model.named_parameters())[name]
        assert torch.all(w[mask == 0] == 0), name
        assert not torch.equal(w[mask == 1], before[name][mask == 1]), "survivors must train"
    # optimiser state of pruned weights stays clean, so a weight regrown later starts fresh
    for name, mask in masks.items():
        p = dict(model.named_parameters())[name]
        for buf in t.optimizer.state[p].values():
            if torch.is_tensor(buf) and buf.shape == p.shape:
                assert torch.all(buf[mask == 0] == 0)


def test_mask_that_does_not_fit_is_a_user_error():
    model = TinyNet()
    with pytest.raises(TicketlabError, match="shape"):
        _trainer(hooks=[MaskHook({"conv.weight": torch.ones(3, 3)})], model=model).fit()
    with pytest.raises(TicketlabError, match="does not fit the model: it has no parameter"):
        _trainer(hooks=[MaskHook({"nope.weight": torch.ones(3, 3)})], model=TinyNet()).fit()  # unknown name


class _Counter(Hook):
    def __init__(self):
        self.steps = 0

    def after_step(self, trainer, step):
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


@pytest.mark.parametrize("stop_at", [6, 8, 17])  # an epoch boundary and two mid-epoch points
def test_resume_equals_uninterrupted_bitwise(tmp_path, stop_at):
    ema_cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, ema_decay=0.9, ema_every=2, warmup_epochs=0.5)
    reference = _trainer(tmp_path / "ref", cfg=ema_cfg)
    counter_ref = _Counter()
    reference.hooks.append(counter_ref)
    ref_result = reference.fit()

    first = _trainer(tmp_path / "run", cfg=ema_cfg, hooks=[_Counter(), InterruptAt(stop_at)])
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    torch.manual_seed(12345)  # a resumed process starts with unrelated global RNG state
    counter = _Counter()
    resumed = _trainer(tmp_path / "run", cfg=ema_cfg, hooks=[counter], model=TinyNet())
    result = resumed.fit()
    for k, v in reference.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    for k, v in reference.ema.model.state_dict().items():
        assert torch.equal(v, resumed.ema.model.state_dict()[k]), k
    assert result.test == ref_result.test
    timeless = lambda h: [{k: v for k, v in r.items() if k != "train_seconds"} for r in h]  # noqa: E731
    assert timeless(result.history) == timeless(ref_result.history)
    assert counter.steps == counter_ref.steps == 18


def test_with_an_ema_the_model_ends_on_the_weights_its_accuracy_is_measured_on():
    trainer = _trainer(cfg=TrainConfig(epochs=2, batch_size=16, lr=0.05, ema_decay=0.9, ema_every=1))
    result = trainer.fit()
    for k, v in trainer.ema.model.state_dict().items():
        assert torch.equal(v, trainer.model.state_dict()[k]), k
    trainer.ema = None  # evaluate the model itself
    assert trainer.evaluate(trainer.test) == result.test


def test_a_checkpoint_from_a_gpu_keeps_this_devices_optimizer_kernels():
    """A GPU run's optimizer state says fused=True; resumed on the CPU it must use the CPU's kernels."""
    gpu_run = _trainer()
    state = gpu_run.state_dict()
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = True
    cpu_run = _trainer()
    cpu_run.load_state_dict(state)
    assert [g["fused"] for g in cpu_run.optimizer.param_groups] == [None] * len(cpu_run.optimizer.param_groups)
    cpu_run.fit()


def test_save_at_snapshots_exact_weights(tmp_path):
    seen = {}

    class Grab(Hook):
        def on_start(self, trainer):
            seen[0] = _state(trainer.model)

        def after_step(self, trainer, step):
            if trainer.iteration == 5:
                seen[5] = _state(trainer.model)

    _trainer(tmp_path, hooks=[Grab()], save_at=(0, 5)).fit()
    for k in (0, 5):
        saved = read_tensors(tmp_path / "weights" / f"it_{k}.safetensors")
        assert all(torch.equal(saved[n], seen[k][n]) for n in seen[k])


def test_save_beyond_training_is_a_user_error(tmp_path):
    with pytest.raises(TicketlabError, match="iterations"):
        _trainer(tmp_path, save_at=(10_000,))


def test_divergence_is_a_user_error():
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e30, momentum=0.0, nesterov=False)
    with pytest.raises(TicketlabError, match="diverged"):
        _trainer(cfg=cfg).fit()


def test_hooks_see_every_example_once_per_epoch():
    seen = []

    class Record(Hook):
        def after_step(self, trainer, step):
            seen.append(step.index.clone())

    t = _trainer(cfg=TrainConfig(epochs=2, batch_size=20, lr=0.05), hooks=[Record()])
    t.fit()
    per_epoch = t.steps_per_epoch
    first = torch.cat(seen[:per_epoch])
    assert sorted(first.tolist()) == list(range(96))
    assert not torch.equal(first, torch.cat(seen[per_epoch:]))  # reshuffled


@pytest.mark.parametrize("tta", ["flip", "flip_shift"])
def test_tta_evaluates(tta):
    t = _trainer(cfg=TrainConfig(epochs=4, batch_size=16, lr=0.1, tta=tta))
    assert t.fit().test["accuracy"] >= 0.8


def test_drop_last_trains_on_full_batches_only():
    seen = []

    class Record(Hook):
        def after_step(self, trainer, step):
            seen.append(step.index.clone())

    t = _trainer(cfg=TrainConfig(epochs=2, batch_size=20, lr=0.05, drop_last=True), hooks=[Record()])
    result = t.fit()
    assert t.steps_per_epoch == 4 and result.iterations == 8  # 96 examples: 4 batches of 20, 16 left out
    assert all(len(index) == 20 for index in seen)
    first, second = torch.cat(seen[:4]), torch.cat(seen[4:])
    assert len(set(first.tolist())) == 80 and set(first.tolist()) != set(second.tolist())  # a new 16 left out


@pytest.mark.parametrize("drop_last", [True, False])
def test_a_batch_larger_than_the_training_set_is_a_user_error(drop_last):
    with pytest.raises(TicketlabError, match="--batch-size 200 is larger than the 96 training examples"):
        _trainer(cfg=TrainConfig(epochs=1, batch_size=200, lr=0.05, drop_last=drop_last))


def test_label_smoothing_changes_loss_only():
    plain = _trainer(cfg=TrainConfig(epochs=1, batch_size=16, lr=0.05))
    smooth = _trainer(cfg=TrainConfig(epochs=1, batch_size=16, lr=0.05, label_smoothing=0.2))
    plain.fit(), smooth.fit()
    assert plain.history[0]["train_loss"] != smooth.history[0]["train_loss"]


def test_training_leaves_the_callers_rng_alone():
    trainer = _trainer()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    trainer.fit()
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("k", [0, 7, 12])
def test_rewind_start_continues_schedule_and_data_order_exactly(tmp_path, k):
    """Weights saved at k, trained from k: identical to the uninterrupted run (stateless SGD)."""
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, momentum=0.0, nesterov=False, weight_decay=0.0,
                      schedule="cosine", warmup_epochs=0.5)
    full = _trainer(tmp_path / "full", cfg=cfg, save_at=(k,))
    full.fit()
    rewound = TinyNet()
    rewound.load_state_dict(read_tensors(tmp_path / "full" / "weights" / f"it_{k}.safetensors"))
    again = _trainer(cfg=cfg, model=rewound)
    again.start_iteration = k
    again.fit()
    for name, v in full.model.state_dict().items():
        assert torch.equal(v, rewound.state_dict()[name]), name


def test_start_beyond_training_is_a_user_error():
    ds = tiny_dataset()
    data = DeviceData(ds.train_x, ds.train_y, ds.mean, ds.std, "cpu", Augment())
    with pytest.raises(TicketlabError, match="rewind point"):
        Trainer(TinyNet(), data, TrainConfig(epochs=1, batch_size=16), start_iteration=6)


class _NetFreezingItsConvBias(TinyNet):
    """A model that brings its own hook, as fastnet does for its whitening bias."""

    def training_hooks(self):
        from ticketlab.train.hooks import FreezeAfter

        return [FreezeAfter([self.conv.bias], 2)]


def _freezing_net():
    torch.manual_seed(3)
    return _NetFreezingItsConvBias()


class _WatchBias(Hook):
    def __init__(self):
        self.seen = []

    def on_epoch_end(self, trainer, epoch):
        self.seen.append(trainer.model.conv.bias.detach().clone())


def test_a_models_own_hook_freezes_a_parameter_after_its_epochs():
    watch = _WatchBias()
    _trainer(cfg=TrainConfig(epochs=4, batch_size=16, lr=0.05, weight_decay=5e-3), hooks=[watch],
             model=_freezing_net()).fit()
    first, second, third, fourth = watch.seen
    assert not torch.equal(first, second)  # trains in epochs 1 and 2 ...
    assert torch.equal(second, third) and torch.equal(third, fourth)  # ... then stays put, decay included


@pytest.mark.parametrize("stop_at", [8, 14])  # resumed before and after the freeze
def test_a_frozen_parameter_resumes_exactly(tmp_path, stop_at):
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.05, weight_decay=5e-3)
    reference = _freezing_net()
    _trainer(tmp_path / "ref", cfg=cfg, model=reference).fit()
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "run", cfg=cfg, hooks=[InterruptAt(stop_at)], model=_freezing_net()).fit()
    model = _freezing_net()
    model.conv.bias.requires_grad_(False)  # as an earlier training leaves it: trainable again from the start
    _trainer(tmp_path / "run", cfg=cfg, model=model).fit()
    for k, v in reference.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


class _LayoutProbe(TinyNet):
    """Records whether each training batch arrives channels-last."""

    def __init__(self):
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(x.is_contiguous(memory_format=torch.channels_last))
        return super().forward(x)


class _NchwOnly(_LayoutProbe):
    channels_last = False


def test_image_models_train_channels_last_unless_they_opt_out():
    wanted = _trainer(model=_LayoutProbe())
    wanted.fit()
    assert wanted.model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert wanted.model.seen and all(wanted.model.seen)

    declined = _trainer(model=_NchwOnly())
    declined.fit()
    assert declined.model.conv.weight.is_contiguous()
    assert declined.model.seen and not any(declined.model.seen)


class _ViewsFeatures(nn.Module):
    """Flattens a feature map with .view, as much user code does; fine only in NCHW."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 4)

    def forward(self, x):
        x = self.conv(x)
        return self.fc(x.view(x.size(0), -1))


class _ViewsFeaturesNchw(_ViewsFeatures):
    channels_last = False


def test_a_model_that_needs_nchw_gets_a_clear_error_and_an_opt_out():
    with pytest.raises(TicketlabError, match="channels_last = False"):
        _trainer(model=_ViewsFeatures()).fit()
    assert _trainer(model=_ViewsFeaturesNchw()).fit().iterations > 0


def test_an_update_that_overflows_float32_is_divergence():
    with pytest.raises(TicketlabError, match="diverged: an update overflowed float32.*lower --lr"):
        _trainer(cfg=TrainConfig(epochs=1, batch_size=16, lr=1e38, optimizer="adam", weight_decay=0.0)).fit()


class _NanInEval(TinyNet):
    """Trains normally; its eval-mode outputs are NaN, as after overflowed BatchNorm statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out if self.training else out * float("nan")


def test_non_finite_evaluation_is_divergence_though_the_training_loss_is_finite():
    with pytest.raises(TicketlabError, match="diverged: the network's evaluation loss is nan.*BatchNorm"):
        _trainer(model=_NanInEval()).fit()


class _TerminateAt(Hook):
    """Sends this process the SIGTERM a scheduler sends before it preempts a job."""

    def __init__(self, at: int) -> None:
        self.at = at

    def after_step(self, trainer, step) -> None:
        if trainer.iteration == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_checkpoints_like_ctrl_c_and_the_run_resumes_bitwise(tmp_path):
    reference = _trainer(tmp_path / "ref")
    reference.fit()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "run", hooks=[_TerminateAt(7)]).fit()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    assert (tmp_path / "run" / "checkpoint.safetensors").exists()
    resumed = _trainer(tmp_path / "run", model=TinyNet())
    resumed.fit()
    for key, value in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_a_power_of_two_loss_scale_changes_no_bit_of_fp32_training():
    """Scaling the loss by 2^k and the gradients back by 2^-k is exact in floating point."""
    plain = _trainer(seed=3)
    plain.fit()
    scaled = _trainer(seed=3, cfg=TrainConfig(epochs=3, batch_size=16, lr=0.05, seed=3, schedule="cosine",
                                              warmup_epochs=0.5, loss_scale=1024.0))
    scaled.fit()
    for key, value in plain.model.state_dict().items():
        assert torch.equal(scaled.model.state_dict()[key], value), key


# ---- the CUDA paths (marked gpu: skipped without one) ----------------------------------------


@pytest.mark.parametrize("precision,loss_scale", [("fp32", 0), ("bf16", 0), ("fp16", 0), ("fp16", 1024)])
@pytest.mark.parametrize("device", DEVICES)  # the CPU ignores the precision and trains in fp32
def test_masked_training_learns_at_every_precision(device, precision, loss_scale):
    torch.manual_seed(0)  # an initial state known to learn this task on the CPU
    model = TinyNet()
    masks = _masks(model, density=0.5)
    cfg = TrainConfig(epochs=8, batch_size=16, lr=0.1, precision=precision, tta="flip", loss_scale=loss_scale)
    t = _trainer(cfg=cfg, hooks=[MaskHook(masks)], model=model, device=device)
    result = t.fit()
    assert t.model.conv.weight.device.type == device
    assert t.optimizer.param_groups[0]["fused"] is (True if device == "cuda" else None)
    # fp16 needs loss scaling: torch's dynamic scaler, or the fixed scale given
    assert (t.scaler is not None) == (device == "cuda" and precision == "fp16" and not loss_scale)
    assert result.test["accuracy"] >= 0.9 and torch.isfinite(torch.tensor(result.test["loss"]))
    params = dict(t.model.named_parameters())
    for name, mask in masks.items():
        assert params[name].dtype == torch.float32, "autocast keeps fp32 master weights"
        assert torch.all(params[name][mask.to(device) == 0] == 0), name


@pytest.mark.gpu
def test_cuda_training_computes_what_cpu_training_computes(exact_cuda):
    """Data order and augmentation come from CPU generators, so the devices differ by float rounding only."""
    runs = [_trainer(device=device, hooks=[MaskHook(_masks(TinyNet()))]) for device in ("cpu", "cuda")]
    results = [t.fit() for t in runs]
    cpu, cuda = (t.model.state_dict() for t in runs)
    for key, value in cpu.items():
        torch.testing.assert_close(cuda[key].cpu(), value, rtol=1e-3, atol=1e-4, msg=key)
    assert abs(results[0].test["loss"] - results[1].test["loss"]) < 1e-3



@pytest.mark.parametrize("device", DEVICES)
def test_resume_equals_uninterrupted_bitwise_on_each_device(tmp_path, device, exact_cuda):
    """Checkpoints carry the CUDA RNG state and the fp16 loss scaler, so resuming changes no bit."""
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, precision="fp16", ema_decay=0.9, warmup_epochs=0.5)
    reference = _trainer(tmp_path / "ref", cfg=cfg, device=device)
    reference.fit()
    first = _trainer(tmp_path / "run", cfg=cfg, hooks=[InterruptAt(8)], device=device)
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    resumed = _trainer(tmp_path / "run", cfg=cfg, model=TinyNet(), device=device)
    resumed.fit()
    for k, v in reference.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    if reference.scaler is not None:
        assert reference.scaler.get_scale() == resumed.scaler.get_scale()


def test_resumed_optimiser_state_takes_the_parameters_layout(tmp_path):
    """Checkpoints hold contiguous tensors; the fused CUDA SGD refuses momentum buffers whose strides
    differ from their channels-last weights (found on an H200), so a resume restores the layout."""
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05)
    first = _trainer(tmp_path, cfg=cfg, hooks=[InterruptAt(5)])
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    resumed = _trainer(tmp_path, cfg=cfg, model=TinyNet(), hooks=[InterruptAt(6)])
    with pytest.raises(KeyboardInterrupt):
        resumed.fit()
    convs = [p for p in resumed.model.parameters() if p.dim() == 4]
    assert convs and all(p.stride() != p.contiguous().stride() for p in convs)  # channels-last weights
    for p in convs:
        assert resumed.optimizer.state[p]["momentum_buffer"].stride() == p.stride()


def test_cuda_graphs_need_a_cuda_device():
    with pytest.raises(TicketlabError, match="--cuda-graph replays CUDA graphs and needs --device cuda"):
        _trainer(cfg=TrainConfig(epochs=1, batch_size=16, cuda_graph=True))


def test_cuda_graph_step_with_a_stand_in_for_the_capture(monkeypatch):
    """The trainer's side of CUDA-graph training, on the CPU: one capture on the first batch, whose
    warm-up passes must not move BatchNorm statistics; full batches through the graphed forward, the
    smaller last batch eagerly; the model keeps its own forward. A stand-in for
    make_graphed_callables that computes what the graphs would lets the run match eager bitwise."""
    calls = {"captures": 0, "graphed": 0}

    def stand_in(module, sample_args, allow_unused_input=False):
        calls["captures"] += 1
        own = module.forward
        for _ in range(3):  # torch's warm-up passes, in training mode
            module(*sample_args)

        def graphed(x):
            calls["graphed"] += 1
            return own(x)

        module.forward = graphed
        return module

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", stand_in)
    ds = tiny_dataset(n=100)
    runs = []
    for graph in (False, True):
        data = DeviceData(ds.train_x, ds.train_y, ds.mean, ds.std, "cpu", Augment(crop_padding=1, flip=True))
        torch.manual_seed(0)
        t = Trainer(TinyNet(), data, TrainConfig(epochs=3, batch_size=16, lr=0.05), progress=False)
        t.cfg = replace(t.cfg, cuda_graph=graph)  # past the constructor's check for a CUDA device
        t.fit()
        runs.append(t)
    assert calls == {"captures": 1, "graphed": 18}  # 6 full batches of 16 an epoch, then 4 examples
    assert "forward" not in vars(runs[1].model) and runs[1]._graphed is None
    for key, value in runs[0].model.state_dict().items():
        assert torch.equal(runs[1].model.state_dict()[key], value), key


def test_a_model_graphs_cannot_hold_gives_one_clear_error(monkeypatch):
    def refuse(module, sample_args, allow_unused_input=False):
        module.forward = lambda x: x  # what torch leaves set when it fails midway must not stay
        raise AssertionError("Modules must not have hooks registered at the time they are passed.")

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", refuse)
    t = _trainer(cfg=TrainConfig(epochs=1, batch_size=16))
    t.cfg = replace(t.cfg, cuda_graph=True)  # past the constructor's check for a CUDA device
    with pytest.raises(TicketlabError, match=r"TinyNet cannot be trained from CUDA graphs \(Modules must not "
                                             r"have hooks.*\); train it without --cuda-graph"):
        t.fit()
    assert "forward" not in vars(t.model)


class _Unfreeze(Hook):
    """Freezes the conv bias after the first epoch, as fastnet's whitening bias is: the captured
    backward still computes its gradient, which autograd must then drop."""

    def on_epoch_end(self, trainer, epoch):
        trainer.model.conv.bias.requires_grad_(False)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_from_cuda_graphs_matches_eager_training(exact_cuda, precision):
    """The graphs replay the same kernels: same weights, BatchNorm statistics (the capture's own
    passes are undone), masks and test loss; 100 examples in batches of 16 end in a smaller batch,
    which runs eagerly on the same weights."""
    ds = tiny_dataset(n=100)
    runs = []
    for graph in (False, True):
        data = DeviceData(ds.train_x, ds.train_y, ds.mean, ds.std, "cuda", Augment(crop_padding=1, flip=True))
        torch.manual_seed(0)
        model = TinyNet()
        masks = _masks(model)
        cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, precision=precision, cuda_graph=graph)
        t = Trainer(model, data, cfg, test=(ds.test_x, ds.test_y), hooks=[MaskHook(masks), _Unfreeze()],
                    progress=False)
        runs.append((t, t.fit(), masks))
    (eager, eager_result, _), (graphed, graphed_result, masks) = runs
    assert "forward" not in vars(graphed.model), "the model keeps its own forward"
    tolerance = {"rtol": 1e-3, "atol": 1e-4} if precision == "fp32" else {"rtol": 2e-2, "atol": 2e-3}
    for key, value in eager.model.state_dict().items():
        torch.testing.assert_close(graphed.model.state_dict()[key], value, **tolerance, msg=key)
    assert graphed.model.bn.num_batches_tracked.item() == eager.model.bn.num_batches_tracked.item() == 21
    for name, mask in masks.items():
        assert torch.all(dict(graphed.model.named_parameters())[name][mask.cuda() == 0] == 0), name
    assert abs(graphed_result.test["loss"] - eager_result.test["loss"]) < 1e-2


@pytest.mark.gpu
def test_compiled_training_matches_eager_training(exact_cuda):
    """torch.compile (a CUDA option here: on the CPU it needs a C++ toolchain) changes the kernels, not the maths."""
    runs = [_trainer(cfg=TrainConfig(epochs=2, batch_size=16, lr=0.05, compile=flag), device="cuda")
            for flag in (False, True)]
    for t in runs:
        t.fit()
    eager, compiled = (t.model.state_dict() for t in runs)
    for key, value in eager.items():
        torch.testing.assert_close(compiled[key], value, rtol=1e-3, atol=1e-4, msg=key)


def test_the_weight_ema_of_a_masked_run_is_as_sparse_as_the_run():
    """Evaluation uses the EMA: it must average the masked weights, not the dense ones it was copied from."""
    model = TinyNet()
    masks = _masks(model)
    t = _trainer(cfg=TrainConfig(epochs=2, batch_size=16, lr=0.05, ema_decay=0.9, ema_every=1),
                 hooks=[MaskHook(masks)], model=model)
    t.fit()
    ema = dict(t.eval_model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(ema[name][mask == 0] == 0) and ema[name][mask == 1].abs().sum() > 0


def test_a_second_fit_after_an_interrupt_trains_to_the_end(tmp_path):
    t = _trainer(tmp_path, hooks=[InterruptAt(3)])
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    t.hooks = [h for h in t.hooks if not isinstance(h, InterruptAt)]
    try:
        result = t.fit()
    except KeyboardInterrupt:  # caught here: uncaught, it would end the whole test session
        pytest.fail("the first fit's interrupt also ended the second")
    assert result.iterations == t.total_steps


def test_snapshots_before_the_start_of_a_rewound_run_are_a_user_error(tmp_path):
    with pytest.raises(TicketlabError, match=r"trains iterations 5 to"):
        ds = tiny_dataset()
        data = DeviceData(ds.train_x, ds.train_y, ds.mean, ds.std, "cpu", Augment())
        Trainer(TinyNet(), data, TrainConfig(epochs=2, batch_size=16), save_at=(2, 8), start_iteration=5,
                checkpoint_dir=tmp_path, progress=False)


def test_an_ema_that_would_never_be_taken_is_refused():
    """Averaging every 100 steps of an 8-step run would return the starting weights as trained."""
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, ema_decay=0.9, ema_every=100)  # 64 examples: 4 steps an epoch
    with pytest.raises(TicketlabError, match="so the average would never be taken"):
        _trainer(cfg=cfg)
    _trainer(cfg=replace(cfg, epochs=25))  # 100 steps: the average is taken once
