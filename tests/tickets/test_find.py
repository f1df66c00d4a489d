import json
from dataclasses import replace

import pytest
import torch
from torch import nn

import ticketlab.tickets.imp as imp
from ticketlab.errors import TicketlabError
from ticketlab.sparsity import load_masks
from ticketlab.store import RunStore, read_tensors
from ticketlab.tickets import TicketConfig, find_ticket
from ticketlab.train import Trainer

from helpers import TinyNet, tiny_dataset

ALL = ("reinit", "random", "shuffle", "oneshot", "finetune", "lr_rewind", "scratch")


def _find(tmp_path, **kw):
    ds = kw.pop("dataset", None) or tiny_dataset(n=120, channels=1, size=8)
    tickets = kw.pop("tickets", TicketConfig(levels=2, baselines=ALL, seeds=2, rewind="2it"))
    return find_ticket(kw.pop("model", "lenet_300_100"), ds, tickets=tickets, store=kw.pop("store", tmp_path),
                       epochs=3, batch_size=32, lr=0.003, progress=False, **kw)


def _comparable(summary):
    """The summary without wall times and paths, which differ between equal studies."""
    levels = [{k: v for k, v in row.items() if k != "ticket_seconds"} for row in summary["levels"]]
    kept = {k: v for k, v in summary.items() if k not in ("train_seconds", "dense_seconds", "plot")}
    return kept | {"levels": levels}


