"""Model zoo: every model builds and runs, sizes match the papers, errors name the fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.models import MODELS, build_model, list_models, model_augment, model_recipe, register_model
from ticketlab.models.registry import RECIPE_KEYS

# Too big to run twice per test session on two CPU cores: one forward at batch 1 only.
BIG = {"resnet34", "wide_resnet_28_10"}

# Exact counts for 3x32x32 -> 10 classes, and the published (rounded) sizes they must be near.
PARAM_COUNTS = {
    "cifar_resnet_20": (272_474, 0.27e6),  # He et al. 2016: 0.27M
    "cifar_resnet_32": (466_906, 0.46e6),
    "cifar_resnet_56": (855_770, 0.85e6),
    "cifar_resnet_110": (1_730_714, 1.7e6),
    "cifar_vgg_16": (14_724_042, 14.7e6),
    "resnet18": (11_173_962, 11.17e6),
    "resnet34": (21_282_122, 21.28e6),
    "wide_resnet_16_4": (2_748_890, 2.7e6),  # Zagoruyko & Komodakis 2016: 2.7M
    "wide_resnet_28_10": (36_479_194, 36.5e6),  # 36.5M
    "conv_2": (4_301_642, 4.3e6),  # Frankle & Carbin 2019: 4.3M
    "conv_4": (2_425_930, 2.4e6),  # 2.4M
    "fastnet": (1_972_792, 1.97e6),
}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_all_families_registered() -> None:
    expected = {
        *(f"cifar_resnet_{d}" for d in (20, 32, 56, 110)),
        *(f"cifar_vgg_{d}" for d in (11, 13, 16, 19)),
        "resnet18",
        "resnet34",
        "wide_resnet_16_4",
        "wide_resnet_28_10",
        "lenet_300_100",
        "conv_2",
        "conv_4",
        "conv_6",
        "fastnet",
    }
    assert expected <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", sorted(set(list_models()) - BIG))
@pytest.mark.parametrize(("channels", "size", "classes"), [(3, 32, 10), (1, 28, 7)])
def test_forward_shape(name: str, channels: int, size: int, classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=classes, in_channels=channels, image_size=size)
    model.train()  # BN needs a batch > 1 here, which 2 images give
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(BIG))
def test_big_models_forward_once(name: str) -> None:
    model = build_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_counts(name: str) -> None:
    exact, published = PARAM_COUNTS[name]
    n = count(build_model(name))
    assert n == exact
    assert abs(n - published) / published < 0.02


def test_lenet_size_on_mnist() -> None:
    assert count(build_model("lenet_300_100", in_channels=1, image_size=28)) == 266_610


def test_layers_are_plain_torch_modules() -> None:
    # Later code finds prunable layers with isinstance and compacts ResNet blocks by name.
    model = build_model("cifar_resnet_20")
    block = model.stages[1][0]
    assert isinstance(block.conv1, nn.Conv2d) and isinstance(block.bn2, nn.BatchNorm2d)
    assert isinstance(block.shortcut[0], nn.Conv2d) and isinstance(block.shortcut[1], nn.BatchNorm2d)
    assert isinstance(model.stages[0][0].shortcut, nn.Identity)
    for name in ("cifar_resnet_20", "cifar_vgg_11", "lenet_300_100", "conv_2", "fastnet", "wide_resnet_16_4"):
        assert isinstance(build_model(name).fc, nn.Linear)


def test_resnet_init_is_kaiming_fan_out() -> None:
    torch.manual_seed(0)
    conv = build_model("resnet18").stages[3][0].conv2  # 512 -> 512, 3x3
    expected_std = (2 / (512 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)


@pytest.mark.parametrize("name", ["cifar_resnet_20", "cifar_vgg_16"])
def test_openlth_nets_start_from_openlths_init(name: str) -> None:
    """Kaiming normal with fan_in on every Conv2d and the fc, BatchNorm scales U(0, 1) (OpenLTH's
    model_init='kaiming_normal', batchnorm_init='uniform'): global pruning compares these scales."""
    torch.manual_seed(0)
    model = build_model(name)
    for layer in [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]:
        fan_in = layer.weight[0].numel()
        if layer.weight.numel() >= 1000:  # enough draws for the std to be within a few percent
            assert layer.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1), layer
    scales = torch.cat([m.weight.detach() for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert 0 <= scales.min() and scales.max() < 1 and abs(scales.mean().item() - 0.5) < 0.05


def test_cifar_vgg_pools_four_times_and_averages_the_last_map() -> None:
    """OpenLTH's plan: the last stage runs at 2x2, and the head takes its mean (not a fifth max-pool)."""
    torch.manual_seed(0)
    vgg = build_model("cifar_vgg_16").eval()
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 4
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        last = vgg.features(x)
        assert last.shape == (2, 512, 2, 2)
        assert torch.allclose(vgg(x), vgg.fc(last.mean((2, 3))), atol=1e-6)


