import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ticketlab.cli.main import study_table
from ticketlab.models import build_model
from ticketlab.tickets.ticketfile import load_ticket

from helpers import run_cli

_run = run_cli


def test_train_json_contract_and_reuse(tmp_path, tiny_npz, capsys):
    args = ["train", "--model", "conv_2", "--dataset", str(tiny_npz), "--epochs", "2", "--batch-size", "32",
            "--lr", "0.003", "--store", str(tmp_path / "store"), "--json", "--quiet"]
    code, out, err = _run(capsys, *args)
    assert code == 0 and out.count("\n") == 1 and "test_accuracy" in err  # stdout: the object alone
    result = json.loads(out)
    for key in ("run_id", "model", "dataset", "epochs", "test_accuracy", "train_seconds", "parameters", "density"):
        assert key in result
    assert result["model"] == "conv_2" and result["epochs"] == 2 and result["density"] == 1.0
    assert 0.0 <= result["test_accuracy"] <= 1.0 and result["parameters"] > 0
    # the same command again reuses the finished run instead of training
    code, out, err = _run(capsys, *args)
    assert code == 0 and "reusing" in err
    assert json.loads(out) == result
    code, out, _ = _run(capsys, "runs", "list", "--store", str(tmp_path / "store"))
    assert result["run_id"] in out and "finished" in out
    code, out, _ = _run(capsys, "runs", "show", result["run_id"][:5], "--store", str(tmp_path / "store"))
    assert json.loads(out)["summary"]["test_accuracy"] == result["test_accuracy"]
    code, out, _ = _run(capsys, "runs", "rm", result["run_id"], "--store", str(tmp_path / "store"))
    assert code == 0 and not (tmp_path / "store" / "runs" / result["run_id"]).exists()


def test_train_several_seeds_one_by_one_or_stacked(tmp_path, tiny_npz, capsys):
    base = ["train", "--dataset", str(tiny_npz), "--epochs", "2", "--seeds", "3", "--seed", "4",
            "--store", str(tmp_path / "store"), "--quiet", "--json"]
    code, out, err = _run(capsys, *base)
    assert code == 0 and "mean ± sample std over 3 seeds" in err
    plain = json.loads(out)
    assert plain["seeds"] == [4, 5, 6] and len(set(plain["run_ids"])) == 3 and not plain["stacked"]
    assert plain["test_accuracy"] == pytest.approx(sum(plain["test_accuracies"]) / 3)
    code, out, _ = _run(capsys, *base, "--stack")
    stacked = json.loads(out)
    assert code == 0 and stacked["stacked"] and set(stacked["run_ids"]).isdisjoint(plain["run_ids"])
    assert stacked["test_accuracies"] == pytest.approx(plain["test_accuracies"], abs=1e-9)  # float rounding only
    code, _, err = _run(capsys, *base[:-1], "--seeds", "0")
    assert code == 2 and "--seeds must be at least 1" in err


def test_train_dynamic_sparse_keeps_its_density_and_writes_the_masks_it_ends_with(tmp_path, tiny_npz, capsys):
    from ticketlab.sparsity import load_masks

    base = ["train", "--model", "conv_2", "--dataset", tiny_npz, "--epochs", "2", "--batch-size", "32",
            "--store", tmp_path / "store", "--quiet", "--update-every", "2"]
    code, out, err = _run(capsys, *base, "--dst", "rigl", "--density", "0.3", "--json")
    assert code == 0, err
    result = json.loads(out)
    masks = load_masks(Path(result["run_id"] and err.split("masks: ")[1].split()[0]))
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert kept == pytest.approx(0.3, abs=0.01) and result["density"] <= kept
    code, out, err = _run(capsys, *base, "--dst", "granet", "--density", "0.2", "--json")
    assert code == 0 and json.loads(out)["density"] == pytest.approx(0.2, abs=0.01)
    code, out, err = _run(capsys, *base, "--dst", "set", "--density", "0.3", "--seeds", "2", "--json")
    assert code == 0 and len(set(json.loads(out)["run_ids"])) == 2


