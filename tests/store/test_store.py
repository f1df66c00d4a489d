import os
import re
import threading
import time

import pytest
import torch

from ticketlab.config import RunConfig, TrainConfig
from ticketlab.errors import TicketlabError
from ticketlab.store import (
    CorruptFileError,
    RunStore,
    UnwritableFileError,
    load_state,
    read_json,
    read_tensors,
    resolve_store_root,
    save_state,
    writable,
    write_json,
    write_tensors,
)
from ticketlab.train import train
from ticketlab.train.hooks import Hook

from helpers import InterruptAt, tiny_dataset


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
    with pytest.raises(TicketlabError, match="no run"):  # a prefix, not a LIKE pattern
        store.resolve(cfg.run_id[0] + "_")
    store.remove(cfg.run_id)
    assert store.list() == [] and not rec.folder.exists()
    with pytest.raises(TicketlabError, match="no run"):
        store.resolve("ffff")


class _Gate(Hook):
    """Holds a training run at its start until the test lets it go."""

    def __init__(self) -> None:
        self.started, self.go = threading.Event(), threading.Event()

    def on_start(self, trainer) -> None:
        self.started.set()
        assert self.go.wait(30)

    def identity(self) -> str:
        return ""  # it changes no number, so it does not make another run


def _in_thread(target, *args, **kwargs) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(target(*args, **kwargs)))
    thread.start()
    return thread, out


def test_a_run_being_trained_elsewhere_is_waited_for_and_reused(tmp_path, capfd):
    """Two commands on one store (a parallel sweep sharing its dense run) train a run once."""
    store, data, gate = RunStore(tmp_path), tiny_dataset(), _Gate()
    options = dict(model="conv_2", dataset=data, epochs=2, batch_size=32, progress=False)
    first, first_out = _in_thread(train, store=store, hooks=[gate], **options)
    assert gate.started.wait(30)
    second, second_out = _in_thread(train, store=RunStore(tmp_path), **options)  # its own connection, as a process
    err, deadline = "", time.monotonic() + 30
    while "being trained by another process" not in err and time.monotonic() < deadline:
        second.join(0.1)
        err += capfd.readouterr().err
    assert "being trained by another process" in err and second.is_alive()  # waiting, not training beside it
    gate.go.set()
    first.join(60), second.join(60)
    [a], [b] = first_out, second_out
    assert not a.reused and b.reused and a.run_id == b.run_id and len(store.list()) == 1
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def test_a_waiter_trains_a_run_its_holder_removed(tmp_path):
    store, cfg = RunStore(tmp_path), RunConfig(train=TrainConfig(epochs=2))

    def claim_elsewhere():
        with RunStore(tmp_path).claim(cfg) as record:
            return record

    with store.claim(cfg) as held:
        waiter, out = _in_thread(claim_elsewhere)
        waiter.join(0.5)
        assert waiter.is_alive() and held.status == "incomplete"
        store.remove(cfg.run_id)  # what a run failing on a user error does
    waiter.join(10)
    [again] = out
    assert again.status == "incomplete" and (again.folder / "config.json").exists()  # begun afresh, to train
    assert not list((tmp_path / "locks").iterdir())  # each holder deleted its lock file


def test_three_claimants_hold_a_run_one_at_a_time_though_lock_files_are_deleted(tmp_path):
    store, cfg = RunStore(tmp_path), RunConfig(train=TrainConfig(epochs=2))
    inside, overlaps = [0], []

    def claim_elsewhere():
        with RunStore(tmp_path).claim(cfg):
            inside[0] += 1
            overlaps.append(inside[0])
            time.sleep(0.2)
            inside[0] -= 1

    with store.claim(cfg):
        waiters = [_in_thread(claim_elsewhere)[0] for _ in range(2)]
        time.sleep(0.3)
    for waiter in waiters:
        waiter.join(10)
    assert overlaps == [1, 1] and not list((tmp_path / "locks").iterdir())


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
    # keys whose paths read alike (a hook's state may hold such) keep their own tensors
    tricky = {"a.b": torch.zeros(1), "a": {"b": torch.ones(1)},
              "c": {1: torch.full((1,), 2.0), "1": torch.full((1,), 3.0)}}
    save_state(path, tricky)
    back = load_state(path)
    assert [float(t) for t in (back["a.b"], back["a"]["b"], back["c"][1], back["c"]["1"])] == [0.0, 1.0, 2.0, 3.0]


def test_unwritable_store_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = RunStore(blocker / "store")  # nothing is made before the first run
    with pytest.raises(TicketlabError, match="cannot create the run store .*--store"):
        store.begin(RunConfig())


def test_a_new_store_is_made_by_its_first_run_not_before(tmp_path):
    store = RunStore(tmp_path / "store")
    assert store.list() == [] and store.get("0" * 16) is None and not (tmp_path / "store").exists()
    with pytest.raises(TicketlabError, match="no run 'ab'"):
        store.resolve("ab")
    store.begin(RunConfig())
    assert [r.run_id for r in store.list()] == [RunConfig().run_id]


def test_a_file_where_the_run_folder_goes_is_a_user_error(tmp_path):
    (tmp_path / "runs").write_text("x")
    with pytest.raises(TicketlabError, match="runs as the store's run folder.*move that file away"):
        RunStore(tmp_path).begin(RunConfig())


