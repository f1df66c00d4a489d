import json

import pytest
import torch

from ticketlab.errors import TicketlabError
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
    t = TicketConfig(levels=2, baselines=(), data="prac", rewind="2it")
    result = find_ticket("lenet_300_100", ds, tickets=t, store=tmp_path, epochs=4, batch_size=16, lr=0.01,
                         optimizer="adam", progress=False)
    s = result.summary
    json.dumps(s)
    for row in s["levels"]:
        assert 0 < row["prac_fraction"] <= 1
        assert row["search_iterations"][0] <= 4 * 7
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