@pytest.mark.parametrize("argv, message", [
    (["--density", "0.3"], "--density sets dynamic sparse training; add --dst"),
    (["--dst", "rigl"], "--dst rigl needs --density"),
    (["--dst", "rigl", "--density", "1.5"], "density must be in"),
    (["--dst", "rigl", "--density", "0.3", "--start-density", "0.5"], "--start-density is where GraNet"),
    (["--dst", "rigl", "--density", "0.3", "--masks", "m.safetensors"], "drop --masks"),
    (["--dst", "granet", "--density", "0.3", "--start-density", "0.2"], "GraNet prunes from"),
    (["--dst", "rigl", "--density", "0.3", "--lookahead", "2"], "would bring dropped weights back"),
    (["--dst", "rigl", "--density", "0.3"], "so they would never move; lower --update-every"),  # 10 steps
])
def test_dynamic_sparse_training_flags_are_checked(tmp_path, tiny_npz, capsys, argv, message):
    code, _, err = _run(capsys, "train", "--model", "conv_2", "--dataset", tiny_npz, "--epochs", "2",
                        "--store", tmp_path / "store", "--quiet", *argv)
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    (["--model", "resnet_9000"], "unknown model 'resnet_9000'; choose one of: "),
    (["--dataset", "imagenet22k"], "unknown dataset 'imagenet22k'"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--lr", "-0.1"], "--lr must be positive"),
    (["--precision", "fp16", "--loss-scale", "1000"], "--loss-scale must be 0 (dynamic) or a power of two"),
    (["--cuda-graph"], "--cuda-graph replays CUDA graphs and needs --device cuda"),
    (["--precision", "bf16"], "--precision bf16 sets the autocast dtype on CUDA, and cpu trains in fp32"),
    (["--stack"], "with one seed it trains the plain run, so add --seeds N or drop --stack"),
    (["--cuda-graph", "--compile"], "--cuda-graph and --compile both"),
    (["--seeds", "2", "--stack", "--cuda-graph"], "pass --cuda-graph or --stack, not both"),
    (["--schedule", "step"], "--milestones"),
    pytest.param(["--device", "cuda"], "no usable CUDA",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    (["--device", "tpu"], "device"),
    (["--epochs", "many"], "invalid int value"),
    (["--model-arg", "widths"], "KEY=VALUE"),
    (["--model", "lenet_300_100", "--model-arg", "depth=3"], "depth"),
    (["--model", "fastnet", "--model-arg", "widths=64"], "fastnet widths must be a non-empty sequence"),
    (["--model", "wide_resnet_16_4", "--model-arg", "dropout=abc"], "dropout must be in [0, 1)"),
    (["--loss", "sat", "--sat-start", "0", "--label-smoothing", "0.1"], "--label-smoothing has no effect"),
    (["--drop-last", "--batch-size", "100000"], "larger than the 160 training examples"),
    (["--batch-size", "161"], "larger than the 160 training examples"),
    (["--cutout", "-3"], "--cutout is the side of the square"),
    (["--warmup", "-1e-3"], "--warmup must be in [0, epochs=1)"),
    (["--cutout", "8"], "must be in [0, 8)"),
    (["--gamma", "0.5"], "--gamma has no effect without --schedule step"),
    (["--optimizer", "adam", "--momentum", "0.5"], "--momentum has no effect without --optimizer sgd"),
])
def test_user_errors_exit_2_with_one_line_and_write_nothing(tmp_path, tiny_npz, capsys, argv, message):
    store = tmp_path / "store"
    base = ["train", "--dataset", str(tiny_npz), "--epochs", "1", "--store", str(store), "--quiet"]
    code, out, err = _run(capsys, *base, *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (store / "runs").exists() or not any((store / "runs").iterdir())


def test_non_square_images_are_a_user_error_for_registered_models(tmp_path, capsys):
    import numpy as np

    path = tmp_path / "wide.npz"
    x = np.random.default_rng(0).integers(0, 256, (50, 8, 12), dtype=np.uint8)
    np.savez(path, x=x, y=np.arange(50) % 5)
    store = tmp_path / "store"
    code, _, err = _run(capsys, "train", "--dataset", str(path), "--epochs", "1", "--store", str(store), "--quiet")
    assert code == 2 and "square images" in err and "8x12" in err and err.count("\n") == 1
    assert not (store / "runs").exists() or not any((store / "runs").iterdir())


def test_missing_data_names_the_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TICKETLAB_DATA", raising=False)
    code, _, err = _run(capsys, "train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nothing"),
                        "--no-download", "--store", str(tmp_path / "s"))
    assert code == 2 and "data_batch_1" in err and str(tmp_path / "nothing") in err


