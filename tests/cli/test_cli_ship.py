import json

import numpy as np
import pytest
import torch

from ticketlab.cli.main import main
from ticketlab.compact import load_model
from ticketlab.tickets.ticketfile import load_ticket

from helpers import tiny_dataset


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    ds = tiny_dataset(n=160, channels=1, size=8)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x=ds.train_x.numpy(), y=ds.train_y.numpy(), x_test=ds.test_x.numpy(), y_test=ds.test_y.numpy())
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


COMMON = ("--model", "lenet_300_100", "--epochs", "2", "--batch-size", "32", "--quiet")


def _one_level_ticket(store, tiny_npz, structure, capsys):
    """The ticket file of a one-level study with this structure and no baselines."""
    assert main(["find", *COMMON, "--dataset", str(tiny_npz), "--store", str(store), "--levels", "1",
                 "--structure", structure, "--baselines", ""]) == 0
    capsys.readouterr()
    return next(store.glob("runs/*/seed_0/level_1/ticket.safetensors"))


@pytest.fixture(scope="module")
def channel_study(tmp_path_factory, tiny_npz):
    store = tmp_path_factory.mktemp("store")
    code = main(["find", *COMMON, "--dataset", str(tiny_npz), "--store", str(store), "--levels", "2",
                 "--structure", "channel", "--baselines", "random", "--json"])
    assert code == 0
    return store


def test_find_structure_json_carries_speed(channel_study, tiny_npz, capsys):
    code, out, _ = _run(capsys, "find", *COMMON, "--dataset", tiny_npz, "--store", channel_study, "--levels", "2",
                        "--structure", "channel", "--baselines", "random", "--json")
    assert code == 0 and "CPU speed-up" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert all(row["speedup_cpu"] > 0 for row in summary["levels"])


def test_bench_and_export_a_ticket(channel_study, tmp_path, capsys):
    ticket_file = next(channel_study.glob("runs/*/seed_0/level_2/ticket.safetensors"))
    code, out, _ = _run(capsys, "bench", "--model-file", ticket_file, "--batch-sizes", "1,8", "--repeats", "2",
                        "--json")
    assert code == 0
    report = json.loads(out.strip().splitlines()[-1])
    variants = {(t["variant"], t["batch_size"]) for t in report["timings"]}
    assert variants == {(v, b) for v in ("dense", "masked", "compacted") for b in (1, 8)}
    assert report["parameters"]["compacted"] < report["parameters"]["dense"]

    out_file = tmp_path / "small.safetensors"
    code, out, _ = _run(capsys, "export", "--model-file", ticket_file, "--out", out_file, "--json")
    assert code == 0
    small = load_model(out_file)
    ticket = load_ticket(ticket_file)
    x = torch.randn(4, *ticket.input_shape)
    with torch.no_grad():
        assert torch.allclose(small(x), ticket.model.eval()(x), atol=1e-4)


def test_bench_rejects_files_that_are_not_tickets(tmp_path, capsys):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    code, _, err = _run(capsys, "bench", "--model-file", bad)
    assert code == 2 and "safetensors" in err and "Traceback" not in err
    code, _, err = _run(capsys, "bench", "--model-file", tmp_path / "none.safetensors")
    assert code == 2 and "does not exist" in err


def test_export_of_unstructured_ticket_explains(tmp_path, tiny_npz, capsys):
    ticket_file = _one_level_ticket(tmp_path / "store", tiny_npz, "group", capsys)
    code, _, err = _run(capsys, "export", "--model-file", ticket_file, "--out", tmp_path / "m.safetensors")
    assert code == 2 and "channel" in err and not (tmp_path / "m.safetensors").exists()


def test_train_noise_and_sat_flags(tmp_path, tiny_npz, capsys):
    code, out, _ = _run(capsys, "train", *COMMON, "--dataset", tiny_npz, "--store", tmp_path, "--noise", "uniform:0.5",
                        "--loss", "sat", "--sat-start", "1", "--json")
    assert code == 0
    s = json.loads(out.strip().splitlines()[-1])
    assert 0.2 < s["noise_rate"] < 0.6 and "corrected_fraction" in s
    code, _, err = _run(capsys, "train", *COMMON, "--dataset", tiny_npz, "--store", tmp_path, "--noise", "gaussian:0.5")
    assert code == 2 and "uniform" in err
    code, _, err = _run(capsys, "train", *COMMON, "--dataset", tiny_npz, "--store", tmp_path, "--loss", "sat")
    assert code == 2 and "--sat-start" in err


def test_prac_command_saves_a_reusable_set(tmp_path, tiny_npz, capsys):
    out_file = tmp_path / "prac.safetensors"
    code, out, _ = _run(capsys, "prac", *COMMON, "--dataset", tiny_npz, "--store", tmp_path / "s", "--out", out_file,
                        "--json")
    assert code == 0
    info = json.loads(out.strip().splitlines()[-1])
    assert 0 <= info["prac_fraction"] <= 1 and info["examples"] == 144  # find's 10% validation split held out
    # another architecture searches on it
    code, out, _ = _run(capsys, "find", "--model", "conv_2", "--epochs", "2", "--batch-size", "32", "--quiet",
                        "--dataset", tiny_npz, "--store", tmp_path / "s", "--levels", "1", "--baselines", "",
                        "--data", "prac", "--prac-file", out_file, "--json")
    assert code == 0, out


def test_bench_two_four_says_why_not_on_cpu(tmp_path, tiny_npz, capsys):
    ticket_file = _one_level_ticket(tmp_path / "store", tiny_npz, "nm", capsys)
    code, out, _ = _run(capsys, "bench", "--model-file", ticket_file, "--batch-sizes", "2", "--repeats", "1",
                        "--two-four", "--json")
    assert code == 0
    report = json.loads(out.strip().splitlines()[-1])
    assert "not run sparse" in report["semi_structured"] and "CUDA" in report["semi_structured"].upper()
    assert {t["variant"] for t in report["timings"]} == {"dense", "masked"}
