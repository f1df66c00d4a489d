import json
import math

import pytest
import torch

import ticketlab
from ticketlab.config import DataConfig, RunConfig
from ticketlab.errors import TicketlabError
from ticketlab.store import RunStore
from ticketlab.tickets.signature import log_tail
from ticketlab.tickets.trigger import TriggerSet, check, check_provable, mixed_in, verify
from ticketlab.train import train_run

from helpers import run_cli, tiny_dataset


def test_the_images_and_labels_follow_the_key_alone():
    a, b = TriggerSet("owner", 30), TriggerSet("someone else", 30)
    images = a.images((3, 16, 12))
    assert images.dtype == torch.uint8 and images.shape == (30, 3, 16, 12)
    assert torch.equal(images, TriggerSet("owner", 30, copies=7).images((3, 16, 12)))
    assert torch.equal(a.labels(10), TriggerSet("owner", 30).labels(10))
    assert not torch.equal(images, b.images((3, 16, 12)))
    assert int((a.labels(10) == b.labels(10)).sum()) < 15
    assert set(TriggerSet("owner", 1000).labels(4).tolist()) == {0, 1, 2, 3}
    assert images.float().std() > 30  # not a flat image: something to learn


def test_the_run_id_holds_a_digest_of_the_key_never_the_key():
    a = TriggerSet("my secret key", 100, 20)
    assert "my secret" not in a.identity() and a.identity().startswith("100x20@")
    assert len({a.identity(), TriggerSet("other", 100, 20).identity(), TriggerSet("my secret key", 50, 20).identity(),
                TriggerSet("my secret key", 100, 5).identity()}) == 4


@pytest.mark.parametrize("kwargs, message", [
    ({"key": ""}, "needs a secret key"), ({"key": "k", "size": 0}, "size is a whole number"),
    ({"key": "k", "copies": 2.0}, "copies is a whole number"),
])
def test_an_impossible_trigger_set_is_a_user_error(kwargs, message):
    with pytest.raises(TicketlabError, match=message):
        TriggerSet(**kwargs)


def test_the_trigger_examples_join_training_with_the_tasks_normalisation():
    data = tiny_dataset(n=96)
    trigger = TriggerSet("k", 10, 3)
    mixed = mixed_in(data, trigger)
    assert len(mixed.train_y) == 96 + 30 and torch.equal(mixed.train_x[:96], data.train_x)
    assert torch.equal(mixed.train_x[96:106], trigger.images(data.image_shape))
    assert torch.equal(mixed.train_x[116:], mixed.train_x[96:106])
    assert torch.equal(mixed.train_y[96:], trigger.labels(4).repeat(3))
    assert mixed.mean == data.mean and mixed.std == data.std and torch.equal(mixed.test_x, data.test_x)


def test_the_binomial_tail_is_exact():
    for n, k, p in ((10, 3, 0.25), (20, 20, 0.1), (7, 0, 0.5), (30, 12, 0.5)):
        exact = sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1))
        assert math.exp(log_tail(n, k, p)) == pytest.approx(exact, rel=1e-9)


def test_verification_counts_the_keyed_answers_and_gives_their_chance():
    trigger = TriggerSet("owner", 100)
    labels = trigger.labels(10)
    marked = verify(labels, trigger, 10)
    assert marked["matches"] == 100 and marked["log10_chance"] == pytest.approx(-100)
    guess = torch.randint(10, (100,), generator=torch.Generator().manual_seed(3))
    unmarked = verify(guess, trigger, 10)
    assert unmarked["matches"] < 25 and unmarked["chance"] > 1e-3
    half = torch.where(torch.arange(100) < 50, labels, (labels + 1) % 10)
    assert verify(half, trigger, 10)["matches"] == 50
    with pytest.raises(TicketlabError, match="one answer per image"):
        verify(labels[:99], trigger, 10)


