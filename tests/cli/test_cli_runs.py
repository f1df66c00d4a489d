"""`ticketlab runs`, and what the CLI does with a store it cannot use: one-line user errors."""

import json
import threading

import pytest
import torch

from ticketlab.config import RunConfig, TrainConfig
from ticketlab.errors import TicketlabError
from ticketlab.sparsity import save_masks
from ticketlab.store import RunStore
from ticketlab.tickets import imp

from helpers import run_cli

_run = run_cli


def _only_json(out: str) -> dict:
    """`--json`: stdout is one object on one line and nothing else."""
    assert out.count("\n") == 1, out
    only = json.loads(out)
    assert isinstance(only, dict)
    return only


def _user_error(code: int, err: str, *expected: str, log: bool = False) -> None:
    """Exit 2 and one error line, the last on stderr (`log`: after a study's progress lines)."""
    lines = err.splitlines()
    assert code == 2 and "Traceback" not in err and lines[-1].startswith("ticketlab: error: "), err
    assert len(lines) == 1 or log and err.count("ticketlab: error") == 1, err
    for text in expected:
        assert text in lines[-1], err


def test_runs_json_is_one_object_alone_on_stdout(tmp_path, capsys):
    store = RunStore(tmp_path)
    a, b = RunConfig(train=TrainConfig(epochs=2)), RunConfig(train=TrainConfig(epochs=3))
    store.begin(a), store.begin(b)
    store.finish(a.run_id, {"test_accuracy": 0.5})

    code, out, _ = _run(capsys, "runs", "list", "--store", tmp_path, "--json")
    runs = _only_json(out)["runs"]
    assert code == 0 and {r["run_id"]: r["status"] for r in runs} == {a.run_id: "finished", b.run_id: "incomplete"}
    assert next(r for r in runs if r["run_id"] == a.run_id)["summary"] == {"test_accuracy": 0.5}
    code, out, _ = _run(capsys, "runs", "list", b.run_id[:6], "--store", tmp_path, "--json")  # only those named
    assert code == 0 and [r["run_id"] for r in _only_json(out)["runs"]] == [b.run_id]

    code, out, _ = _run(capsys, "runs", "show", a.run_id[:6], b.run_id, "--store", tmp_path, "--json")
    shown = _only_json(out)["runs"]
    assert code == 0 and [r["run_id"] for r in shown] == [a.run_id, b.run_id]
    assert shown[0]["summary"] == {"test_accuracy": 0.5} and shown[1]["config"]["train"]["epochs"] == 3
    assert shown[0]["folder"] == str(store.folder(a.run_id))

    code, out, _ = _run(capsys, "runs", "show", a.run_id, "--store", tmp_path)  # without --json: readable
    assert code == 0 and json.loads(out)["run_id"] == a.run_id and out.count("\n") > 1

    code, out, _ = _run(capsys, "runs", "rm", a.run_id, "--store", tmp_path, "--json")
    assert code == 0 and _only_json(out) == {"removed": [a.run_id]}
    code, out, _ = _run(capsys, "runs", "list", "--store", tmp_path, "--json")
    assert [r["run_id"] for r in _only_json(out)["runs"]] == [b.run_id]


def test_a_run_held_by_a_training_process_is_listed_as_training_and_not_removed(tmp_path, capsys):
    cfg, held, done = RunConfig(train=TrainConfig(epochs=2)), threading.Event(), threading.Event()

    def train_elsewhere():
        with RunStore(tmp_path).claim(cfg):
            held.set()
            done.wait(30)

    holder = threading.Thread(target=train_elsewhere)
    holder.start()
    assert held.wait(30)
    try:
        code, out, _ = _run(capsys, "runs", "list", "--store", tmp_path, "--json")
        assert [r["status"] for r in _only_json(out)["runs"]] == ["training"]
        code, _, err = _run(capsys, "runs", "rm", cfg.run_id, "--store", tmp_path)
        _user_error(code, err, cfg.run_id, "being trained by another process")
        assert RunStore(tmp_path).get(cfg.run_id) is not None
    finally:
        done.set()
        holder.join(30)
    code, out, _ = _run(capsys, "runs", "list", "--store", tmp_path, "--json")
    assert [r["status"] for r in _only_json(out)["runs"]] == ["incomplete"]  # interrupted: resumable, removable
    assert _run(capsys, "runs", "rm", cfg.run_id, "--store", tmp_path)[0] == 0


@pytest.mark.parametrize("argv", [["list"], ["list", "--json"], ["show", "abc"], ["rm", "abc"]])
def test_runs_commands_never_create_a_store(tmp_path, capsys, argv):
    empty = tmp_path / "empty"
    empty.mkdir()
    for where in (tmp_path / "typo", empty):
        code, out, err = _run(capsys, "runs", *argv, "--store", where)
        _user_error(code, err, f"no run store at {where}; ")
        assert out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"] and not any(empty.iterdir())


