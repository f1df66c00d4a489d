import pytest
import torch
from torch import nn

import ticketlab
from ticketlab.config import DataConfig
from ticketlab.data import ImageDataset
from ticketlab.data.augment import Augment
from ticketlab.errors import TicketlabError
from ticketlab.sparsity import density
from ticketlab.train.hooks import Hook
from ticketlab.train.run import default_augment

from conftest import need
from helpers import DEVICES, InterruptAt, TinyNet, tiny_dataset


def test_bundled_mnist_subset_trains_offline(tmp_path):
    result = ticketlab.train("lenet_300_100", "mnist_subset", epochs=3, store=tmp_path, progress=False)
    assert result.summary["test_accuracy"] >= 0.92  # 10k-image subset, 3 epochs
    assert result.summary["parameters"] == 266_610 and result.summary["density"] == 1.0


def test_real_mnist_short_run_reaches_97_percent(shared_data, tmp_path):
    need(shared_data, "mnist/train-images-idx3-ubyte.gz")
    result = ticketlab.train("lenet_300_100", "mnist", data_dir=shared_data, epochs=2, store=tmp_path, progress=False)
    assert result.summary["test_accuracy"] >= 0.97


def test_user_module_with_masks_and_validation(tmp_path):
    ds = tiny_dataset(n=200)
    model = TinyNet()
    masks = {"conv.weight": (torch.rand(8, 3, 3, 3, generator=torch.Generator().manual_seed(0)) < 0.5).float()}
    result = ticketlab.train(model, ds, masks=masks, store=tmp_path, epochs=6, batch_size=32, lr=0.1,
                             data=DataConfig(validation=40), progress=False)
    s = result.summary
    assert s["model"] == "TinyNet" and s["dataset"].startswith("tiny@")
    assert s["val_accuracy"] >= 0.8 and s["test_accuracy"] >= 0.8
    assert torch.all(model.conv.weight[masks["conv.weight"] == 0] == 0)
    assert density(model) < 1.0
    # the same model object in the same starting state is the same run; a different mask is not
    again = ticketlab.train(TinyNet(), ds, masks=masks, store=tmp_path, epochs=6, batch_size=32, lr=0.1,
                            data=DataConfig(validation=40), progress=False)
    assert again.run_id != result.run_id  # a fresh TinyNet has other initial weights
    torch.manual_seed(0)
    a = TinyNet()
    torch.manual_seed(0)
    b = TinyNet()
    r1 = ticketlab.train(a, ds, store=tmp_path, epochs=1, progress=False)
    r2 = ticketlab.train(b, ds, store=tmp_path, epochs=1, progress=False)
    assert r2.reused and r1.run_id == r2.run_id
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


class _TupleOut(TinyNet):
    def forward(self, x):
        return super().forward(x), x


class _TooFew(TinyNet):
    def __init__(self):
        super().__init__(classes=3)


class _WrongInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("model, message", [(_TupleOut, "returns tuple"), (_TooFew, r"returns \(2, 3\)"),
                                            (_WrongInput, "fails on a batch of tiny images of shape")])
def test_a_user_module_whose_forward_does_not_fit_the_data_is_refused_before_training(tmp_path, model, message):
    from ticketlab.errors import TicketlabError
    from ticketlab.store import RunStore

    with pytest.raises(TicketlabError, match=message):
        ticketlab.train(model(), tiny_dataset(n=32), store=tmp_path, epochs=1, progress=False)
    assert RunStore(tmp_path).list() == []


def test_recipe_milestones_and_warmup_follow_a_shorter_schedule():
    from ticketlab.train import recipe_config

    cfg = recipe_config("cifar_resnet_20", epochs=16)
    assert cfg.schedule == "step" and cfg.milestones == (8.0, 12.0) and cfg.weight_decay == 1e-4
    assert recipe_config("cifar_resnet_20").milestones == (80.0, 120.0)
    # and a warm-up keeps its share of training: fastnet's 2.3 of 10 epochs is 0.46 of 2
    assert recipe_config("fastnet", epochs=2).warmup_epochs == pytest.approx(0.46)
    assert recipe_config("fastnet", epochs=2, warmup_epochs=1.0).warmup_epochs == 1.0


