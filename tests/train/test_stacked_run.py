from dataclasses import replace

import pytest
import torch

from ticketlab.config import DataConfig, ModelConfig, RunConfig
from ticketlab.errors import TicketlabError
from ticketlab.store import RunStore
from ticketlab.train import recipe_config, stacked_run
from ticketlab.train.run import initial_model, train_run
from ticketlab.train.stacked_run import Member, train_stacked

from helpers import InterruptAt, tiny_dataset


def _setup(**train):
    ds = tiny_dataset(n=100, channels=1, size=8)
    cfg = RunConfig(data=DataConfig(dataset="tiny", validation=20), model=ModelConfig("lenet_300_100"),
                    train=recipe_config("lenet_300_100", epochs=3, batch_size=25, lr=0.01, **train))
    base = initial_model(cfg, ds).state_dict()
    g = torch.Generator().manual_seed(3)
    names = ("hidden.fc1.weight", "hidden.fc2.weight")
    masks = [{n: (torch.rand(base[n].shape, generator=g) < d).float() for n in names} for d in (0.5, 0.2)]
    fresh = {k: torch.randn(v.shape, generator=g) * 0.05 if v.is_floating_point() else v for k, v in base.items()}
    members = [Member(None, masks[0]), Member(fresh, masks[1]), Member(None, None)]
    return ds, cfg, members


def test_members_equal_training_alone_and_are_stored_as_their_own_runs(tmp_path):
    ds, cfg, members = _setup()
    store = RunStore(tmp_path / "s")
    together = train_stacked(cfg, members, store=store, dataset=ds, progress=False)
    alone = [train_run(cfg, store=RunStore(tmp_path / "a"), dataset=ds, init_state=m.init_state, masks=m.masks,
                       progress=False) for m in members]
    for mine, ref, member in zip(together, alone, members):
        assert mine.summary["test_accuracy"] == pytest.approx(ref.summary["test_accuracy"], abs=1e-9)
        assert mine.summary["val_accuracy"] == pytest.approx(ref.summary["val_accuracy"], abs=1e-9)
        assert mine.history[-1]["train_loss"] == pytest.approx(ref.history[-1]["train_loss"], rel=1e-4)
        for name, value in ref.model.state_dict().items():
            assert torch.allclose(mine.model.state_dict()[name], value, atol=1e-4), name  # float rounding
        for name, mask in (member.masks or {}).items():  # pruned weights stay exactly zero
            assert torch.all(mine.model.state_dict()[name][mask == 0] == 0)
        assert mine.run_id != ref.run_id and not mine.reused  # marked as trained stacked
    records = store.list()
    assert len(records) == 3 and all(r.finished and r.config.get("stacked") for r in records)  # the group is gone
    again = train_stacked(cfg, members, store=store, dataset=ds, progress=False)
    assert all(r.reused for r in again) and [r.run_id for r in again] == [r.run_id for r in together]


def test_an_interrupted_group_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    ds, cfg, members = _setup()
    reference = train_stacked(cfg, members, store=RunStore(tmp_path / "ref"), dataset=ds, progress=False)
    store = RunStore(tmp_path / "run")
    monkeypatch.setattr(stacked_run, "MaskHook", lambda masks: InterruptAt(5))
    with pytest.raises(KeyboardInterrupt):
        train_stacked(cfg, members, store=store, dataset=ds, progress=False)
    (group,) = store.list()
    assert group.kind == "stack" and not group.finished
    monkeypatch.undo()
    resumed = train_stacked(cfg, members, store=store, dataset=ds, progress=False)
    # the interrupted run trained its first 5 steps without masks, so only the dense member matches exactly
    assert resumed[2].summary["test_accuracy"] == reference[2].summary["test_accuracy"]
    for name, value in reference[2].model.state_dict().items():
        assert torch.equal(resumed[2].model.state_dict()[name], value), name
    assert [r.kind for r in store.list()] == ["train"] * 3


@pytest.mark.parametrize("cut_after", [1, 2])  # two members left to store, or one (which is not trained alone)
def test_a_group_cut_off_while_storing_its_members_is_read_not_retrained(tmp_path, monkeypatch, cut_after):
    ds, cfg, members = _setup()
    reference = train_stacked(cfg, members, store=RunStore(tmp_path / "ref"), dataset=ds, progress=False)
    store = RunStore(tmp_path / "run")
    real, stored = stacked_run._store_member, []

    def cut_off(*args):
        if len(stored) == cut_after:
            raise KeyboardInterrupt
        stored.append(real(*args))
        return stored[-1]

    monkeypatch.setattr(stacked_run, "_store_member", cut_off)
    with pytest.raises(KeyboardInterrupt):
        train_stacked(cfg, members, store=store, dataset=ds, progress=False)
    monkeypatch.undo()
    monkeypatch.setattr(stacked_run, "_fit", lambda *a, **k: pytest.fail("the finished group was retrained"))
    monkeypatch.setattr(stacked_run, "train_run", lambda *a, **k: pytest.fail("a member was retrained alone"))
    resumed = train_stacked(cfg, members, store=store, dataset=ds, progress=False)
    for mine, ref in zip(resumed, reference):
        assert mine.run_id == ref.run_id and mine.summary["test_accuracy"] == ref.summary["test_accuracy"]
        for name, value in ref.model.state_dict().items():
            assert torch.equal(mine.model.state_dict()[name], value), name
    assert [r.kind for r in store.list()] == ["train"] * 3  # and the group is gone