def test_corrupt_artifacts_of_a_finished_run_are_user_errors(tmp_path, tiny_npz, capsys):
    store = tmp_path / "store"
    train = ["train", "--model", "conv_2", "--dataset", tiny_npz, "--epochs", "1", "--batch-size", "32",
             "--store", store, "--quiet", "--json"]
    code, out, _ = _run(capsys, *train)
    run = _only_json(out)["run_id"]
    folder = store / "runs" / run
    fix = f"`ticketlab runs rm {run} --store {store}`"

    history = (folder / "history.json").read_text()
    (folder / "history.json").write_text(history[: len(history) // 2])
    code, out, err = _run(capsys, *train)
    _user_error(code, err, str(folder / "history.json"), fix)
    (folder / "history.json").write_text(history)

    final = folder / "final.safetensors"
    final.write_bytes(final.read_bytes()[:1000])
    code, _, err = _run(capsys, *train)
    _user_error(code, err, str(final), fix)
    code, _, err = _run(capsys, "prune", "--model", "conv_2", "--dataset", tiny_npz, "--density", "0.5",
                        "--run", run, "--out", tmp_path / "m.safetensors", "--store", store)
    _user_error(code, err, str(final), fix)
    assert not (tmp_path / "m.safetensors").exists()

    assert _run(capsys, "runs", "rm", run, "--store", store)[0] == 0  # the fix the messages name works
    code, out, err = _run(capsys, *train)
    assert code == 0 and _only_json(out)["run_id"] == run and "reusing" not in err


def test_a_study_that_fails_leaves_no_study_record(tmp_path, tiny_npz, capsys, monkeypatch):
    store = tmp_path / "store"
    find = ["find", "--model", "conv_2", "--dataset", tiny_npz, "--epochs", "1", "--batch-size", "32",
            "--levels", "1", "--store", store, "--quiet"]

    def runs() -> dict[str, tuple[str, str]]:
        code, out, _ = _run(capsys, "runs", "list", "--store", store, "--json")
        return {r["run_id"]: (r["kind"], r["status"]) for r in _only_json(out)["runs"]}

    code, _, err = _run(capsys, *find, "--lr", "1e30", "--optimizer", "sgd")  # the dense run diverges
    _user_error(code, err, "diverged", log=True)
    assert runs() == {}

    def fail(*args, **kwargs):
        raise TicketlabError("a user error while pruning")

    monkeypatch.setattr(imp._Study, "prune", fail)
    code, _, err = _run(capsys, *find)
    _user_error(code, err, "a user error while pruning", log=True)
    assert list(runs().values()) == [("train", "finished")]  # the finished dense run stays, to be reused

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(imp._Study, "prune", interrupt)
    assert _run(capsys, *find)[0] == 130
    assert sorted(runs().values()) == [("find", "incomplete"), ("train", "finished")]  # Ctrl-C: resumable

    monkeypatch.undo()
    code, _, err = _run(capsys, *find)
    assert code == 0, err
    assert ("find", "finished") in runs().values()


def test_runs_list_shows_a_studys_model_and_dataset(tmp_path, tiny_npz, capsys):
    store = str(tmp_path / "store")
    code, _, _ = _run(capsys, "find", "--dataset", tiny_npz, "--epochs", "1", "--levels", "1", "--baselines", "",
                      "--batch-size", "32", "--store", store, "--quiet")
    assert code == 0
    code, out, _ = _run(capsys, "runs", "list", "--store", store)
    study = next(line for line in out.splitlines() if " find " in line)
    assert "lenet_300_100" in study and "tiny" in study


def test_an_unknown_option_points_to_the_subcommands_help(capsys):
    code, _, err = _run(capsys, "prac", "--seeds", "2")
    assert code == 2 and "unrecognized arguments: --seeds 2 (see `ticketlab prac --help`)" in err


@pytest.mark.parametrize("argv", [
    ["train", "--dataset", "missing.npz"],
    ["train", "--epochs", "0"],
    ["find", "--levels", "1", "--fraction", "1.5"],
    ["prac", "--dataset", "missing.npz", "--out", "p.safetensors"],
])
def test_a_command_stopped_by_a_user_error_leaves_no_store(tmp_path, capsys, argv):
    code, _, err = _run(capsys, *argv, "--store", tmp_path / "store", "--no-download", "--quiet")
    _user_error(code, err)
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("extra", [[], ["--seeds", "2", "--stack"]])
def test_a_batch_larger_than_the_data_or_masks_that_do_not_fit_leave_no_store(tmp_path, tiny_npz, capsys, extra):
    code, _, err = _run(capsys, "train", "--dataset", tiny_npz, "--batch-size", "1000", *extra,
                        "--store", tmp_path / "store", "--quiet")
    _user_error(code, err, "--batch-size 1000 is larger than the 160 training examples")
    masks = tmp_path / "m.safetensors"
    save_masks(masks, {"nowhere.weight": torch.ones(4, 4, dtype=torch.bool)})
    code, _, err = _run(capsys, "train", "--dataset", tiny_npz, "--masks", masks, *extra,
                        "--store", tmp_path / "store", "--quiet")
    _user_error(code, err, "mask does not fit the model")
    assert not (tmp_path / "store").exists()