def test_fastnet_whitening_is_fitted_on_training_data(tmp_path):
    ds = tiny_dataset(n=64, size=16)
    result = ticketlab.train("fastnet", ds, store=tmp_path, epochs=1, batch_size=32, progress=False,
                             **{"warmup_epochs": 0.5})
    whiten = next(m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert not whiten.weight.requires_grad
    fresh = ticketlab.build_model("fastnet", num_classes=4, in_channels=3, image_size=16)
    assert not torch.allclose(whiten.weight, next(fresh.parameters()))


def test_model_options_build_the_model_and_enter_the_run_identity(tmp_path):
    ds = tiny_dataset(n=64, size=16)
    small = ticketlab.train("fastnet", ds, store=tmp_path, epochs=1, batch_size=32, progress=False,
                            model_options={"widths": [4, 8], "convs_per_group": 1})
    expected = ticketlab.build_model("fastnet", num_classes=4, in_channels=3, image_size=16, widths=(4, 8),
                                     convs_per_group=1)
    assert small.summary["parameters"] == sum(p.numel() for p in expected.parameters())
    same = ticketlab.train("fastnet", ds, store=tmp_path, epochs=1, batch_size=32, progress=False,
                           model_options={"convs_per_group": 1, "widths": (4, 8)})
    assert same.reused and same.run_id == small.run_id
    with pytest.raises(ticketlab.TicketlabError, match="registered models"):
        ticketlab.train(TinyNet(), ds, store=tmp_path, epochs=1, progress=False, model_options={"widths": [4]})


def test_a_models_recipe_can_ask_for_its_own_augmentation():
    colour, grey = tiny_dataset(size=32), tiny_dataset(channels=1, size=28)
    assert default_augment(DataConfig(), colour, "cifar_resnet_20") == Augment(crop_padding=4, flip=True)
    assert default_augment(DataConfig(), colour, "fastnet") == Augment(
        crop_padding=2, flip=True, reflect=True, alternate_flip=True)
    assert default_augment(DataConfig(crop_padding=1, flip=False), colour, "fastnet") == Augment(
        crop_padding=1, flip=False, reflect=True, alternate_flip=True)  # settings given win
    assert default_augment(DataConfig(), grey, "fastnet") == Augment()  # digits are not mirror-symmetric


@pytest.mark.parametrize("device", DEVICES)
def test_fastnet_full_recipe_learns_on_each_device(tmp_path, device):
    """Whitening fitted on the device's data, lookahead, the whitening bias frozen after its epochs,
    bf16 autocast (CUDA only) and flip + shift TTA, through the public API in one run."""
    ds = tiny_dataset(n=128, size=16)
    result = ticketlab.train("fastnet", ds, store=tmp_path, epochs=4, batch_size=32, device=device,
                             precision="bf16" if device == "cuda" else "fp32", progress=False,
                             model_options={"widths": [16, 32, 32]})
    s = result.summary
    assert s["test_accuracy"] >= 0.8 and s["epochs"] == 4  # chance is 0.25
    assert next(result.model.parameters()).device.type == device


@pytest.mark.gpu
def test_fastnet_whitening_fitted_on_the_gpu_matches_the_cpu():
    """A CUDA run fits the whitening on the GPU (a tenth of a second less a run on an H200's host);
    the filters are the CPU's up to float rounding."""
    from ticketlab.config import ModelConfig, RunConfig
    from ticketlab.train import recipe_config
    from ticketlab.train.run import initial_model

    ds = tiny_dataset(n=256, size=16)
    models = [initial_model(RunConfig(model=ModelConfig("fastnet", (("widths", (8, 8, 8)),)),
                                      train=recipe_config("fastnet"), device=device), ds)
              for device in ("cpu", "cuda")]
    # the patch moments differ in their last float32 bits (summation order), and eigh magnifies that
    # for close eigenvalues: 3e-4 at most on an H200 (2026-12-04)
    torch.testing.assert_close(models[1].whiten.weight.cpu(), models[0].whiten.weight, rtol=1e-3, atol=1e-3)


def _pair(act: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    net = TinyNet()
    net.act = act  # a submodule forward ignores: only the repr differs
    return net


def test_a_user_modules_identity_is_its_architecture_not_only_its_class_name(tmp_path):
    ds = tiny_dataset(n=64)
    a = ticketlab.train(_pair(nn.ReLU()), ds, store=tmp_path, epochs=1, batch_size=32, progress=False)
    b = ticketlab.train(_pair(nn.Dropout(0.9)), ds, store=tmp_path, epochs=1, batch_size=32, progress=False)
    again = ticketlab.train(_pair(nn.ReLU()), ds, store=tmp_path, epochs=1, batch_size=32, progress=False)
    assert a.run_id != b.run_id and not b.reused
    assert again.reused and again.run_id == a.run_id


def test_masks_enter_the_identity_with_their_layer_names(tmp_path):
    """The same mask tensor on another layer of the same shape is another run."""

    class TwoLayers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.b(self.a(x.flatten(1)[:, :16])))

    ds = tiny_dataset(n=64)
    keep = torch.zeros(16, 16, dtype=torch.bool)
    keep[:, :4] = True
    runs = []
    for name in ("a.weight", "b.weight"):
        torch.manual_seed(0)
        runs.append(ticketlab.train(TwoLayers(), ds, masks={name: keep}, store=tmp_path, epochs=1, batch_size=32,
                                    progress=False))
    assert runs[0].run_id != runs[1].run_id and not runs[1].reused
    assert int(runs[1].model.a.weight.count_nonzero()) == 256 and int(runs[1].model.b.weight.count_nonzero()) == 64


def test_a_mask_is_one_run_in_any_dtype_and_save_at_in_any_spelling(tmp_path):
    ds, options = tiny_dataset(n=64), dict(model="conv_2", epochs=1, batch_size=32, progress=False, store=tmp_path)
    weight = ticketlab.train(**options, dataset=ds).model.state_dict()["features.conv1.weight"]
    keep = torch.rand(weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    runs = [ticketlab.train(**options, dataset=ds, masks={"features.conv1.weight": keep.to(dtype)})
            for dtype in (torch.bool, torch.float32, torch.float64)]
    assert len({r.run_id for r in runs}) == 1 and runs[1].reused and runs[2].reused
    snaps = [ticketlab.train(**options, dataset=ds, save_at=at) for at in ([1], [1.0, 1], 1)]
    assert len({r.run_id for r in snaps}) == 1 and snaps[1].reused and snaps[2].reused
    for bad in ([1.5], ["one"], -1):
        with pytest.raises(TicketlabError, match="save_at takes whole iteration numbers"):
            ticketlab.train(**options, dataset=ds, save_at=bad)


def test_a_boolean_subset_is_refused_not_read_as_indices_zero_and_one(tmp_path):
    from ticketlab.config import RunConfig, TrainConfig
    from ticketlab.store import RunStore
    from ticketlab.train.run import train_run

    config = RunConfig(data=DataConfig(dataset="tiny"), train=TrainConfig(epochs=1, batch_size=32))
    with pytest.raises(TicketlabError, match="subset holds example indices .* got torch.bool"):
        train_run(config, store=RunStore(tmp_path), dataset=tiny_dataset(n=64, channels=1, size=8),
                  subset=torch.arange(64) % 2 == 0, progress=False)


class _Scale(Hook):
    """Shrinks the weights after every step: it changes the numbers."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    @torch.no_grad()
    def after_step(self, trainer, step) -> None:
        for p in trainer.model.parameters():
            p.mul_(self.factor)


def test_hooks_that_change_the_numbers_make_another_run(tmp_path):
    ds, options = tiny_dataset(n=64), dict(model="conv_2", epochs=1, batch_size=32, progress=False)
    plain = ticketlab.train(dataset=ds, store=tmp_path, **options)
    scaled = ticketlab.train(dataset=ds, store=tmp_path, hooks=[_Scale(0.5)], **options)
    other = ticketlab.train(dataset=ds, store=tmp_path, hooks=[_Scale(0.9)], **options)
    assert len({plain.run_id, scaled.run_id, other.run_id}) == 3 and not scaled.reused and not other.reused
    assert ticketlab.train(dataset=ds, store=tmp_path, hooks=[_Scale(0.5)], **options).reused
    # a hook that only watches (or interrupts) is the same run
    assert ticketlab.train(dataset=ds, store=tmp_path, hooks=[InterruptAt(99)], **options).run_id == plain.run_id


class _Apply(Hook):
    def __init__(self, fn) -> None:
        self.fn = fn


def test_a_hook_setting_that_cannot_be_told_apart_must_be_described_by_the_hook():
    """abs and len would both be "builtin_function_or_method": one stored run for two different hooks."""
    with pytest.raises(ticketlab.TicketlabError, match=r"_Apply.fn is a builtin_function_or_method.*identity\(\)"):
        _Apply(abs).identity()
    assert _Scale(0.5).identity() != _Scale(0.9).identity()


def test_fastnet_whitening_never_sees_the_validation_images():
    from ticketlab.config import ModelConfig, RunConfig
    from ticketlab.data.split import stratified_indices
    from ticketlab.train.run import initial_model

    ds = tiny_dataset(n=64, size=16)
    config = RunConfig(data=DataConfig(validation=16), model=ModelConfig.of("fastnet", {"widths": [4, 8]}))
    _, held = stratified_indices(ds.train_y, 16, 0)
    changed_x = ds.train_x.clone()
    changed_x[held] = 255 - changed_x[held]
    changed = ImageDataset.create("tiny", changed_x, ds.train_y, ds.test_x, ds.test_y, ds.classes)
    whiten = [next(initial_model(config, d).parameters()) for d in (ds, changed)]
    assert torch.equal(whiten[0], whiten[1])
    # and the training images do move it
    train_changed = ds.train_x.clone()
    train_changed[0] = 255 - train_changed[0]
    other = ImageDataset.create("tiny", train_changed, ds.train_y, ds.test_x, ds.test_y, ds.classes)
    assert held[0] != 0 and not torch.equal(whiten[0], next(initial_model(config, other).parameters()))


def test_a_stored_run_that_no_longer_fits_its_model_is_a_clear_error(tmp_path):
    from ticketlab.store import CorruptFileError, write_tensors

    ds = tiny_dataset(n=64)
    run = ticketlab.train("conv_2", ds, store=tmp_path, epochs=1, batch_size=32, progress=False)
    state = dict(run.model.state_dict())
    state.pop(next(iter(state)))
    write_tensors(run.folder / "final.safetensors", state)
    with pytest.raises(CorruptFileError, match="runs rm"):
        ticketlab.train("conv_2", ds, store=tmp_path, epochs=1, batch_size=32, progress=False)


def test_an_unknown_device_is_a_user_error(tmp_path):
    with pytest.raises(ticketlab.TicketlabError, match="unknown device 'gpu'; use cpu or cuda"):
        ticketlab.train("lenet_300_100", "mnist_subset", store=tmp_path, device="gpu", progress=False)


def test_a_dataset_edited_in_place_is_another_dataset():
    from ticketlab.train.run import dataset_identity

    ds = tiny_dataset(n=32)
    before = dataset_identity(ds)
    assert dataset_identity(ds) == before
    ds.train_y[:4] = (ds.train_y[:4] + 1) % ds.num_classes
    assert dataset_identity(ds) != before


def test_a_dataset_with_other_classes_is_another_dataset():
    """The classes set the model's outputs and the labels noise draws: the same arrays, another training."""
    from dataclasses import replace

    from ticketlab.train.run import dataset_identity

    ds = tiny_dataset(n=32)
    assert dataset_identity(replace(ds, classes=(*ds.classes, "extra"))) != dataset_identity(ds)


def test_data_settings_that_change_nothing_leave_the_run_id_alone(tmp_path):
    ds = tiny_dataset(n=64, channels=1, size=8)  # grey: no crop, no flip by default
    options = dict(model="conv_2", epochs=1, batch_size=32, progress=False, store=tmp_path)
    first = ticketlab.train(dataset=ds, **options)
    for same in (DataConfig(crop_padding=0, flip=False), DataConfig(noise_seed=7), DataConfig(split_seed=3),
                 DataConfig(noise="uniform:0", noise_seed=2), DataConfig(noise="flip:0.0")):
        assert ticketlab.train(dataset=ds, data=same, **options).run_id == first.run_id
    from ticketlab.train.run import canonical_data

    label_file = DataConfig(noise="file:labels.npz:noisy", noise_seed=4)  # nothing is drawn: the seed does nothing
    assert canonical_data(label_file, ds, None).noise_seed == 0
    assert canonical_data(DataConfig(noise="uniform:0.2", noise_seed=4), ds, None).noise_seed == 4
    for other in (DataConfig(crop_padding=1), DataConfig(flip=True), DataConfig(validation=16, split_seed=3)):
        assert ticketlab.train(dataset=ds, data=other, **options).run_id != first.run_id


def test_training_settings_that_do_nothing_on_this_data_leave_the_run_id_alone(tmp_path):
    """--drop-last where the batch divides the data, a warm-up under half a step, a lookahead that never syncs
    before the last step: each trains exactly the plain run, so it is that run."""
    ds = tiny_dataset(n=64, channels=1, size=8)
    options = dict(model="conv_2", epochs=2, batch_size=32, progress=False, store=tmp_path)  # 4 steps
    first = ticketlab.train(dataset=ds, **options)
    for same in (dict(drop_last=True), dict(warmup_epochs=0.2, lr_start=0.5), dict(lookahead_every=4)):
        again = ticketlab.train(dataset=ds, **options, **same)
        assert again.reused and again.run_id == first.run_id, same
    for other in (dict(drop_last=True, batch_size=24), dict(warmup_epochs=0.3), dict(lookahead_every=3)):
        run = ticketlab.train(dataset=ds, **{**options, **other})
        assert not run.reused and run.run_id != first.run_id, other
    plain = ticketlab.train(dataset=ds, **{**options, "batch_size": 24})  # 3 steps an epoch, the last one short
    assert ticketlab.train(dataset=ds, **{**options, "batch_size": 24, "lookahead_every": 9}).run_id == plain.run_id


def test_a_hand_built_fastnet_must_be_fitted_to_data_first(tmp_path):
    """Trained by name, fastnet's first layer is fitted to the training images; built by hand and handed in,
    it was silently trained from a random start."""
    from ticketlab.errors import TicketlabError
    from ticketlab.models import build_model

    data = tiny_dataset(size=9)
    model = build_model("fastnet", widths=(8,), image_size=9, num_classes=4)
    with pytest.raises(TicketlabError, match="initialize_from_data"):
        ticketlab.train(model, data, store=tmp_path, epochs=1, batch_size=32, progress=False)
    assert not any(tmp_path.rglob("*.safetensors"))
    model.initialize_from_data(torch.randn(100, 3, 9, 9))
    result = ticketlab.train(model, data, store=tmp_path, epochs=1, batch_size=32, progress=False)
    assert not result.model.whiten.weight.requires_grad


class _Watch(Hook):
    """Watches only: splits no run ids, so it may come and go between an interrupted run and its resume."""

    def identity(self) -> str:
        return ""


def test_a_resume_with_other_watching_hooks_equals_the_uninterrupted_run(tmp_path):
    """Hook states were handed back by position: a watcher added on resume shifted SAT's table to another hook."""
    ds = tiny_dataset(n=200, channels=1, size=8)
    kw = dict(epochs=4, batch_size=20, lr=0.003, optimizer="adam", progress=False, loss="sat", sat_start=1,
              sat_alpha=0.6)
    reference = ticketlab.train("lenet_300_100", ds, store=tmp_path / "ref", **kw)
    for store, before, after in (("a", [InterruptAt(25)], [_Watch(), _Watch()]),
                                 ("b", [_Watch(), InterruptAt(25)], [])):
        with pytest.raises(KeyboardInterrupt):
            ticketlab.train("lenet_300_100", ds, store=tmp_path / store, hooks=before, **kw)
        resumed = ticketlab.train("lenet_300_100", ds, store=tmp_path / store, hooks=after, **kw)
        assert resumed.run_id == reference.run_id
        for key, value in reference.model.state_dict().items():
            assert torch.equal(resumed.model.state_dict()[key], value), (store, key)


def test_a_users_registered_loader_is_identified_by_what_it_serves(tmp_path, monkeypatch):
    """Its name does not fix its data (ticketlab's own datasets' names do): other data must never reuse a run."""
    from ticketlab.data import DATASETS, register_dataset

    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))
    version = {"seed": 0}
    register_dataset("served")(lambda data_dir, download: tiny_dataset(n=64, seed=version["seed"]))
    options = dict(store=tmp_path, epochs=1, batch_size=32, progress=False)
    first = ticketlab.train("lenet_300_100", "served", **options)
    assert ticketlab.train("lenet_300_100", "served", **options).reused
    version["seed"] = 1
    other = ticketlab.train("lenet_300_100", "served", **options)
    assert not other.reused and other.run_id != first.run_id