def test_vgg_batchnorm_scales_start_uniform() -> None:
    torch.manual_seed(0)
    vgg = build_model("cifar_vgg_11")
    scales = torch.cat([m.weight.detach() for m in vgg.modules() if isinstance(m, nn.BatchNorm2d)])
    assert 0 <= scales.min() and scales.max() < 1 and scales.std() > 0.2  # U(0, 1), as OpenLTH


def test_recipes() -> None:
    assert model_recipe("cifar_resnet_20") == {
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1e-4,
        "batch_size": 128,
        "epochs": 160,
        "schedule": "step",
        "milestones": (80, 120),
        "gamma": 0.1,
    }
    assert model_recipe("wide_resnet_28_10")["gamma"] == 0.2
    assert model_recipe("conv_2")["lr"] == 2e-4 and model_recipe("conv_6")["lr"] == 3e-4
    for name in list_models():
        assert set(model_recipe(name)) <= RECIPE_KEYS
    # A copy: callers cannot change the registered defaults.
    model_recipe("resnet18")["lr"] = 99.0
    assert model_recipe("resnet18")["lr"] == 0.1


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(TicketlabError, match="unknown model 'resnet9000'.*cifar_resnet_20"):
        build_model("resnet9000")
    with pytest.raises(TicketlabError, match="cifar_resnet_20"):
        model_recipe("resnet9000")


def test_unknown_option_lists_accepted_ones() -> None:
    with pytest.raises(TicketlabError, match="'wide_resnet_16_4' has no option.*droput.*dropout"):
        build_model("wide_resnet_16_4", droput=0.3)
    with pytest.raises(TicketlabError, match="options are: none"):
        build_model("cifar_resnet_20", width=2)
    with pytest.raises(TicketlabError, match="head_scale"):
        build_model("fastnet", bogus=1)


def test_bad_shapes_and_options() -> None:
    with pytest.raises(TicketlabError, match="num_classes must be a positive integer"):
        build_model("cifar_resnet_20", num_classes=0)
    with pytest.raises(TicketlabError, match="cifar_vgg_16 needs image_size >= 16"):
        build_model("cifar_vgg_16", image_size=8)
    with pytest.raises(TicketlabError, match="conv_6 needs image_size >= 8"):
        build_model("conv_6", image_size=4)
    with pytest.raises(TicketlabError, match="fastnet needs image_size >= 9"):
        build_model("fastnet", image_size=8)
    with pytest.raises(TicketlabError, match="whiten_width"):  # fixed by the data-dependent init, no option
        build_model("fastnet", whiten_width=32)
    for scale in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(TicketlabError, match="head_scale must be a positive finite number"):
            build_model("fastnet", head_scale=scale)
    with pytest.raises(TicketlabError, match="dropout must be in"):
        build_model("wide_resnet_16_4", dropout=1.0)


def test_wide_resnet_dropout_option() -> None:
    model = build_model("wide_resnet_16_4", dropout=0.3)
    assert model.stages[0][0].dropout.p == 0.3