def test_finished_members_are_reused_and_a_lone_one_trains_alone(tmp_path):
    ds, cfg, members = _setup()
    store = RunStore(tmp_path)
    first = train_stacked(cfg, members[:2], store=store, dataset=ds, progress=False)
    both = train_stacked(cfg, members, store=store, dataset=ds, progress=False)
    assert [r.reused for r in both] == [True, True, False]
    assert [r.run_id for r in both[:2]] == [r.run_id for r in first]
    assert not store.get(both[2].run_id).config.get("stacked")  # nothing to stack with: a plain run
    twins = train_stacked(cfg, [members[0], members[0]], store=store, dataset=ds, progress=False)
    assert twins[0].run_id == twins[1].run_id == first[0].run_id and twins[0].model is not twins[1].model


def test_a_lone_member_of_a_dataset_loaded_by_name_is_the_plain_run_by_name(tmp_path):
    """`train --seeds N --stack` with one seed left trains the very run `train` would, and reuses it."""
    cfg = RunConfig(data=DataConfig(dataset="mnist_subset"), model=ModelConfig("lenet_300_100"),
                    train=recipe_config("lenet_300_100", epochs=1, batch_size=500))
    store = RunStore(tmp_path)
    plain = train_run(cfg, store=store, progress=False)
    [lone] = train_stacked(cfg, [Member()], store=store, progress=False)
    assert lone.reused and lone.run_id == plain.run_id and len(store.list()) == 1


def test_seeds_stacked_are_the_seeds_trained_alone(tmp_path):
    """Member(seed=s): its own initialisation and data order, as `train_run` with that seed."""
    ds, cfg, _ = _setup()
    together = train_stacked(cfg, [Member(seed=s) for s in (0, 1, 2)], store=RunStore(tmp_path / "s"), dataset=ds,
                             progress=False)
    for seed, mine in zip((0, 1, 2), together):
        ref = train_run(replace(cfg, train=replace(cfg.train, seed=seed)), store=RunStore(tmp_path / "a"),
                        dataset=ds, progress=False)
        assert mine.summary["test_accuracy"] == pytest.approx(ref.summary["test_accuracy"], abs=1e-9)
        for name, value in ref.model.state_dict().items():
            assert torch.allclose(mine.model.state_dict()[name], value, atol=1e-4), name
    assert len({r.summary["test_loss"] for r in together}) == 3


def test_bad_member_masks_are_refused_before_the_store_holds_anything(tmp_path):
    ds, cfg, members = _setup()
    store = RunStore(tmp_path)
    for bad in ({"hidden.fc1.weigth": torch.ones(300, 64)}, {"hidden.fc1.weight": torch.ones(3, 64)}):
        with pytest.raises(TicketlabError, match="mask does not fit the model"):
            train_stacked(cfg, [members[0], Member(masks=bad)], store=store, dataset=ds, progress=False)
    assert store.list() == []


def test_stacked_members_of_noisy_data_carry_the_noise_rate_as_runs_alone_do(tmp_path):
    ds, cfg, members = _setup()
    cfg = replace(cfg, data=replace(cfg.data, noise="uniform:0.4"))
    together = train_stacked(cfg, members[:2], store=RunStore(tmp_path / "s"), dataset=ds, progress=False)
    alone = train_run(cfg, store=RunStore(tmp_path / "a"), dataset=ds, masks=members[0].masks, progress=False)
    assert together[0].summary["noise_rate"] == alone.summary["noise_rate"] > 0.2
    assert set(together[0].summary) == set(alone.summary)


def test_stacked_training_refuses_what_it_cannot_do(tmp_path):
    ds, cfg, members = _setup(loss="sat", sat_start=1)
    with pytest.raises(TicketlabError, match="--loss ce only"):
        train_stacked(cfg, members, store=RunStore(tmp_path), dataset=ds, progress=False)
    with pytest.raises(TicketlabError, match="at least one"):
        train_stacked(_setup()[1], [], store=RunStore(tmp_path), dataset=ds, progress=False)