def test_tiny_end_to_end_study(tmp_path):
    result = _find(tmp_path)
    s = result.summary
    assert [r["level"] for r in s["levels"]] == [1, 2]
    assert [r["density"] for r in s["levels"]] == pytest.approx([0.8, 0.64], abs=1e-4)
    for row in s["levels"]:
        for arm in ("ticket",) + ALL:
            assert 0 <= row[arm]["mean"] <= 1 and row[arm]["std"] >= 0
        assert isinstance(row["winning"], bool)
    assert s["dense"]["n"] == 2 and s["verdict_on"] == "validation"
    assert (result.folder / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(s)  # the --json line must serialise
    # every ticket run kept its pruned weights at exactly zero
    store = RunStore(tmp_path)
    per_seed = json.loads((result.folder / "per_seed.json").read_text())
    for s_index, seed in enumerate(per_seed):
        for level in seed[1:]:
            masks = load_masks(result.folder / f"seed_{s_index}" / f"level_{level['level']}" / "masks.safetensors")
            if s_index == 0:
                assert all(torch.equal(masks[n], result.masks[level["level"] - 1][n]) for n in masks)
            final = read_tensors(store.folder(level["runs"]["ticket"]) / "final.safetensors")
            for name, m in masks.items():
                assert torch.all(final[name][~m] == 0), name
    # masks nest: each level prunes only weights that were still alive
    assert all(torch.all(result.masks[1][n] <= result.masks[0][n]) for n in result.masks[0])


def test_scratch_trains_the_reinit_start_for_the_epochs_imp_spent(tmp_path):
    tickets = TicketConfig(levels=2, baselines=("reinit", "scratch"), rewind="3it")
    result = _find(tmp_path, tickets=tickets, schedule="step", milestones=(1.5,))
    store = RunStore(tmp_path)
    per_seed = json.loads((result.folder / "per_seed.json").read_text())
    steps = store.get(per_seed[0][0]["runs"]["ticket"]).summary["iterations"] // 3
    for level in per_seed[0][1:]:
        ticket, reinit, scratch = (store.get(level["runs"][arm]) for arm in ("ticket", "reinit", "scratch"))
        spent = 3 * steps + level["level"] * (3 * steps - 3)  # the dense run, then each level from iteration 3
        epochs = -(-spent // steps)
        assert scratch.config["train"]["epochs"] == epochs and scratch.summary["iterations"] == epochs * steps
        assert scratch.config["train"]["milestones"] == [round(1.5 * epochs / 3, 4)]  # the schedule stretched
        assert scratch.config["start"] == 0 and ticket.config["start"] == 3
        assert scratch.config["init"] == reinit.config["init"] != ticket.config["init"]
        assert scratch.config["masks"] == reinit.config["masks"] == ticket.config["masks"]
    assert all(0 <= row["scratch"]["mean"] <= 1 for row in result.summary["levels"])


def test_finetune_trains_on_at_the_last_lr_and_lr_rewind_rewinds_the_schedule(tmp_path):
    """Both keep the trained weights; fine-tuning holds the schedule's last lr for the ticket's retraining
    length, learning-rate rewinding replays the ticket's schedule from the rewind point."""
    tickets = TicketConfig(levels=1, baselines=("finetune", "lr_rewind"), rewind="3it", seeds=1)
    result = _find(tmp_path, tickets=tickets, schedule="step", milestones=(1.0, 2.0), gamma=0.1)
    store = RunStore(tmp_path)
    [dense, level] = json.loads((result.folder / "per_seed.json").read_text())[0]
    ticket, finetune, rewind = (store.get(level["runs"][arm]) for arm in ("ticket", "finetune", "lr_rewind"))
    assert finetune.config["train"]["schedule"] == "constant" and finetune.config["train"]["milestones"] == []
    assert finetune.config["train"]["lr"] == pytest.approx(0.003 * 0.1 ** 2)
    assert rewind.config["train"] == ticket.config["train"]
    assert finetune.config["start"] == rewind.config["start"] == ticket.config["start"] == 3
    assert finetune.summary["iterations"] == rewind.summary["iterations"] == ticket.summary["iterations"]
    assert finetune.config["init"] == rewind.config["init"] != ticket.config["init"]  # the trained weights
    assert finetune.config["masks"] == rewind.config["masks"] == ticket.config["masks"]


def test_user_module_and_layerwise_rates(tmp_path):
    ds = tiny_dataset(n=80)
    t = TicketConfig(levels=1, scope="layerwise", fraction=0.5, output_fraction=0.25, baselines=("reinit",))
    result = _find(tmp_path, model=TinyNet(), dataset=ds, tickets=t)
    masks = result.masks[0]
    assert masks["conv.weight"].float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert masks["fc.weight"].float().mean().item() == pytest.approx(0.75, abs=0.01)


class _Boom(Exception):
    pass


@pytest.mark.parametrize("where", ["boundary", "mid-level"])
def test_interrupted_study_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, where):
    reference = _find(tmp_path / "ref", tickets=TicketConfig(levels=2, baselines=("reinit", "random")))
    calls = {"n": 0}
    if where == "boundary":  # stop just before level 2's first training starts
        real = imp.train_run

        def flaky(*a, **k):
            calls["n"] += 1
            if calls["n"] == 5:  # dense, L1 ticket, L1 reinit, L1 random, -> L2 ticket
                raise KeyboardInterrupt
            return real(*a, **k)

        monkeypatch.setattr(imp, "train_run", flaky)
    else:  # Ctrl-C in the middle of level 1's ticket training
        real_step = Trainer.step

        def step(self, *a):
            calls["n"] += 1
            # 108 training examples (12 held out), batch 32: 4 steps/epoch, 12 per run;
            # steps 1-12 are the dense run, 13-24 level 1's ticket: stop half-way through it
            if calls["n"] == 18:
                self.interrupt()
            return real_step(self, *a)

        monkeypatch.setattr(Trainer, "step", step)
    with pytest.raises(KeyboardInterrupt):
        _find(tmp_path / "run", tickets=TicketConfig(levels=2, baselines=("reinit", "random")))
    monkeypatch.undo()
    resumed = _find(tmp_path / "run", tickets=TicketConfig(levels=2, baselines=("reinit", "random")))
    assert _comparable(resumed.summary) == _comparable(reference.summary)
    for a, b in zip(resumed.masks, reference.masks):
        assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("tickets,match", [
    (TicketConfig(fraction=1.0), "--fraction"), (TicketConfig(fraction=0.0), "--fraction"),
    (TicketConfig(levels=0), "--levels"), (TicketConfig(rewind="99ep"), "beyond training"),
    (TicketConfig(baselines=("magic",)), "unknown baseline"), (TicketConfig(output_fraction=0.1), "layerwise"),
    (TicketConfig(seeds=0), "--seeds"),
    (TicketConfig(scope="layerwise", output_fraction=0.1, exclude_last=True), "--exclude-last keeps the classifier"),
])
def test_bad_study_settings(tmp_path, tickets, match):
    with pytest.raises(TicketlabError, match=match):
        _find(tmp_path, tickets=tickets)
    assert not any((tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else True


def test_model_without_prunable_layer(tmp_path):
    class Pool(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(1)

        def forward(self, x):
            return self.bn(x).flatten(1)[:, :4]

    with pytest.raises(TicketlabError, match="no prunable layer"):
        _find(tmp_path, model=Pool())


def test_unknown_training_option_is_a_user_error(tmp_path):
    with pytest.raises(TicketlabError, match="unknown training option.*epoch"):
        find_ticket("lenet_300_100", tiny_dataset(n=40, channels=1), store=tmp_path, epoch=3, progress=False)


@pytest.mark.parametrize("seeds", [1, 2])
def test_stacked_arms_give_the_one_by_one_study(tmp_path, seeds):
    """--stack trains a level's arms of every seed that start at one iteration in one step: the same study."""
    tickets = TicketConfig(levels=2, baselines=ALL, seeds=seeds, rewind="2it")
    plain = _find(tmp_path / "plain", tickets=tickets)
    stacked = _find(tmp_path / "stacked", tickets=TicketConfig(**{**tickets.__dict__, "stack": True}))
    assert stacked.study_id != plain.study_id and stacked.summary["stacked"]
    for mine, ref in zip(stacked.summary["levels"], plain.summary["levels"]):
        assert mine["density"] == ref["density"]
        for arm in ("ticket",) + ALL:
            for key in ("mean", "std"):
                assert mine[arm][key] == pytest.approx(ref[arm][key], abs=1e-9), (mine["level"], arm)
    assert all(torch.equal(a[n], b[n]) for a, b in zip(stacked.masks, plain.masks) for n in a)
    store = RunStore(tmp_path / "stacked")
    per_seed = json.loads((stacked.folder / "per_seed.json").read_text())
    for level in per_seed[0][1:]:
        runs = {arm: store.get(run) for arm, run in level["runs"].items()}
        assert all(r.finished for r in runs.values())
        # with one seed, reinit and scratch (each its own schedule) start at iteration 0 alone and train the
        # plain way; with two, each one's two seeds stack
        alone = {"reinit", "scratch"} if seeds == 1 else set()
        assert {arm for arm, r in runs.items() if r.config["stacked"]} == {"ticket", *ALL} - alone
    assert not any(r.kind == "stack" for r in store.list())  # groups are removed once their members are stored


def test_stack_refuses_a_loss_it_cannot_stack(tmp_path):
    with pytest.raises(TicketlabError, match="stacked training supports --loss ce only"):
        _find(tmp_path, tickets=TicketConfig(levels=1, stack=True), loss="sat", sat_start=1)


def test_stack_refuses_dropout_before_anything_trains(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4))
    monkeypatch.setattr(imp, "train_run", lambda *a, **k: pytest.fail("a run trained"))
    with pytest.raises(TicketlabError, match="random numbers in their forward pass"):
        _find(tmp_path, model=model, tickets=TicketConfig(levels=1, stack=True))
    assert not RunStore(tmp_path).list()


def test_densities_count_the_layers_left_out_of_pruning_as_dense(tmp_path):
    """Papers quote density over every Conv2d/Linear weight; an unpruned classifier is kept in full."""
    from ticketlab.models import build_model
    from ticketlab.sparsity import prunable_parameters

    result = _find(tmp_path, tickets=TicketConfig(levels=2, baselines=("random",), exclude_last=True))
    probe = build_model("lenet_300_100", num_classes=4, in_channels=1, image_size=8)
    sizes = {n: w.numel() for n, w in prunable_parameters(probe).items()}
    last = list(sizes)[-1]
    for row, masks in zip(result.summary["levels"], result.masks):
        assert last not in masks and set(masks) == set(sizes) - {last}
        kept = sum(int(m.sum()) for m in masks.values())
        assert row["density"] == pytest.approx((kept + sizes[last]) / sum(sizes.values()), abs=1e-4)
        assert row["density"] != pytest.approx(kept / (sum(sizes.values()) - sizes[last]), abs=1e-3)


def test_a_study_at_another_seed_draws_the_baselines_of_that_seed(tmp_path):
    """`--seed 1 --seeds 1` is the second chain of `--seed 0 --seeds 2`: the same dense run, the same
    random-pruning arm (its mask drawn from the seed it trains with, not from the chain's position)."""
    tickets = TicketConfig(levels=1, baselines=("random",), rewind="2it")
    two = _find(tmp_path, tickets=replace(tickets, seeds=2))
    one = _find(tmp_path, tickets=tickets, seed=1)
    per_seed = json.loads((two.folder / "per_seed.json").read_text())
    alone = json.loads((one.folder / "per_seed.json").read_text())
    assert alone[0][0]["runs"] == per_seed[1][0]["runs"]  # the dense run, reused
    assert alone[0][1]["runs"]["random"] == per_seed[1][1]["runs"]["random"]
    # the study folders name the seed, as the progress lines do, not its position in the study
    assert sorted(f.name for f in two.folder.glob("seed_*")) == ["seed_0", "seed_1"]
    assert [f.name for f in one.folder.glob("seed_*")] == ["seed_1"]
    masks = [load_masks(f.folder / "seed_1" / "level_1" / "masks.safetensors") for f in (one, two)]
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])


def test_a_zoo_net_handed_in_is_reinitialised_from_its_own_init():
    """Other seeds and the re-init baseline of a module handed in: a zoo net's root `reset_parameters`
    draws its own init (OpenLTH's BatchNorm scales U(0, 1)), not the layers' defaults (scales of 1)."""
    from ticketlab.models import build_model
    from ticketlab.tickets.imp import _user_init

    net = build_model("cifar_resnet_20")
    fresh = _user_init(net, "reinit", 0)
    scales = fresh["stem.bn.weight"]
    assert not torch.equal(scales, net.state_dict()["stem.bn.weight"])
    assert 0 <= scales.min() and scales.max() <= 1 and scales.std() > 0.1
    assert torch.equal(_user_init(net, "reinit", 0)["fc.weight"], fresh["fc.weight"])  # seeded
    other = _user_init(TinyNet(), "reinit", 0)  # no root reset_parameters: each layer's own
    assert set(other) == set(TinyNet().state_dict())


def test_a_zoo_net_inside_a_users_module_keeps_its_own_init_when_reinitialised():
    from ticketlab.models import build_model
    from ticketlab.tickets.imp import _init_mismatch, _user_init

    class Wrapper(torch.nn.Module):  # no reset_parameters of its own
        def __init__(self):
            super().__init__()
            self.net = build_model("cifar_resnet_20")

        def forward(self, x):
            return self.net(x)

    fresh = _user_init(Wrapper(), "reinit", 0)["net.stem.bn.weight"]  # OpenLTH: U(0, 1), not the layer's 1s
    assert 0 <= fresh.min() and fresh.max() <= 1 and fresh.std() > 0.1
    assert _init_mismatch(Wrapper()) == []


def test_the_plot_copy_is_atomic_and_a_full_disk_a_clear_error(tmp_path, monkeypatch):
    """The user's --plot file is replaced whole or not at all, after the study is stored."""
    import errno
    import shutil
    from pathlib import Path

    from ticketlab.store import UnwritableFileError

    target = tmp_path / "mine.png"
    target.write_bytes(b"an older plot")
    tickets = TicketConfig(levels=1, baselines=(), seeds=1, rewind="2it")

    def full(src, dst):
        Path(dst).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full)
    with pytest.raises(UnwritableFileError, match="No space left"):
        _find(tmp_path / "s", tickets=tickets, plot=target)
    assert target.read_bytes() == b"an older plot" and [p.name for p in tmp_path.iterdir()] == ["mine.png", "s"]
    monkeypatch.undo()
    study = _find(tmp_path / "s", tickets=tickets, plot=target)  # stored: the rerun trains nothing
    assert target.read_bytes()[:4] == b"\x89PNG" and study.summary["plot"] == str(target)