def test_fastnet_layout() -> None:
    model = build_model("fastnet", widths=(32, 64), convs_per_group=3, num_classes=5)
    assert model.whiten.out_channels == 24 and model.whiten.kernel_size == (2, 2)
    assert len(model.groups) == 2 and isinstance(model.groups[1].conv3, nn.Conv2d)
    assert model.fc.bias is None and model.head_scale == pytest.approx(1 / 9)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 6
    for norm in norms:
        assert norm.momentum == 0.4 and norm.eps == 1e-12
        assert not norm.weight.requires_grad and norm.bias.requires_grad
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("size", [32, 28, 9])
def test_fastnet_head_pools_the_whole_final_map(size: int) -> None:
    """The head's one max-pool window must cover the map the groups leave, as a global max-pool does."""
    model = build_model("fastnet", widths=(8, 16, 16), image_size=size).eval()
    features = model.groups(model.act(model.whiten(torch.randn(2, 3, size, size))))
    pooled = model.pool(features)
    assert pooled.shape[-2:] == (1, 1)
    assert torch.equal(pooled, nn.AdaptiveMaxPool2d(1)(features))


def correlated_images(n: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Noise with channel mixing, spatial smoothing and an offset: strongly correlated patches."""
    noise = torch.randn(n, channels, size + 2, size + 2, generator=generator)
    smooth = torch.nn.functional.avg_pool2d(noise, 3, stride=1) + 0.3 * noise[:, :, 1:-1, 1:-1]
    mix = torch.randn(channels, channels, generator=generator) + 2 * torch.eye(channels)
    return torch.einsum("dc,nchw->ndhw", mix, smooth) + 0.5


@pytest.mark.parametrize("channels", [3, 1])
def test_fastnet_whitening(channels: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x = correlated_images(200, channels, 16, gen)
    model = build_model("fastnet", in_channels=channels, image_size=16)
    dims = channels * 4
    assert model.whiten.weight.requires_grad
    model.initialize_from_data(x)
    weight = model.whiten.weight
    assert not weight.requires_grad
    assert torch.equal(weight[dims:], -weight[:dims])

    out = torch.nn.functional.conv2d(x, weight[:dims])  # [N, dims, H-1, W-1]
    flat = out.permute(1, 0, 2, 3).reshape(dims, -1).double()
    second_moment = flat @ flat.T / flat.shape[1]  # not centred, as in airbench
    assert torch.allclose(second_moment, torch.eye(dims, dtype=torch.float64), atol=2e-2)
    assert not torch.allclose(torch.cov(flat), torch.eye(dims, dtype=torch.float64), atol=2e-2)  # the data has a mean
    # Channel 0 is the top principal direction: of all unit filters it has the largest second moment.
    raw = x.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, dims).double()
    moments = torch.linalg.eigvalsh(raw.T @ raw / len(raw))
    assert 1 / weight[0].double().pow(2).sum() == pytest.approx(moments[-1].item() + 5e-4, rel=1e-3)

    # The frozen whitening stays put under training.
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = weight.clone()
    model(x[:2]).sum().backward()
    opt.step()
    assert torch.equal(model.whiten.weight, before)


def test_fastnet_whitening_rejects_wrong_input() -> None:
    model = build_model("fastnet")
    with pytest.raises(TicketlabError, match=r"\[N, 3, H, W\]"):
        model.initialize_from_data(torch.randn(10, 1, 28, 28))
    with pytest.raises(TicketlabError, match="more than 12"):
        model.initialize_from_data(torch.randn(1, 3, 2, 2))


def test_register_user_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # Work on a copy of the table so the test leaves the registry as it found it.
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))

    @register_model("tiny_linear", {"lr": 0.05, "epochs": 3})
    def tiny(num_classes: int, in_channels: int, image_size: int, hidden: int = 8) -> nn.Module:
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size**2, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    assert "tiny_linear" in list_models()
    model = build_model("tiny_linear", num_classes=4, in_channels=1, image_size=5, hidden=3)
    assert model(torch.randn(2, 1, 5, 5)).shape == (2, 4)
    assert model_recipe("tiny_linear") == {"lr": 0.05, "epochs": 3}
    with pytest.raises(TicketlabError, match="options are: hidden"):
        build_model("tiny_linear", width=3)
    with pytest.raises(TicketlabError, match="already registered"):
        register_model("tiny_linear")(tiny)
    register_model("tiny_nothing")(lambda num_classes, in_channels, image_size: None)
    with pytest.raises(TicketlabError, match="returned NoneType, not an nn.Module"):
        build_model("tiny_nothing")


def test_every_registry_refuses_a_taken_or_non_string_name_as_a_user_error():
    from ticketlab.data import register_dataset
    from ticketlab.sparsity.criteria import CRITERIA

    with pytest.raises(TicketlabError, match="dataset 'cifar10' is already registered"):
        register_dataset("cifar10")(lambda data_dir, download: None)
    with pytest.raises(TicketlabError, match="already registered"):
        CRITERIA.register("snip")(lambda *a: None)
    for name in (123, ""):
        with pytest.raises(TicketlabError, match="non-empty string name"):
            register_dataset(name)


def test_register_rejects_bad_recipe_and_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))
    with pytest.raises(TicketlabError, match="unknown key.*learning_rate.*use only"):
        register_model("bad_recipe", {"learning_rate": 0.1})
    with pytest.raises(TicketlabError, match="image_size"):
        register_model("bad_signature")(lambda num_classes, in_channels: nn.Linear(1, num_classes))
    assert "bad_recipe" not in list_models() and "bad_signature" not in list_models()


def test_fastnet_convs_start_as_partial_identities() -> None:
    model = build_model("fastnet", widths=(32, 64), num_classes=5)
    x = torch.randn(2, 32, 6, 6)
    for conv in (model.groups[0].conv1, model.groups[0].conv2, model.groups[1].conv1):
        k = conv.in_channels
        # the first k output channels copy the input channels
        assert torch.equal(torch.nn.functional.conv2d(x[:, :k], conv.weight[:k], padding=1), x[:, :k])
    assert model.groups[1].conv1.weight[32:].abs().sum() > 0  # filters beyond the inputs keep a random init


def test_fastnet_recipe_is_airbench94s() -> None:
    recipe = model_recipe("fastnet")
    assert recipe["lr_start"] == 0.2 and recipe["lr_end"] == 0.07 and recipe["warmup_epochs"] == 2.3
    assert recipe["bias_lr_scale"] == 64.0 and recipe["lookahead_every"] == 5 and recipe["batch_size"] == 1024
    assert recipe["drop_last"]
    assert model_augment("fastnet") == {"crop_padding": 2, "reflect": True, "flip": True, "alternate_flip": True}
    assert model_augment("cifar_resnet_20") == {}
    hooks = build_model("fastnet").training_hooks()
    assert [h.epochs for h in hooks] == [3]


def test_unknown_augment_key_in_registration_is_an_error() -> None:
    with pytest.raises(TicketlabError, match="augment for model 'bad_aug' has unknown key"):
        register_model("bad_aug", augment={"rotate": 10})


def test_a_models_revision_enters_run_ids_and_refuses_its_old_ticket_files(monkeypatch, tmp_path) -> None:
    """A changed builder must not reuse stored runs of the old network, nor load its ticket files."""
    import dataclasses

    from ticketlab.config import ModelConfig, RunConfig, run_id
    from ticketlab.tickets.ticketfile import load_ticket, save_ticket
    from ticketlab.train.run import _identify

    from helpers import tiny_dataset

    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))
    assert ModelConfig.of("cifar_vgg_16").architecture == "revision 1"
    assert ModelConfig.of("lenet_300_100").architecture == ""  # first revisions keep their old run ids
    ds = tiny_dataset(n=16, channels=1, size=8)
    written = RunConfig(model=ModelConfig("lenet_300_100"))
    model = build_model("lenet_300_100", num_classes=4, in_channels=1, image_size=8)
    path = save_ticket(tmp_path / "t.safetensors", model, {}, model_name="lenet_300_100", model_options={},
                       num_classes=4, in_channels=1, image_size=8)
    before = _identify(written, ds, None, None, None, 0, (), 0)[0]
    MODELS._entries["lenet_300_100"] = dataclasses.replace(MODELS._entries["lenet_300_100"], revision=2)
    after = _identify(written, ds, None, None, None, 0, (), 0)[0]
    assert after.model.architecture == "revision 2" and run_id(after) != run_id(before)
    assert run_id(after) == run_id(dataclasses.replace(written, model=ModelConfig.of("lenet_300_100")))
    with pytest.raises(TicketlabError, match="holds revision 0 of lenet_300_100, this ticketlab builds revision 2"):
        load_ticket(path)


def test_fastnet_whitening_bias_starts_at_zero() -> None:
    """airbench zeroes it: only the data-fitted filters shape the first layer (revision 1)."""
    model = build_model("fastnet")
    assert torch.equal(model.whiten.bias, torch.zeros_like(model.whiten.bias))
    assert MODELS.get("fastnet").revision == 1


@pytest.mark.parametrize("name", ["cifar_resnet_20", "cifar_vgg_11", "lenet_300_100", "wide_resnet_16_4", "conv_2"])
def test_reset_parameters_draws_the_nets_own_init(name: str) -> None:
    """A zoo net handed in as a module is re-initialised (other seeds, the re-init baseline) from its own
    init, not PyTorch's layer defaults (BatchNorm scales of 1, uniform conv weights)."""
    torch.manual_seed(0)
    built = build_model(name)
    fresh = build_model(name)
    torch.manual_seed(1)
    fresh.reset_parameters()
    for (key, a), b in zip(built.state_dict().items(), fresh.state_dict().values()):
        if key.endswith("num_batches_tracked") or "running" in key:
            continue
        assert not torch.equal(a, b) or a.unique().numel() == 1, key  # drawn afresh (constant tensors aside)
        # the same init distribution: matching spreads, per tensor
        assert b.float().std().item() == pytest.approx(a.float().std().item(), rel=0.5, abs=1e-6), key


def test_fastnet_reset_keeps_its_fitted_whitening_and_identity_start() -> None:
    model = build_model("fastnet", widths=(16, 32))
    model.initialize_from_data(torch.randn(100, 3, 8, 8))
    whitening = model.whiten.weight.clone()
    torch.manual_seed(3)
    model.reset_parameters()
    assert torch.equal(model.whiten.weight, whitening) and not model.whiten.weight.requires_grad
    assert torch.equal(model.whiten.bias, torch.zeros_like(model.whiten.bias))
    x = torch.randn(2, 16, 6, 6)
    conv = model.groups[1].conv1
    assert torch.equal(torch.nn.functional.conv2d(x, conv.weight[:16], padding=1), x)
    assert model.needs_data_init is False and build_model("fastnet").needs_data_init is True


def test_model_options_equal_to_defaults_give_one_identity() -> None:
    from ticketlab.config import ModelConfig

    plain = ModelConfig.of("wide_resnet_16_4")
    assert ModelConfig.of("wide_resnet_16_4", {"dropout": 0}) == plain
    assert ModelConfig.of("wide_resnet_16_4", {"dropout": 0.0}) == plain
    assert ModelConfig.of("wide_resnet_16_4", {"dropout": 1}) == ModelConfig.of("wide_resnet_16_4", {"dropout": 1.0})
    assert ModelConfig.of("wide_resnet_16_4", {"dropout": 0.3}) != plain
    assert ModelConfig.of("fastnet", {"widths": [64, 256, 256]}) == ModelConfig.of("fastnet")
    assert ModelConfig.of("fastnet", {"widths": [64, 128, 128]}).kwargs == (("widths", (64, 128, 128)),)


def test_required_options_and_bad_names_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))

    @register_model("needs_width")
    def needs_width(num_classes: int, in_channels: int, image_size: int, width: int) -> nn.Module:
        return nn.Linear(width, num_classes)

    with pytest.raises(TicketlabError, match="needs option.*width.*--model-arg width="):
        build_model("needs_width")
    assert build_model("needs_width", width=3).in_features == 3
    with pytest.raises(TicketlabError, match="non-empty string"):
        register_model(123)
    list_models()  # still sortable


def test_fastnet_too_small_images_suggest_fewer_widths() -> None:
    with pytest.raises(TicketlabError, match="fewer widths") as error:
        build_model("fastnet", image_size=28, widths=(8,) * 5)
    assert "or fastnet" not in str(error.value)


def test_resnet_110_warms_up_as_he_et_al_did_and_the_shallower_ones_do_not() -> None:
    from ticketlab.models import model_recipe

    deep = model_recipe("cifar_resnet_110")
    assert deep["warmup_epochs"] == 1.0 and deep["lr_start"] * deep["lr"] == pytest.approx(0.01)
    assert "warmup_epochs" not in model_recipe("cifar_resnet_56") and model_recipe("cifar_resnet_56")["lr"] == 0.1
