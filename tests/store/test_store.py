import os

import pytest
import torch

from ticketlab.config import RunConfig, TrainConfig
from ticketlab.errors import TicketlabError
from ticketlab.store import RunStore, load_state, resolve_store_root, save_state


def test_begin_finish_list_resolve_remove(tmp_path):
    store = RunStore(tmp_path)
    cfg = RunConfig(train=TrainConfig(epochs=2))
    rec = store.begin(cfg)
    assert rec.status == "incomplete" and (rec.folder / "config.json").exists()
    assert store.begin(cfg).created == rec.created  # same config, same run
    store.finish(cfg.run_id, {"test_accuracy": 0.5})
    again = RunStore(tmp_path).resolve(cfg.run_id[:6])
    assert again.finished and again.summary == {"test_accuracy": 0.5}
    assert [r.run_id for r in store.list()] == [cfg.run_id]
    store.remove(cfg.run_id)
    assert store.list() == [] and not rec.folder.exists()
    with pytest.raises(TicketlabError, match="no run"):
        store.resolve("ffff")


def test_store_location_order(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETLAB_STORE", str(tmp_path / "env"))
    assert resolve_store_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_store_root(None) == tmp_path / "env"
    monkeypatch.delenv("TICKETLAB_STORE")
    assert str(resolve_store_root(None)) == "ticketlab-runs"


def test_state_round_trip_and_atomicity(tmp_path):
    state = {
        "step": 7,
        "opt": {"state": {0: {"buf": torch.arange(3.0)}}, "groups": [{"lr": 0.1}]},
        "rng": torch.get_rng_state(),
    }
    path = tmp_path / "s.safetensors"
    save_state(path, state)
    back = load_state(path)
    assert back["step"] == 7 and torch.equal(back["opt"]["state"][0]["buf"], torch.arange(3.0))
    assert torch.equal(back["rng"], state["rng"])
    with pytest.raises(TypeError):
        save_state(path, {"bad": object()})
    assert torch.equal(load_state(path)["opt"]["state"][0]["buf"], torch.arange(3.0))  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]  # no temporary left behind


def test_unwritable_store_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TicketlabError, match="--store"):
        RunStore(blocker / "store")


def test_corrupt_index_is_a_user_error(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "index.sqlite").write_bytes(os.urandom(4096))
    with pytest.raises(TicketlabError, match="unreadable"):
        RunStore(tmp_path)


def test_written_files_follow_the_umask(tmp_path):
    import os
    import stat

    from ticketlab.store import write_json

    write_json(tmp_path / "a.json", {"x": 1})
    mode = stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