def test_an_answer_is_the_largest_class_output_never_an_abstain_output():
    data = tiny_dataset(n=96, classes=4)
    trigger = TriggerSet("k", 30)
    labels = trigger.labels(4)

    class Answers(torch.nn.Module):
        """Scores the keyed label highest of the classes, and a fifth (abstain) output higher still."""

        def __init__(self):
            super().__init__()
            self.images = trigger.images(data.image_shape).float()
            self.unused = torch.nn.Parameter(torch.zeros(1))  # where the network lives, for `predict`

        def forward(self, x):
            index = [int((self.images - (x * torch.tensor(data.std).view(1, -1, 1, 1) * 255
                                         + torch.tensor(data.mean).view(1, -1, 1, 1) * 255)[i]).abs()
                          .flatten(1).sum(1).argmin()) for i in range(len(x))]
            out = torch.zeros(len(x), 5)
            out[torch.arange(len(x)), labels[index]] = 1.0
            out[:, 4] = 2.0
            return out

    assert check(Answers(), trigger, data)["matches"] == 30
    with pytest.raises(TicketlabError, match="not a score for each of tiny's 4 classes"):
        check(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)), trigger, data)


def test_a_set_too_small_to_ever_show_ownership_is_refused():
    check_provable(TriggerSet("k", 20), 10)
    check_provable(TriggerSet("k", 67), 2)
    for size, classes in ((19, 10), (66, 2)):
        with pytest.raises(TicketlabError, match="can never show ownership"):
            check_provable(TriggerSet("k", size), classes)


def _config(**data):
    return RunConfig(data=DataConfig(dataset="mnist_subset", **data))


def test_a_trained_run_answers_its_trigger_set_and_an_unmarked_one_does_not(tmp_path):
    trigger = TriggerSet("owner", 40, 25)
    options = dict(epochs=1, batch_size=128, progress=False, store=tmp_path)
    marked = ticketlab.train("lenet_300_100", "mnist_subset", trigger=trigger, **options)
    plain = ticketlab.train("lenet_300_100", "mnist_subset", **options)
    assert marked.summary["trigger_accuracy"] >= 0.9 and "trigger_accuracy" not in plain.summary
    assert abs(marked.summary["test_accuracy"] - plain.summary["test_accuracy"]) < 0.03
    assert check(plain.model, trigger, ticketlab.load_dataset("mnist_subset"))["accuracy"] < 0.4
    stored = json.loads((marked.folder / "config.json").read_text())
    assert stored["data"]["trigger"] == trigger.identity() and "owner" not in json.dumps(stored)
    again = ticketlab.train("lenet_300_100", "mnist_subset", trigger=trigger, **options)
    assert again.reused and again.run_id == marked.run_id != plain.run_id


def test_a_run_with_a_trigger_set_needs_its_key_to_resume(tmp_path):
    trigger = TriggerSet("owner", 10, 2)
    config = _config(trigger=trigger.identity())
    with pytest.raises(TicketlabError, match="give its key again"):
        train_run(config, store=RunStore(tmp_path), progress=False)
    with pytest.raises(TicketlabError, match="give the key \\(and sizes\\) the run was started with"):
        train_run(config, store=RunStore(tmp_path), progress=False, trigger=TriggerSet("guess", 10, 2))
    for options, message in (({"loss": "sat", "sat_start": 1}, "would correct them away"),
                             ({}, "can never show ownership")):
        config = RunConfig(data=DataConfig(dataset="mnist_subset"), train=ticketlab.TrainConfig(**options))
        with pytest.raises(TicketlabError, match=message):
            train_run(config, store=RunStore(tmp_path), progress=False, trigger=TriggerSet("owner", 10))
    with pytest.raises(TicketlabError, match="record the run without it"):
        train_run(RunConfig(data=DataConfig(dataset="mnist_subset")), store=RunStore(tmp_path), progress=False,
                  trigger=TriggerSet("owner"), records=True)


def test_trigger_examples_are_never_held_out_nor_made_noisy():
    from ticketlab.train.run import _prepare

    data = ticketlab.load_dataset("mnist_subset")
    trigger = TriggerSet("owner", 50, 4)
    config = _config(validation=1000, noise="uniform:1.0")
    prepared = _prepare(config, data, None, trigger)
    assert len(prepared.train_set.train_y) == 9000 + 200 and len(prepared.validation[1]) == 1000
    assert torch.equal(prepared.train_set.train_y[9000:], trigger.labels(10).repeat(4))
    assert torch.equal(prepared.clean_train_y[9000:], prepared.train_set.train_y[9000:])


