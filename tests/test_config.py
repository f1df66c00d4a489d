import dataclasses

import pytest

from ticketlab.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    canonical_json,
    from_dict,
    run_id,
    scaled_train,
    to_dict,
)
from ticketlab.errors import TicketlabError
from ticketlab.train import recipe_config


def test_run_id_is_stable_across_releases():
    # a stored run must keep its id: if this changes, every user's store is orphaned
    cfg = RunConfig(data=DataConfig(dataset="cifar10"), model=ModelConfig(name="cifar_resnet_20"),
                    train=TrainConfig(epochs=160, lr=0.1, schedule="step", milestones=(80.0, 120.0)))
    assert canonical_json(cfg) == (
        '{"data":{"dataset":"cifar10"},"model":{"name":"cifar_resnet_20"},'
        '"train":{"epochs":160,"milestones":[80.0,120.0],"schedule":"step"}}'
    )
    assert run_id(cfg) == "63001bdeefaa9008"


def test_defaults_do_not_enter_the_hash():
    """Adding a new option with a default must not change existing run ids."""
    base = RunConfig(train=TrainConfig(epochs=3))

    @dataclasses.dataclass(frozen=True)
    class NewTrainConfig(TrainConfig):
        brand_new_option: float = 0.0

    extended = RunConfig(train=NewTrainConfig(epochs=3))
    assert run_id(base) == run_id(extended)
    assert run_id(RunConfig(train=NewTrainConfig(epochs=3, brand_new_option=1.0))) != run_id(base)


def test_equal_settings_equal_ids_and_each_field_matters():
    assert run_id(RunConfig(train=TrainConfig(lr=0.1))) == run_id(RunConfig(train=TrainConfig(lr=1e-1)))
    ids = {run_id(RunConfig(train=TrainConfig(seed=s))) for s in range(5)}
    assert len(ids) == 5
    assert run_id(RunConfig(device="cuda")) != run_id(RunConfig(device="cpu"))
    assert run_id(RunConfig(masks="abc")) != run_id(RunConfig())


def test_round_trip():
    cfg = RunConfig(
        model=ModelConfig("fastnet", (("widths", (64, 128, 128)),)),
        train=TrainConfig(milestones=(3.0,), schedule="step"),
    )
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


def test_model_options_are_canonical():
    """Lists (JSON, the CLI) and tuples, in any order, name the same model."""
    a = ModelConfig.of("fastnet", {"widths": [8, 16], "convs_per_group": 1})
    b = ModelConfig.of("fastnet", {"convs_per_group": 1, "widths": (8, 16)})
    assert a == b and a.kwargs == (("convs_per_group", 1), ("widths", (8, 16)))
    assert ModelConfig.of("fastnet") == ModelConfig("fastnet", architecture="revision 1")
    assert run_id(RunConfig(model=a)) == run_id(RunConfig(model=b)) != run_id(RunConfig(model=ModelConfig("fastnet")))


@pytest.mark.parametrize("given,needs", [
    ({"milestones": (5.0,)}, "--schedule step"),
    ({"gamma": 0.5}, "--schedule step"),
    ({"lr_end": 0.1, "schedule": "constant"}, "--schedule cosine or linear"),
    ({"lr_start": 0.1}, "--warmup"),
    ({"optimizer": "adam", "momentum": 0.5}, "--optimizer sgd"),
    ({"optimizer": "adamw", "nesterov": False}, "--optimizer sgd"),
    ({"momentum": 0.0, "nesterov": False}, "--momentum above 0"),
    ({"ema_every": 3}, "--ema"),
    ({"loss_scale": 1024.0}, "--precision fp16"),
    ({"sat_alpha": 0.8}, "--loss sat"),
])
def test_options_that_would_be_ignored_are_refused(given, needs):
    with pytest.raises(TicketlabError, match=needs):
        recipe_config(None, epochs=10, **given)


def test_recipe_values_are_not_taken_for_given_options():
    # cifar_resnet_20's recipe sets milestones and gamma; a user switching to cosine has not set them
    assert recipe_config("cifar_resnet_20", schedule="cosine").schedule == "cosine"
    assert recipe_config(None, schedule="step", milestones=(3.0,), gamma=0.5, epochs=10).gamma == 0.5