def test_a_level_that_keeps_no_weights_and_fractional_counts_are_clear_errors(tmp_path):
    tickets = TicketConfig(levels=3, fraction=0.9, baselines=("oneshot",), seeds=1, rewind="2it")
    with pytest.raises(TicketlabError, match="3 levels pruning 0.9 each leave less than one.*lower --levels"):
        find_ticket(TinyNet(), tiny_dataset(n=80), tickets=tickets, store=tmp_path, epochs=1, batch_size=16,
                    progress=False)
    for bad in (dict(levels=2.0), dict(seeds=2.0)):
        with pytest.raises(TicketlabError, match="must be a whole number"):
            TicketConfig(**bad).validate()


def test_a_module_whose_init_reset_parameters_does_not_draw_is_warned_about(tmp_path):
    """Other seeds and the re-init arm re-draw a module through reset_parameters: a custom init set in __init__
    would be lost without a word."""
    from ticketlab.tickets.imp import _init_mismatch

    class Wide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                            torch.nn.Linear(32, 4))
            for layer in (self.body[1], self.body[3]):
                torch.nn.init.normal_(layer.weight, std=0.5)  # far from PyTorch's default spread

        def forward(self, x):
            return self.body(x)

    assert _init_mismatch(Wide()) == ["body.1.weight", "body.3.weight"] and _init_mismatch(TinyNet()) == []

    class Drawn(Wide):
        def reset_parameters(self):
            for layer in (self.body[1], self.body[3]):
                layer.reset_parameters()
                torch.nn.init.normal_(layer.weight, std=0.5)

    assert _init_mismatch(Drawn()) == []
    tickets = TicketConfig(levels=1, baselines=("reinit",), seeds=1, rewind="2it")
    study = find_ticket(Wide(), tiny_dataset(n=80, channels=1), tickets=tickets, store=tmp_path, epochs=1,
                        batch_size=16, progress=False)
    assert any("define reset_parameters" in w for w in study.summary["warnings"])