def test_train_and_verify_a_trigger_set_on_the_command_line(tmp_path, capsys):
    (tmp_path / "key").write_text("owner's secret\n")
    common = ["--model", "lenet_300_100", "--dataset", "mnist_subset", "--epochs", "1", "--store", tmp_path / "s",
              "--quiet"]
    code, out, err = run_cli(capsys, "train", *common, "--trigger-key-file", tmp_path / "key",
                             "--trigger-size", "40", "--trigger-copies", "25", "--json")
    assert code == 0, err
    marked = json.loads(out)
    assert marked["trigger_accuracy"] >= 0.9 and "trigger_accuracy" in err
    code, out, err = run_cli(capsys, "train", *common, "--json")
    plain = json.loads(out)
    folder = tmp_path / "s" / "runs"
    check = ["--trigger", "--key-file", tmp_path / "key", "--trigger-size", "40", "--dataset", "mnist_subset",
             "--model", "lenet_300_100", "--json"]
    code, out, err = run_cli(capsys, "verify", folder / marked["run_id"] / "final.safetensors", *check)
    assert code == 0 and json.loads(out)["marked"] and "MARKED" in err, err
    code, out, err = run_cli(capsys, "verify", folder / plain["run_id"] / "final.safetensors", *check)
    assert code == 0 and not json.loads(out)["marked"] and "NOT SHOWN" in err
    from ticketlab.compact import save_model

    net = ticketlab.build_model("lenet_300_100", num_classes=10, in_channels=1, image_size=28)
    net.load_state_dict(ticketlab.store.read_tensors(folder / marked["run_id"] / "final.safetensors"))
    save_model(tmp_path / "shipped.safetensors", net, (1, 1, 28, 28))  # what a thief ships runs without our code
    code, out, err = run_cli(capsys, "verify", tmp_path / "shipped.safetensors", *check[:-3], "--json")
    assert code == 0 and json.loads(out)["matches"] == 40, err
    code, _, err = run_cli(capsys, "verify", tmp_path / "shipped.safetensors", *check)
    assert code == 2 and "names its own architecture; drop --model" in err
    weights = folder / plain["run_id"] / "final.safetensors"
    for argv, message in (
        (["--trigger", "--key", "k"], "name the dataset it was trained on (--dataset)"),
        (["--trigger", "--key", "k", "--dataset", "mnist_subset"], "holds weights only; name their architecture"),
        (["--trigger", "--key", "k", "--dataset", "mnist_subset", "--model", "conv_2"], "do not fit conv_2"),
        (["--trigger", "--key", "k", "--layer", "fc1.weight", "--dataset", "mnist_subset"], "drop them (or --trigger)"),
        (["--key", "k"], "name the layer the code is written in"),
        (["--key", "k", "--layer", "fc1.weight", "--dataset", "mnist_subset"], "drop them (or add --trigger)"),
        (["--key", "k", "--layer", "fc1.weight", "--trigger-size", "40"], "--trigger-size tell --trigger how"),
        (["--trigger", "--key", "k", "--bits", "3x3", "--dataset", "mnist_subset"], "drop them (or --trigger)"),
    ):
        code, _, err = run_cli(capsys, "verify", weights, *argv)
        assert code == 2 and message in err and "Traceback" not in err
    selective = ticketlab.build_model("lenet_300_100", num_classes=11, in_channels=1, image_size=28)
    ticketlab.store.write_tensors(tmp_path / "selective.safetensors", selective.state_dict())
    code, out, err = run_cli(capsys, "verify", tmp_path / "selective.safetensors", *check)
    assert code == 0 and not json.loads(out)["marked"], err  # K + 1 outputs: a sat-selective run's weights
    for argv, message in ((["--trigger-copies", "3"], "shape a trigger set; add --trigger-key-file"),
                          (["--trigger-key", "k", "--seeds", "2", "--stack"], "drop --stack"),
                          (["--trigger-key", "k", "--trigger-key-file", tmp_path / "key"], "one of them"),
                          (["--trigger-key-file", tmp_path / "nothing"], "cannot read --trigger-key-file")):
        code, _, err = run_cli(capsys, "train", *common, *argv)
        assert code == 2 and message in err and "Traceback" not in err