def test_corrupt_index_is_a_user_error(tmp_path):
    (tmp_path / "index.sqlite").write_bytes(os.urandom(4096))
    with pytest.raises(TicketlabError, match="unreadable"):
        RunStore(tmp_path)
    assert not (tmp_path / "runs").exists()  # nothing created beside a bad index


def test_an_index_entry_damaged_by_hand_is_named_listed_and_removable(tmp_path, capsys):
    import sqlite3

    from helpers import run_cli

    store, config = RunStore(tmp_path), RunConfig()
    store.begin(config)
    with sqlite3.connect(tmp_path / "index.sqlite") as con:
        con.execute("UPDATE runs SET config = ? WHERE run_id = ?", ('{"data": ', config.run_id))
    with pytest.raises(TicketlabError, match=f"index entry of run {config.run_id} .* `ticketlab runs rm"):
        store.begin(config)
    assert [r.status for r in store.list()] == ["damaged"]
    code, out, err = run_cli(capsys, "runs", "list", "--store", tmp_path)
    assert code == 0 and "damaged" in out
    code, out, err = run_cli(capsys, "runs", "rm", config.run_id, "--store", tmp_path)
    assert code == 0 and store.list() == []


def test_a_file_that_cannot_be_written_is_a_user_error_that_keeps_the_run(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UnwritableFileError, match="cannot write .*file/a.json"):
        write_json(tmp_path / "file" / "a.json", {})
    with pytest.raises(TicketlabError, match="should be a .png file; name it p.png"):
        writable(tmp_path / "p.txt", ".png", "--plot")
    assert writable(tmp_path / "new" / "p.png", ".png", "--plot") == tmp_path / "new" / "p.png"


def test_written_files_follow_the_umask(tmp_path):
    import os
    import stat

    from ticketlab.store import write_json, write_tensors

    write_json(tmp_path / "a.json", {"x": 1})
    write_tensors(tmp_path / "a.safetensors", {"x": torch.zeros(2)})  # safetensors replaces the file it writes
    umask = os.umask(0)
    os.umask(umask)
    for name in ("a.json", "a.safetensors"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~umask, name


def test_unreadable_files_are_user_errors_naming_the_run_to_discard(tmp_path):
    store = RunStore(tmp_path / "store")
    folder = store.begin(RunConfig()).folder
    run = folder.name
    save_state(folder / "checkpoint.safetensors", {"step": 1, "w": torch.ones(3)})
    (folder / "checkpoint.safetensors").write_bytes((folder / "checkpoint.safetensors").read_bytes()[:40])
    (folder / "final.safetensors").write_bytes(b"\0" * 7)
    (folder / "history.json").write_text('[{"epoch": 1')
    write_tensors(folder / "weights" / "it_0.safetensors", {"w": torch.ones(2)})  # tensors, but no state skeleton
    for read, name in ((load_state, "checkpoint.safetensors"), (read_tensors, "final.safetensors"),
                       (read_json, "history.json"), (load_state, "weights/it_0.safetensors"),
                       (read_json, "summary.json")):  # the last is missing
        with pytest.raises(CorruptFileError) as caught:
            read(folder / name)
        message = str(caught.value)
        assert str(folder / name) in message and f"ticketlab runs rm {run} --store {store.root}" in message
    (tmp_path / "mine.safetensors").write_bytes(b"junk")  # a user's own file: no run to discard
    with pytest.raises(TicketlabError, match="mine.safetensors .*replace it") as caught:
        read_tensors(tmp_path / "mine.safetensors")
    assert "runs rm" not in str(caught.value)


def test_opening_without_create_needs_an_existing_store(tmp_path):
    for where in (tmp_path / "typo", tmp_path):  # a missing folder, and a folder that holds no store
        with pytest.raises(TicketlabError, match=re.escape(f"no run store at {where}; ")):
            RunStore(where, create=False)
    assert list(tmp_path.iterdir()) == []
    RunStore(tmp_path).begin(RunConfig())
    assert len(RunStore(tmp_path, create=False).list()) == 1


def test_an_unreadable_checkpoint_keeps_its_run_for_the_user_to_discard(tmp_path):
    store, data = RunStore(tmp_path), tiny_dataset()
    options = dict(model="conv_2", dataset=data, store=store, epochs=2, batch_size=32, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(**options, hooks=[InterruptAt(2)])
    [record] = store.list()
    checkpoint = record.folder / "checkpoint.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match=f"runs rm {record.run_id}"):
        train(**options)
    assert store.get(record.run_id) is not None and checkpoint.exists()  # kept: the message's fix is the user's call
    store.remove(record.run_id)
    assert train(**options).run_id == record.run_id  # the advised fix works


def test_writing_onto_a_folder_is_a_user_error(tmp_path):
    from ticketlab.store.files import write_json

    with pytest.raises(TicketlabError, match="is a folder; give the path of a file"):
        write_json(tmp_path, {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_tied_weights_are_written_as_copies(tmp_path):
    """Two names for one tensor (a tied embedding and classifier) would make safetensors refuse the file."""
    shared = torch.arange(6.0).reshape(2, 3)
    write_tensors(tmp_path / "tied.safetensors", {"a.weight": shared, "b.weight": shared, "c": shared[0]})
    back = read_tensors(tmp_path / "tied.safetensors")
    assert torch.equal(back["a.weight"], shared) and torch.equal(back["b.weight"], shared)
    assert torch.equal(back["c"], shared[0])