def test_divergence_exits_2_and_leaves_no_run(tmp_path, tiny_npz, capsys):
    store = tmp_path / "store"
    code, _, err = _run(capsys, "train", "--model", "conv_2", "--dataset", str(tiny_npz), "--epochs", "2",
                        "--lr", "1e30", "--optimizer", "sgd", "--store", str(store), "--quiet")
    assert code == 2 and "diverged" in err
    assert not any((store / "runs").iterdir())
    code, out, _ = _run(capsys, "runs", "list", "--store", str(store))
    assert "no runs" in out


def test_models_and_datasets_listing(capsys):
    code, out, _ = _run(capsys, "models", "--json")
    models = json.loads(out)["models"]
    assert models["cifar_resnet_20"]["recipe"]["milestones"] in ([80, 120], [80.0, 120.0])
    assert models["fastnet"]["options"]["widths"] == [64, 256, 256] and models["fastnet"]["required"] == []
    assert models["fastnet"]["augment"]["alternate_flip"] is True and models["fastnet"]["revision"] == 1
    code, out, _ = _run(capsys, "models")
    fastnet_row = next(line for line in out.splitlines() if line.startswith("fastnet"))
    assert "widths=(64, 256, 256)" in fastnet_row and "lr=1.5" in fastnet_row
    code, out, _ = _run(capsys, "datasets")
    assert "cifar10" in out.split() and "mnist_subset" in out.split()
    code, out, _ = _run(capsys, "datasets", "--json")
    assert code == 0 and {"cifar10", "mnist_subset"} <= set(json.loads(out)["datasets"])  # one object, as always


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """`ticketlab models | head`: the closed pipe ends the command with the shell's SIGPIPE code, no traceback."""
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the table is written
    try:
        done = subprocess.run([sys.executable, "-m", "ticketlab.cli.main", "models"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == "", done.stderr


# Ctrl-C, and the stop a scheduler or `timeout` sends
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_checkpoints_and_rerun_resumes_to_the_same_result(tmp_path, tiny_npz, sig):
    """A real SIGINT or SIGTERM mid-run: exit 130, a checkpoint, and a resumed run equal to an uninterrupted one."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    common = ["--model", "conv_2", "--dataset", str(tiny_npz), "--epochs", "30", "--batch-size", "16",
              "--lr", "0.001", "--json", "--quiet"]
    cli = [sys.executable, "-m", "ticketlab.cli.main", "train"]
    reference = subprocess.run(
        cli + common + ["--store", str(tmp_path / "ref")], capture_output=True, text=True, env=env
    )
    assert reference.returncode == 0, reference.stderr
    expected = json.loads(reference.stdout.strip().splitlines()[-1])

    store = tmp_path / "run"
    proc = subprocess.Popen(
        cli + common + ["--store", str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    checkpoint = store / "runs" / expected["run_id"] / "checkpoint.safetensors"
    deadline = time.time() + 60
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived (machine too fast for this test)")
    assert proc.returncode == 130 and "resume" in err and "Traceback" not in err
    assert checkpoint.exists()
    resumed = subprocess.run(cli + common + ["--store", str(store)], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    got = json.loads(resumed.stdout.strip().splitlines()[-1])
    for key in ("run_id", "test_accuracy", "test_loss", "train_loss", "train_accuracy", "iterations"):
        assert got[key] == expected[key], key


def test_find_json_contract_and_errors(tmp_path, tiny_npz, capsys):
    base = ["find", "--model", "conv_2", "--dataset", str(tiny_npz), "--epochs", "2", "--batch-size", "32",
            "--lr", "0.003", "--store", str(tmp_path / "store"), "--quiet"]
    code, out, _ = _run(capsys, *base, "--levels", "2", "--baselines", "reinit,random", "--plot",
                        str(tmp_path / "p.png"), "--json")
    assert code == 0
    s = json.loads(out)
    assert set(s["dense"]) >= {"mean", "std"} and len(s["levels"]) == 2
    for row in s["levels"]:
        assert {"level", "density", "ticket", "reinit", "random", "winning"} <= set(row)
        assert set(row["ticket"]) >= {"mean", "std"}
    assert "sparsest_winning_density" in s and (tmp_path / "p.png").exists()
    assert "verdict" in out and "reinit" in out
    code, _, err = _run(capsys, "prune", "--run", s["study_id"], "--density", "0.5", "--dataset", tiny_npz,
                        "--store", tmp_path / "store", "--out", tmp_path / "m.safetensors")
    assert code == 2 and "is a ticket study, not a training run" in err and not (tmp_path / "m.safetensors").exists()
    code, out, _ = _run(capsys, *base, "--levels", "1", "--baselines", "random", "--stack", "--json")
    assert code == 0 and json.loads(out)["stacked"] is True
    for argv, message in ((["--fraction", "1.5"], "--fraction"), (["--rewind", "50ep"], "beyond training"),
                          (["--rewind", "-1ep"], "cannot read rewind point '-1ep'"),
                          (["--baselines", "reinit,nope"], "unknown baseline 'nope'"),
                          (["--stack", "--loss", "sat", "--sat-start", "1"], "supports --loss ce only"),
                          (["--refill-multiple", "16"], "add --structure channel"),
                          (["--structure", "channel", "--refill-multiple", "0"], "must be a positive"),
                          (["--keep-streams"], "has none (no channels are written by two layers)"),
                          (["--baselines", "reinit,reinit"], "names an arm twice"),
                          (["--stack", "--structure", "channel", "--no-compact-training"], "no effect with --stack"),
                          (["--early-bird", "0.1"], "from 7 epochs on; this one trains 2"),
                          (["--structure", "nm", "--nm", "4:4"], "0 < N < M")):
        code, _, err = _run(capsys, *base, *argv)
        assert code == 2 and message in err and err.count("\n") == 1


def test_study_table_shows_every_arm_the_study_ran_in_its_order():
    arm = lambda mean: {"mean": mean, "std": 0.0, "n": 1}  # noqa: E731
    row = {"level": 1, "density": 0.8, "ticket": arm(0.9), "scratch": arm(0.7), "mine": arm(0.6),
           "validation": {"ticket": arm(0.9)}, "winning": False, "matches_dense": True, "tolerance": 0.002}
    summary = {"dense": arm(0.91), "dense_validation": arm(0.91), "levels": [row], "verdict_on": "validation"}
    header, _, dense, level = study_table(summary).splitlines()[1:5]
    assert header.split()[:5] == ["level", "density", "dense", "ticket", "scratch"] and header.split()[5] == "mine"
    assert "70.00 ± 0.00" in level and "60.00 ± 0.00" in level and "validation" not in header


@pytest.mark.parametrize("criterion", ["magnitude", "random", "snip", "grasp", "synflow"])
def test_prune_at_init_every_criterion_then_train_the_masks(tmp_path, tiny_npz, capsys, criterion):
    masks = tmp_path / "m.safetensors"
    store = str(tmp_path / "store")
    code, out, _ = _run(capsys, "prune", "--model", "conv_2", "--dataset", str(tiny_npz), "--criterion", criterion,
                        "--density", "0.25", "--out", str(masks), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["density"] == pytest.approx(0.25, abs=1e-4)
    code, out, _ = _run(capsys, "train", "--model", "conv_2", "--dataset", str(tiny_npz), "--masks", str(masks),
                        "--epochs", "1", "--store", store, "--quiet", "--json")
    assert code == 0 and json.loads(out)["density"] == pytest.approx(0.25, abs=1e-3)


def test_prune_a_finished_run_and_bad_inputs(tmp_path, tiny_npz, capsys):
    store = str(tmp_path / "store")
    code, out, _ = _run(capsys, "train", "--model", "conv_2", "--dataset", str(tiny_npz), "--epochs", "1",
                        "--store", store, "--quiet", "--json")
    run_id = json.loads(out)["run_id"]
    out_masks = tmp_path / "m.safetensors"
    code, out, _ = _run(capsys, "prune", "--run", run_id[:6], "--dataset", str(tiny_npz), "--store", store,
                        "--budget", "erk", "--density", "0.1", "--out", str(out_masks))
    assert code == 0 and "total" in out and out_masks.exists(), _
    # a mask that does not fit the model, an impossible density, an unknown criterion
    for argv, message in (
        (["train", "--model", "lenet_300_100", "--masks", str(out_masks), "--epochs", "1"], "does not fit the model"),
        (["prune", "--model", "conv_2", "--density", "1.5"], "density must be in (0, 1]"),
        (["prune", "--model", "conv_2", "--density", "0.5", "--criterion", "oracle"], "unknown pruning criterion"),
        (["train", "--model", "conv_2", "--masks", str(tmp_path / "none.safetensors")], "no mask file"),
        (["prune", "--model", "conv_2", "--density", "0.5", "--keep-streams"], "has none"),
    ):
        code, _, err = _run(capsys, *argv, "--dataset", str(tiny_npz), "--store", store, "--quiet")
        assert code == 2 and message in err and err.count("\n") == 1, err
    code, out, _ = _run(capsys, "runs", "list", "--store", store)
    assert out.count("finished") == 1  # the failed run left nothing behind


def test_find_names_an_impossible_validation_split_as_the_cause(tmp_path, tiny_npz, capsys):
    code, _, err = _run(capsys, "find", "--dataset", str(tiny_npz), "--epochs", "1", "--levels", "1",
                        "--validation", "500", "--store", str(tmp_path / "store"), "--quiet")
    assert code == 2 and "cannot hold out 500 of 160 examples" in err and "Traceback" not in err


def test_prune_refuses_training_flags_and_a_model_other_than_the_runs(tmp_path, tiny_npz, capsys):
    store = str(tmp_path / "store")
    base = ["--dataset", str(tiny_npz), "--store", store, "--quiet"]
    code, _, err = _run(capsys, "prune", "--density", "0.5", "--epochs", "-5", "--lr", "0.3", *base)
    assert code == 2 and "prune trains nothing, so --epochs, --lr would be ignored" in err
    code, out, _ = _run(capsys, "train", "--epochs", "1", *base, "--json")
    run_id = json.loads(out)["run_id"]
    code, _, err = _run(capsys, "prune", "--density", "0.5", "--run", run_id, "--model", "conv_2", *base,
                        "--out", str(tmp_path / "m.safetensors"))
    assert code == 2 and "trained lenet_300_100, not --model conv_2" in err
    code, _, err = _run(capsys, "prune", "--density", "0.5", "--run", run_id, "--model-arg", "widths=8", *base,
                        "--out", str(tmp_path / "m.safetensors"))
    assert code == 2 and "with its own options (the defaults); drop --model-arg" in err
    assert not (tmp_path / "m.safetensors").exists()
    code, out, _ = _run(capsys, "prune", "--density", "0.5", "--run", run_id, *base,
                        "--out", str(tmp_path / "m.safetensors"))
    assert code == 0 and f"--dataset {tiny_npz} --masks" in out


def test_find_builds_the_model_with_its_model_args(tmp_path, tiny_npz, capsys):
    code, _, _ = _run(capsys, "find", "--model", "fastnet", "--model-arg", "widths=[4,8]", "--model-arg",
                      "convs_per_group=1", "--dataset", tiny_npz, "--epochs", "1", "--batch-size", "32",
                      "--levels", "1", "--structure", "channel", "--baselines", "", "--store", tmp_path, "--quiet")
    assert code == 0
    ticket = load_ticket(next(tmp_path.glob("runs/*/seed_0/level_1/ticket.safetensors")))
    assert ticket.info["options"] == {"convs_per_group": 1, "widths": [4, 8]}
    expected = build_model("fastnet", num_classes=4, in_channels=3, image_size=8, widths=(4, 8), convs_per_group=1)
    assert [p.shape for p in ticket.model.parameters()] == [p.shape for p in expected.parameters()]


@pytest.mark.parametrize("command", ["find", "prune", "prac"])
def test_masks_is_an_option_of_train_only(command, capsys):
    required = ["--density", "0.5"] if command == "prune" else []
    code, _, err = _run(capsys, command, *required, "--masks", "m.safetensors")
    assert code == 2 and "unrecognized arguments: --masks" in err


@pytest.mark.parametrize("text,expected", [
    ("widths=[4,8]", ("widths", (4, 8))), ("widths=4,8", ("widths", (4, 8))), ("dropout=0.3", ("dropout", 0.3)),
    ("name=abc", ("name", "abc")), ("flag=true", ("flag", True)),
])
def test_model_arg_values_read_as_json_or_a_comma_list(text, expected):
    from ticketlab.cli.main import _model_arg

    assert _model_arg(text) == expected


def test_sigterm_outside_training_ends_a_command_as_ctrl_c_does(monkeypatch, capsys):
    import ticketlab.cli.main as cli

    def terminated(args):
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler or `timeout` sends it
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(cli, "cmd_datasets", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["datasets"]) == 130
    err = capsys.readouterr().err
    assert "interrupted; run the same command again to resume" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) is before  # put back for whoever called main()


@pytest.fixture
def files(tmp_path):
    """Things a careless user points options at: a plain file, a text file named .npz, a folder."""
    (tmp_path / "plain").write_text("not a folder")
    (tmp_path / "text.npz").write_text("labels, one per line")
    (tmp_path / "folder").mkdir()
    return tmp_path


@pytest.mark.parametrize("argv,message", [
    (["prune", "--density", "0.5", "--out", "m.txt"], "--out m.txt should be a .safetensors file"),
    (["prune", "--density", "0.5", "--out", "{plain}/m.safetensors"], "is a file, not a folder"),
    (["prune", "--density", "0.5", "--device", "cuda"], "prune scores weights on the CPU"),
    (["prune", "--density", "1e-9"], "--density 1e-09 keeps none of the"),
    (["prac", "--out", "{folder}/p.npz"], "should be a .safetensors file"),
    (["train", "--noise-seed", "3"], "--noise-seed seeds the label noise of --noise"),
    (["train", "--noise", "file:labels.npz:noisy", "--noise-seed", "3"], "reads its labels; drop --noise-seed"),
    (["train", "--noise", "file:{text}:y"], "is not a .npz archive"),
    (["train", "--dataset", "cifar10", "--data-dir", "{plain}"], "--data-dir {plain} is a file, not a folder"),
    (["find", "--nm", "2:4"], "--nm sets the N:M pattern of --structure nm"),
    (["find", "--plot", "{folder}"], "should be a .png file"),
    (["find", "--plot", "{plain}/p.png"], "is a file, not a folder"),
    (["find", "--batch-size", "150"], "--batch-size 150 is larger than the 144 training examples"),
    (["bench", "--model-file", "{folder}"], "is a folder, not a ticket file"),
])
def test_careless_options_exit_2_with_the_cause_and_write_nothing(tmp_path, tiny_npz, capsys, monkeypatch, files,
                                                                   argv, message):
    names = {"plain": files / "plain", "folder": files / "folder", "text": files / "text.npz"}
    fill = lambda text: text.format(**names)  # noqa: E731
    store = tmp_path / "store"
    given = set(argv)
    base = [*(["--dataset", str(tiny_npz)] if "--dataset" not in given and argv[0] != "bench" else []),
            *(["--store", str(store), "--epochs", "1"] if argv[0] in ("train", "find", "prac") else []),
            *(["--quiet"] if argv[0] != "bench" else [])]
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, *[fill(a) for a in argv], *base)
    assert code == 2 and fill(message) in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob("**/*.png"))
    assert not (store / "runs").exists() or not any((store / "runs").iterdir())


def test_damaged_ticket_metadata_and_empty_masks_are_named(tmp_path, tiny_npz, capsys):
    from safetensors.torch import save_file

    for text, missing in (("{not json", "model"), ("[1, 2]", "model"), ('{"model": "conv_2"}', "options")):
        save_file({"weight/x": torch.zeros(1)}, tmp_path / "t.safetensors", metadata={"ticketlab.ticket": text})
        code, _, err = _run(capsys, "bench", "--model-file", tmp_path / "t.safetensors")
        assert code == 2 and "has damaged ticket metadata" in err and missing in err and "Traceback" not in err
    save_file({"conv1.weight": torch.zeros(4, 3, 3, 3, dtype=torch.bool)}, tmp_path / "m.safetensors")
    code, _, err = _run(capsys, "train", "--model", "conv_2", "--dataset", tiny_npz, "--masks",
                        tmp_path / "m.safetensors", "--store", tmp_path / "store", "--quiet")
    assert code == 2 and "keep no weight at all" in err


def test_prune_refuses_cutout_and_scores_without_the_validation_examples(tmp_path, tiny_npz, capsys):
    base = ["--dataset", str(tiny_npz), "--store", str(tmp_path / "store"), "--quiet", "--criterion", "snip"]
    code, _, err = _run(capsys, "prune", "--density", "0.5", "--cutout", "4", *base)
    assert code == 2 and "--cutout would be ignored" in err
    outs = []
    for extra in ([], ["--validation", "8"]):
        out = tmp_path / f"m{len(outs)}.safetensors"
        code, _, _ = _run(capsys, "prune", "--density", "0.5", *base, *extra, "--out", str(out))
        assert code == 0
        outs.append(out.read_bytes())
    assert outs[0] != outs[1]  # SNIP's batch came from the training part only


def test_table_numbers_keep_their_value():
    from ticketlab.cli.table import fmt

    assert [fmt(v) for v in (0.5, 0.0, 5e-05, 19430.2, 1234.56789, None)] == [
        "0.5000", "0.0000", "5e-05", "19430", "1234.5679", "-"]


def test_prune_a_run_uses_its_data_settings_and_refuses_others(tmp_path, tiny_npz, capsys):
    store = str(tmp_path / "store")
    code, out, _ = _run(capsys, "train", "--model", "conv_2", "--dataset", str(tiny_npz), "--validation", "20",
                        "--noise", "uniform:0.2", "--epochs", "1", "--store", store, "--quiet", "--json")
    run_id = json.loads(out)["run_id"]
    masks = str(tmp_path / "m.safetensors")
    code, _, err = _run(capsys, "prune", "--run", run_id, "--validation", "10", "--density", "0.5", "--store", store,
                        "--dataset", str(tiny_npz), "--out", masks, "--quiet")
    assert code == 2 and "trained with --validation 20, not 10; drop --validation" in err
    code, _, err = _run(capsys, "prune", "--run", run_id, "--density", "0.5", "--store", store, "--out", masks)
    assert code == 2 and "trained on a dataset file (tiny), which runs do not keep; pass --dataset" in err
    other = tmp_path / "other.npz"
    with np.load(tiny_npz) as z:
        np.savez(other, **{k: z[k][::-1].copy() if k == "train_y" else z[k] for k in z.files})
    code, _, err = _run(capsys, "prune", "--run", run_id, "--density", "0.5", "--dataset", str(other),
                        "--store", store, "--out", masks, "--quiet")
    assert code == 2 and "trained on other data than other holds now" in err
    assert not Path(masks).exists()
    # no other data flag: the run's split and noisy labels
    code, out, _ = _run(capsys, "prune", "--run", run_id, "--criterion", "snip", "--density", "0.5",
                        "--dataset", str(tiny_npz), "--store", store, "--out", masks, "--no-download", "--quiet")
    assert code == 0, out
    assert f"--dataset {tiny_npz} --validation 20 --noise uniform:0.2 --noise-seed 0 --masks" in out