def test_gamma_must_be_positive():
    with pytest.raises(TicketlabError, match="--gamma"):
        TrainConfig(schedule="step", milestones=(2.0,), gamma=-1.0).validate()


@pytest.mark.parametrize("scale", [1000.0, -2.0, 0.3])
def test_a_fixed_loss_scale_must_be_a_power_of_two(scale):
    with pytest.raises(TicketlabError, match="--loss-scale must be 0 .* or a power of two"):
        TrainConfig(precision="fp16", loss_scale=scale).validate()
    for scale in (2.0**1023, 2.0**-150):  # powers of two that overflow or vanish: not a divergence to blame on --lr
        with pytest.raises(TicketlabError, match="from 2\\^-24 to 2\\^24"):
            TrainConfig(precision="fp16", loss_scale=scale).validate()


def test_milestones_in_any_order_are_one_schedule_and_one_run():
    a, b = (RunConfig(train=TrainConfig(schedule="step", milestones=m)) for m in ((120.0, 80.0), (80.0, 120.0)))
    assert run_id(a) == run_id(b) and b.train.milestones == (80.0, 120.0)


def test_cuda_graphs_enter_the_run_id_and_exclude_compile():
    assert run_id(RunConfig(train=TrainConfig(cuda_graph=True))) != run_id(RunConfig())
    with pytest.raises(TicketlabError, match="--cuda-graph and --compile both"):
        TrainConfig(cuda_graph=True, compile=True).validate()


def test_a_fixed_loss_scale_enters_the_run_id_and_its_absence_does_not():
    assert run_id(RunConfig()) == run_id(RunConfig(train=TrainConfig(loss_scale=0.0)))
    assert run_id(RunConfig(train=TrainConfig(loss_scale=1024.0))) != run_id(RunConfig())
    TrainConfig(precision="fp16", loss_scale=0.5).validate()  # powers of two below one are fine too


def test_a_scaled_schedule_keeps_its_shape():
    cfg = TrainConfig(epochs=160, schedule="step", milestones=(80.0, 120.0), warmup_epochs=2.0)
    small = scaled_train(cfg, 0.5)  # a PrAC search on half the data
    assert small.epochs == 80 and small.milestones == (40.0, 60.0) and small.warmup_epochs == 1.0
    tiny = scaled_train(cfg, 0.001)
    assert tiny.epochs == 1 and tiny.milestones == (0.5, 0.75)
    tiny.validate()
    longer = scaled_train(cfg, 29 / 16)  # a scratch baseline's budget
    assert longer.epochs == 290 and longer.milestones == (145.0, 217.5) and longer.warmup_epochs == 3.625
    longer.validate()
    sat = TrainConfig(epochs=200, loss="sat", sat_start=60, schedule="step", milestones=(80.0, 120.0))
    assert scaled_train(sat, 0.5).sat_start == 30 and scaled_train(sat, 2.0).sat_start == 120
    assert scaled_train(sat, 0.001).sat_start == 0  # one epoch: SAT from the start, still inside training


def test_equal_values_written_as_int_float_or_bool_are_one_run():
    ints = RunConfig(train=TrainConfig(lr=1, weight_decay=0, milestones=(5,), drop_last=1, schedule="step"))
    floats = RunConfig(train=TrainConfig(lr=1.0, weight_decay=0.0, milestones=(5.0,), drop_last=True, schedule="step"))
    assert ints == floats and run_id(ints) == run_id(floats)
    assert ints.train.milestones == (5.0,) and ints.train.drop_last is True


@pytest.mark.parametrize("bad, message", [
    (dict(weight_decay=float("nan")), "--weight-decay must be a finite number"),
    (dict(lr=float("inf")), "--lr must be a finite number"),
    (dict(bias_lr_scale=float("inf")), "--bias-lr-scale must be a finite"),
    (dict(epochs=2.5), "--epochs must be a whole number"),
    (dict(batch_size=8.5), "--batch-size must be a whole number"),
    (dict(lookahead_every=2.5), "--lookahead must be a whole number"),
    (dict(schedule="step", milestones=(float("nan"),)), "--milestones must be a finite"),
    (dict(nesterov="yes"), "--nesterov must be true or false"),
])
def test_settings_of_the_wrong_kind_are_user_errors(bad, message):
    with pytest.raises(TicketlabError, match=message):
        TrainConfig(**bad).validate()