def test_a_blocks_own_reset_parameters_wins_and_every_kind_of_other_init_is_warned_about():
    from ticketlab.tickets.imp import _init_mismatch, _user_init

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(8, 8, 3, bias=False), torch.nn.BatchNorm2d(8)
            self.reset_parameters()

        def reset_parameters(self):  # the README's way: the block draws its own init
            torch.nn.init.normal_(self.conv.weight, std=0.01)
            torch.nn.init.zeros_(self.bn.weight)

    class Net(torch.nn.Module):
        def __init__(self, own_block=True):
            super().__init__()
            self.block = Block() if own_block else torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, bias=False),
                                                                       torch.nn.BatchNorm2d(8))
            self.scale = torch.nn.Parameter(torch.randn(8))  # held by the net itself: nothing re-draws it

    fresh = _user_init(Net(), "reinit", 0)
    assert fresh["block.conv.weight"].std() < 0.02 and torch.all(fresh["block.bn.weight"] == 0)
    assert _init_mismatch(Net()) == ["scale"]
    plain = Net(own_block=False)
    torch.nn.init.zeros_(plain.block[1].weight)  # zero-initialised BN scale, set outside any reset_parameters
    assert sorted(_init_mismatch(plain)) == ["block.1.weight", "scale"]


def test_rewind_spellings_of_one_iteration_are_one_study(tmp_path):
    from ticketlab.config import DataConfig

    ds = tiny_dataset(n=120, channels=1, size=8)  # 12 held out: 108 training examples, 4 batches of 32 an epoch

    def study_id(rewind):
        tickets = TicketConfig(levels=1, rewind=rewind)
        return imp.study_config("lenet_300_100", ds, tickets, DataConfig(), "cpu", None,
                                {"epochs": 3, "batch_size": 32}).run_id

    assert study_id("1ep") == study_id("4it") == study_id("4") == study_id(" 4 it") != study_id("3it")
    assert study_id("0") == study_id("0ep") != study_id("1ep")


def test_baselines_in_any_order_and_moot_training_settings_are_one_study():
    from ticketlab.config import DataConfig

    ds = tiny_dataset(n=120, channels=1, size=8)  # 12 held out: 108 training examples

    def study_id(baselines=("reinit", "random"), **train):
        tickets = TicketConfig(levels=1, baselines=baselines)
        return imp.study_config("lenet_300_100", ds, tickets, DataConfig(), "cpu", None,
                                {"epochs": 3, "batch_size": 36, **train}).run_id

    assert study_id(("random", "reinit")) == study_id() != study_id(("reinit",))
    assert study_id(("scratch", "random", "reinit")) == study_id(("reinit", "scratch", "random"))
    assert TicketConfig(baselines=("shuffle", "random", "finetune", "reinit")).baselines == (
        "reinit", "random", "finetune", "shuffle")  # the default's arms first, as the tables show them
    assert study_id(drop_last=True) == study_id() != study_id(drop_last=True, batch_size=32)
