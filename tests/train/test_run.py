import pytest
import torch

import ticketlab
from ticketlab.config import DataConfig
from ticketlab.data.augment import Augment
from ticketlab.sparsity import density
from ticketlab.train.run import default_augment

from conftest import need
from helpers import DEVICES, TinyNet, tiny_dataset


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
                             precision="bf16", progress=False, model_options={"widths": [16, 32, 32]})
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