def test_a_model_option_that_is_not_plain_data_is_a_user_error():
    with pytest.raises(TicketlabError, match="plain numbers"):
        run_id(RunConfig(model=ModelConfig.of("fastnet", {"dtype": float})))


@pytest.mark.parametrize("options, message", [
    ({"epochs": "5"}, "--epochs must be a whole number"),  # scaled before the config checks its types
    ({"milestones": 5, "schedule": "step"}, "--milestones must be a list of epochs"),
    ({"loss": "sat", "sat_start": 0, "label_smoothing": 0.1}, "--label-smoothing has no effect without --loss ce"),
])
def test_wrong_kinds_of_training_options_are_user_errors(options, message):
    with pytest.raises(TicketlabError, match=message):
        recipe_config("cifar_resnet_20", **options)


def test_numpy_whole_numbers_are_epochs_too():
    import numpy as np

    assert recipe_config("cifar_resnet_20", epochs=np.int64(16)) == recipe_config("cifar_resnet_20", epochs=16)
    with pytest.raises(TicketlabError, match="--epochs must be a whole number"):
        recipe_config("cifar_resnet_20", epochs=True)


def test_data_options_of_the_wrong_kind_are_user_errors():
    with pytest.raises(TicketlabError, match="--noise-seed must be a whole number, got 1.5"):
        DataConfig(noise="uniform:0.2", noise_seed=1.5)


def test_a_recipes_setting_that_does_not_act_goes_back_to_its_default():
    """fastnet's label smoothing under SAT, ResNet's milestones under a cosine schedule: stored, they said the run
    used what it did not (and split equal runs)."""
    from ticketlab.train import recipe_config

    sat = recipe_config("fastnet", loss="sat", sat_start=2)
    assert sat.label_smoothing == 0.0 and recipe_config("fastnet").label_smoothing == 0.2
    cosine = recipe_config("cifar_resnet_20", schedule="cosine")
    assert cosine.milestones == () and recipe_config("cifar_resnet_20").milestones == (80.0, 120.0)
    with pytest.raises(TicketlabError, match="--label-smoothing has no effect"):  # the user's own: refused
        recipe_config("fastnet", loss="sat", sat_start=2, label_smoothing=0.2)


@pytest.mark.parametrize("moot", [dict(schedule="cosine", lr_end=1.0), dict(schedule="linear", lr_end=1.0),
                                  dict(schedule="step", milestones=(3.0,), gamma=1.0),
                                  dict(schedule="constant", warmup_epochs=2.0, lr_start=1.0)])
def test_a_schedule_that_never_moves_the_lr_is_the_constant_one(moot):
    """Its factor is exactly 1.0 at every step, so it trains the constant schedule's run and shares its id."""
    from ticketlab.train.optim import lr_factor

    constant = recipe_config("lenet_300_100", schedule="constant")
    flat = recipe_config("lenet_300_100", **moot)
    assert flat == constant and run_id(RunConfig(train=flat)) == run_id(RunConfig(train=constant))
    given = dataclasses.replace(constant, **moot)
    assert all(lr_factor(given, i, 10) == 1.0 for i in range(given.epochs * 10))
    moving = recipe_config("lenet_300_100", schedule="cosine", lr_end=0.999)
    assert moving.schedule == "cosine" and lr_factor(moving, 50, 10) < 1.0


def test_a_setting_of_the_wrong_kind_is_named_when_the_config_is_made():
    """A string warm-up used to reach a comparison first and fail there as a TypeError."""
    with pytest.raises(TicketlabError, match="--warmup must be a finite number, got '2'"):
        recipe_config("lenet_300_100", warmup_epochs="2")
    with pytest.raises(TicketlabError, match="--milestones must be a list of numbers"):
        TrainConfig(milestones=80.0)
