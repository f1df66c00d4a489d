import json
from dataclasses import replace

import pytest
import torch

from ticketlab.errors import TicketlabError
from ticketlab.store import RunStore
from ticketlab.tickets import TicketConfig, find_ticket
from ticketlab.tickets.prac import PracSet, load_prac, prac_indices, save_prac

from helpers import tiny_dataset


def test_prac_indices_union_and_empty_set():
    hard = torch.tensor([True, False, False, True])
    changed = torch.tensor([False, False, True, False])
    assert prac_indices(hard).tolist() == [0, 3]
    assert prac_indices(hard, changed).tolist() == [0, 2, 3]
    with pytest.raises(TicketlabError, match="empty"):
        prac_indices(torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool))


def test_prac_file_round_trip_and_size_check(tmp_path):
    path = save_prac(tmp_path / "p.safetensors", PracSet(torch.tensor([True, False, True]), {"model": "m"}))
    loaded = load_prac(path, 3)
    assert loaded.hard.tolist() == [True, False, True] and loaded.info == {"model": "m"}
    with pytest.raises(TicketlabError, match="covers 3 examples"):
        load_prac(path, 4)
    with pytest.raises(TicketlabError, match="ticketlab prac"):
        load_prac(tmp_path / "missing.safetensors", 3)


def test_prac_study_saves_iterations_and_reports_fractions(tmp_path):
    ds = tiny_dataset(n=120, channels=1, size=8)
    t = TicketConfig(levels=2, baselines=(), data="prac", rewind="10it")
    result = find_ticket("lenet_300_100", ds, tickets=t, store=tmp_path, epochs=4, batch_size=16, lr=0.01,
                         optimizer="adam", progress=False)
    s = result.summary
    json.dumps(s)
    store = RunStore(tmp_path)
    levels = json.loads((result.folder / "per_seed.json").read_text())[0][1:]
    for row, level in zip(s["levels"], levels):
        assert 0 < row["prac_fraction"] <= 1
        assert row["search_iterations"][0] <= 4 * 7 - 10  # 108 examples: 7 steps an epoch, rewound to 10
        # the search starts its scaled schedule where the rewind point lies in the full one (10 of 28)
        search = store.get(level["search"]["run"])
        assert search.config["start"] == 10 * search.summary["iterations"] // 28 > 0
        assert row["search_iterations"][0] == search.summary["iterations"] - search.config["start"]
    assert 0 <= s["iterations_saved"] < 1
    assert s["search_iterations"] + 0 <= s["full_data_iterations"]


def test_early_bird_stops_search_runs(tmp_path):
    ds = tiny_dataset(n=96, channels=1, size=8)
    t = TicketConfig(levels=1, baselines=(), early_bird=0.99)
    result = find_ticket("lenet_300_100", ds, tickets=t, store=tmp_path, epochs=8, batch_size=16, lr=0.003,
                         optimizer="adam", progress=False)
    row = result.summary["levels"][0]
    assert row["stopped_epoch"] == [6]  # five distances exist after epoch 6, all below 0.99
    assert result.summary["iterations_saved"] == pytest.approx(2 / 8, abs=0.01)


def test_a_wrong_prac_file_fails_before_anything_trains(tmp_path):
    from ticketlab.store import RunStore

    ds = tiny_dataset(n=120, channels=1, size=8)
    t = TicketConfig(levels=1, baselines=(), data="prac", prac_file=str(tmp_path / "missing.safetensors"))
    with pytest.raises(TicketlabError, match="no PrAC file"):
        find_ticket("lenet_300_100", ds, tickets=t, store=tmp_path / "s", epochs=1, progress=False)
    assert RunStore(tmp_path / "s").list() == []


def test_a_study_is_identified_by_what_its_module_and_prac_file_hold_not_by_their_names(tmp_path):
    from ticketlab.config import DataConfig
    from ticketlab.tickets.imp import study_config

    from helpers import TinyNet

    ds = tiny_dataset(n=120, channels=1, size=8)

    def study_id(model, tickets=TicketConfig(levels=1)):
        return study_config(model, ds, tickets, DataConfig(), "cpu", None, {"epochs": 1, "batch_size": 32}).run_id

    torch.manual_seed(0)
    first, second = TinyNet(channels=1), TinyNet(channels=1)
    assert study_id(first) == study_id(first) != study_id(second)  # the same class, other weights
    path = tmp_path / "p.safetensors"
    prac = TicketConfig(levels=1, data="prac", prac_file=str(path))
    ids = []
    for hard in ([True] * 54 + [False] * 54, [False] * 54 + [True] * 54):  # two PrAC sets, one path
        save_prac(path, PracSet(torch.tensor(hard), {}))
        ids.append(study_id("lenet_300_100", prac))
    assert ids[0] != ids[1]


def test_numpy_numbers_in_ticket_settings_identify_a_study_as_python_numbers_do():
    import numpy as np

    from ticketlab.config import run_id

    assert run_id(TicketConfig(fraction=np.float64(0.5), levels=np.int64(3))) == run_id(TicketConfig(fraction=0.5,
                                                                                                    levels=3))
    TicketConfig(levels=np.int64(3)).validate()


def test_a_prac_file_of_other_data_settings_or_damaged_is_refused(tmp_path):
    info = {"dataset": "tiny@abc", "validation": 12, "split_seed": 0, "noise": "", "noise_seed": 0}
    path = save_prac(tmp_path / "p.safetensors", PracSet(torch.tensor([True, False, True]), info))
    assert load_prac(path, 3, info).info == info
    for key, value in (("dataset", "other@def"), ("split_seed", 7), ("noise", "uniform:0.4"), ("validation", 20)):
        with pytest.raises(TicketlabError, match=f"computed with {key}"):
            load_prac(path, 3, {**info, key: value})
    old = save_prac(tmp_path / "old.safetensors", PracSet(torch.tensor([True, False, True]), {"model": "m"}))
    assert load_prac(old, 3, info).hard.tolist() == [True, False, True]  # keys a file predates are not checked
    square = save_prac(tmp_path / "sq.safetensors", PracSet(torch.ones(2, 2, dtype=torch.bool), info))
    with pytest.raises(TicketlabError, match=r"shape \(2, 2\)"):
        load_prac(square, 4)
    from ticketlab.store.files import write_tensors
    write_tensors(tmp_path / "bad.safetensors", {"hard": torch.ones(3, dtype=torch.bool)},
                  metadata={"ticketlab.prac": "{not json"})
    with pytest.raises(TicketlabError, match="not a readable PrAC file"):
        load_prac(tmp_path / "bad.safetensors", 3)


def test_study_scores_and_indexes_the_examples_its_noisy_runs_train_on(tmp_path):
    """With label noise the runs split the noisy labels: the study's training part (PrAC indices,
    score batches) must be the same examples in the same order, none of them held out."""
    from ticketlab.config import DataConfig, RunConfig
    from ticketlab.store import RunStore
    from ticketlab.tickets.imp import StudyConfig, _Study
    from ticketlab.train.run import training_part

    ds = tiny_dataset(n=250, channels=1, size=8)
    run = RunConfig(data=DataConfig(dataset="tiny", validation=20, noise="uniform:0.4"))
    run = replace(run, model=replace(run.model, name="lenet_300_100"))
    study = _Study(StudyConfig(run, TicketConfig(levels=1, baselines=())), RunStore(tmp_path), ds, None, "cpu", False)
    expected = training_part(run, ds)
    assert torch.equal(study.train_set.train_x, expected.train_x)
    assert torch.equal(study.train_set.train_y, expected.train_y)
