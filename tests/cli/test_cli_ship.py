import json
import re
import subprocess
import sys

import pytest
import torch

from ticketlab.cli.main import main, study_table
from ticketlab.compact import load_model
from ticketlab.tickets.ticketfile import load_ticket

from helpers import run_cli

_run = run_cli


COMMON = ("--model", "lenet_300_100", "--epochs", "2", "--batch-size", "32", "--quiet")


def _one_level_ticket(store, grey_npz, structure, capsys):
    """The ticket file of a one-level study with this structure and no baselines."""
    assert main(["find", *COMMON, "--dataset", str(grey_npz), "--store", str(store), "--levels", "1",
                 "--structure", structure, "--baselines", ""]) == 0
    capsys.readouterr()
    return next(store.glob("runs/*/seed_0/level_1/ticket.safetensors"))


@pytest.fixture(scope="module")
def channel_study(tmp_path_factory, grey_npz):
    store = tmp_path_factory.mktemp("store")
    code = main(["find", *COMMON, "--dataset", str(grey_npz), "--store", str(store), "--levels", "2",
                 "--structure", "channel", "--baselines", "random", "--json"])
    assert code == 0
    return store


def test_find_structure_json_carries_speed(channel_study, grey_npz, capsys):
    code, out, err = _run(capsys, "find", *COMMON, "--dataset", grey_npz, "--store", channel_study, "--levels", "2",
                          "--structure", "channel", "--baselines", "random", "--json")
    assert code == 0 and "CPU speed-up" in err and "ticket train s" in err and "FLOPs vs dense" in err
    summary = json.loads(out)
    assert all(row["speedup_cpu"] > 0 for row in summary["levels"])
    assert "GPU speed-up" not in err  # a CPU study has no GPU figure
    for row, ratio in zip(summary["levels"], (1.25, 1.75)):  # as a study trained on a GPU records them
        row["speedup_gpu"] = ratio
    table = study_table(summary)
    assert "GPU speed-up (b256)" in table and "1.25x" in table and "1.75x" in table


def test_bench_and_export_a_ticket(channel_study, tmp_path, capsys):
    ticket_file = next(channel_study.glob("runs/*/seed_0/level_2/ticket.safetensors"))
    code, out, err = _run(capsys, "bench", "--model-file", ticket_file, "--batch-sizes", "1,8", "--repeats", "2",
                          "--json")
    assert code == 0
    report = json.loads(out)
    variants = {(t["variant"], t["batch_size"]) for t in report["timings"]}
    assert variants == {(v, b) for v in ("dense", "masked", "compacted") for b in (1, 8)}
    assert report["parameters"]["compacted"] < report["parameters"]["dense"]
    flops = report["flops"]  # a masked network computes its zeros; the compacted one does not
    assert flops["masked"] == flops["dense"] and 0 < flops["compacted"] < flops["dense"]
    assert "MFLOPs/image" in err
    assert report["multiple"] == 1 and report["cuda_graph"] is False  # exact widths: fastest on CPUs

    code, out, err = _run(capsys, "bench", "--model-file", ticket_file, "--batch-sizes", "2", "--repeats", "1",
                          "--multiple", "8", "--json")
    padded = json.loads(out)
    assert code == 0 and padded["multiple"] == 8 and "padded to multiples of 8" in err
    assert report["parameters"]["compacted"] < padded["parameters"]["compacted"] <= report["parameters"]["dense"]
    assert all(g["channels"]["after"] % 8 == 0 or g["channels"]["after"] == g["channels"]["before"]
               for g in padded["compaction"]["groups"])

    out_file = tmp_path / "small.safetensors"
    code, out, _ = _run(capsys, "export", "--model-file", ticket_file, "--out", out_file, "--json")
    assert code == 0
    small = load_model(out_file)
    ticket = load_ticket(ticket_file)
    x = torch.randn(4, *ticket.input_shape)
    with torch.no_grad():
        assert torch.allclose(small(x), ticket.model.eval()(x), atol=1e-4)


@pytest.fixture(scope="module")
def conv_ticket(tmp_path_factory, grey_npz):
    """A conv_2 channel ticket: its input is (1, 8, 8), so an exporter given one example's shape as a
    batch's fails on it (LeNet flattens any shape and hid that)."""
    store = tmp_path_factory.mktemp("conv_store")
    assert main(["find", "--model", "conv_2", "--epochs", "1", "--batch-size", "32", "--quiet", "--dataset",
                 str(grey_npz), "--store", str(store), "--levels", "1", "--structure", "channel",
                 "--baselines", ""]) == 0
    return next(store.glob("runs/*/seed_0/level_1/ticket.safetensors"))


def _masked_outputs(ticket_file, x):
    with torch.no_grad():
        return load_ticket(ticket_file).model.eval()(x)


def test_export_a_conv_ticket(conv_ticket, tmp_path, capsys):
    out_file = tmp_path / "conv.safetensors"
    code, _, err = _run(capsys, "export", "--model-file", conv_ticket, "--out", out_file)
    assert code == 0, err
    small = load_model(out_file)
    assert small.meta["ticketlab.input_shape"] == [1, 1, 8, 8]  # a batch's shape, as save_model documents
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(small(x), _masked_outputs(conv_ticket, x), atol=1e-4)


def test_export_a_conv_ticket_to_onnx_quietly(conv_ticket, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out_file = tmp_path / "conv.onnx"
    # a subprocess: torch logs through handlers made at import, which pytest's capture does not see
    done = subprocess.run([sys.executable, "-m", "ticketlab.cli.main", "export", "--model-file", str(conv_ticket),
                           "--out", str(out_file)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    session = ort.InferenceSession(str(out_file), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 1, 8, 8)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.allclose(torch.from_numpy(got), _masked_outputs(conv_ticket, x), atol=1e-4)


def test_export_refuses_an_unknown_format_or_a_directory_before_any_work(tmp_path, capsys):
    missing_ticket = tmp_path / "none.safetensors"  # loading it would fail: the --out checks come first
    for out in (tmp_path / "x.pt", tmp_path / "x"):
        code, _, err = _run(capsys, "export", "--model-file", missing_ticket, "--out", out)
        assert code == 2 and ".safetensors" in err and ".onnx" in err and "Traceback" not in err
        assert not out.exists()
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    code, _, err = _run(capsys, "export", "--model-file", missing_ticket, "--out", folder)
    assert code == 2 and "is a folder" in err and "Traceback" not in err
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["folder.safetensors"]


def test_bench_refuses_cuda_graphs_on_the_cpu(conv_ticket, capsys):
    code, _, err = _run(capsys, "bench", "--model-file", conv_ticket, "--cuda-graph")
    assert code == 2 and "CUDA graphs need a CUDA device" in err and "--device cuda" in err and "Traceback" not in err


def test_bench_compiled_times_every_variant_and_says_so(conv_ticket, capsys):
    code, out, err = _run(capsys, "bench", "--model-file", conv_ticket, "--batch-sizes", "2", "--repeats", "1",
                          "--compile", "--json")
    assert code == 0 and "compiled by torch.compile with frozen weights" in err
    report = json.loads(out)
    assert report["compiled"] is True
    assert [t["variant"] for t in report["timings"]] == ["dense", "masked", "compacted"]
    assert "Traceback" not in err


def test_bench_times_every_variant_in_the_precision_asked_for(conv_ticket, capsys, monkeypatch):
    import ticketlab.speed

    seen = {}
    real = ticketlab.speed.measure

    def spy(variants, *args, **kwargs):
        seen.update({name: {p.dtype for p in m.parameters()} for name, m in variants.items()}, input=kwargs["dtype"])
        return real(variants, *args, **kwargs)

    monkeypatch.setattr(ticketlab.speed, "measure", spy)
    code, out, err = _run(capsys, "bench", "--model-file", conv_ticket, "--batch-sizes", "2", "--repeats", "1",
                          "--precision", "bf16", "--json")
    assert code == 0 and ", bfloat16," in err
    assert json.loads(out)["precision"] == "bfloat16"
    assert seen == {"dense": {torch.bfloat16}, "masked": {torch.bfloat16}, "compacted": {torch.bfloat16},
                    "input": torch.bfloat16}
    code, _, err = _run(capsys, "bench", "--model-file", conv_ticket, "--two-four", "--precision", "bf16")
    assert code == 2 and "drop --precision" in err


def test_bench_refuses_negative_threads(conv_ticket, capsys):
    code, _, err = _run(capsys, "bench", "--model-file", conv_ticket, "--threads", "-1")
    assert code == 2 and "--threads" in err and "positive" in err and "Traceback" not in err
    code, _, err = _run(capsys, "bench", "--model-file", conv_ticket, "--threads", "100000")  # crashed OpenMP
    assert code == 2 and "at most" in err and "Traceback" not in err


def test_bench_two_four_says_a_ticket_without_two_four_masks_ran_nothing_sparse(conv_ticket, capsys):
    code, out, err = _run(capsys, "bench", "--model-file", conv_ticket, "--batch-sizes", "2", "--repeats", "1",
                        "--two-four", "--json")
    assert code == 0
    report = json.loads(out)
    assert "no Linear layer" in report["semi_structured"] and "2:4" in report["semi_structured"]
    assert report["semi_structured"] in err.splitlines()  # printed for people as well, on stderr


def test_bench_rejects_files_that_are_not_tickets(tmp_path, capsys):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    code, _, err = _run(capsys, "bench", "--model-file", bad)
    assert code == 2 and "safetensors" in err and "Traceback" not in err
    code, _, err = _run(capsys, "bench", "--model-file", tmp_path / "none.safetensors")
    assert code == 2 and "does not exist" in err


def test_export_will_not_overwrite_its_own_ticket(conv_ticket, capsys):
    before = conv_ticket.read_bytes()
    code, _, err = _run(capsys, "export", "--model-file", conv_ticket, "--out", conv_ticket)
    assert code == 2 and "is the ticket file itself" in err and conv_ticket.read_bytes() == before


def test_tickets_with_forged_masks_or_sizes_are_refused_before_building(conv_ticket, tmp_path, capsys):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(conv_ticket), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    mask = next(k for k in tensors if k.startswith("mask/"))
    info = json.loads(meta["ticketlab.ticket"])
    forged = {
        "is not a boolean mask": ({**tensors, mask: tensors[mask].float() * 2}, meta),
        "damaged ticket metadata.*image_size": (tensors, {**meta, "ticketlab.ticket": json.dumps(
            {**info, "image_size": 10**6})}),
        "has no option": (tensors, {**meta, "ticketlab.ticket": json.dumps(
            {**info, "options": {"no_such_option": 1}})}),
        # each size within bounds, together a 16384^3 input that bench would allocate
        "more than 2\\^24 values an example": (tensors, {**meta, "ticketlab.ticket": json.dumps(
            {**info, "in_channels": 16384, "image_size": 16384})}),
    }
    for what, (forged_tensors, forged_meta) in forged.items():
        save_file(forged_tensors, tmp_path / "t.safetensors", metadata=forged_meta)
        code, _, err = _run(capsys, "bench", "--model-file", tmp_path / "t.safetensors")
        assert code == 2 and re.search(what, err) and "Traceback" not in err, err


def test_export_of_unstructured_ticket_explains(tmp_path, grey_npz, capsys):
    ticket_file = _one_level_ticket(tmp_path / "store", grey_npz, "group", capsys)
    code, _, err = _run(capsys, "export", "--model-file", ticket_file, "--out", tmp_path / "m.safetensors")
    assert code == 2 and "channel" in err and "--no-compact" in err and not (tmp_path / "m.safetensors").exists()
    code, _, err = _run(capsys, "bench", "--model-file", ticket_file, "--multiple", "8", "--batch-sizes", "2",
                        "--repeats", "1")
    assert code == 2 and "times no compacted network" in err and "Traceback" not in err


def test_train_noise_and_sat_flags(tmp_path, grey_npz, capsys):
    code, out, _ = _run(capsys, "train", *COMMON, "--dataset", grey_npz, "--store", tmp_path, "--noise", "uniform:0.5",
                        "--loss", "sat", "--sat-start", "1", "--json")
    assert code == 0
    s = json.loads(out)
    assert 0.2 < s["noise_rate"] < 0.6 and "corrected_fraction" in s
    code, _, err = _run(capsys, "train", *COMMON, "--dataset", grey_npz, "--store", tmp_path, "--noise", "gaussian:0.5")
    assert code == 2 and "uniform" in err
    code, _, err = _run(capsys, "train", *COMMON, "--dataset", grey_npz, "--store", tmp_path, "--loss", "sat")
    assert code == 2 and "--sat-start" in err


def test_prac_command_saves_a_reusable_set(tmp_path, grey_npz, capsys):
    out_file = tmp_path / "prac.safetensors"
    code, out, _ = _run(capsys, "prac", *COMMON, "--dataset", grey_npz, "--store", tmp_path / "s", "--out", out_file,
                        "--json")
    assert code == 0
    info = json.loads(out)
    assert 0 <= info["prac_fraction"] <= 1 and info["examples"] == 144  # find's 10% validation split held out
    # another architecture searches on it
    code, out, _ = _run(capsys, "find", "--model", "conv_2", "--epochs", "2", "--batch-size", "32", "--quiet",
                        "--dataset", grey_npz, "--store", tmp_path / "s", "--levels", "1", "--baselines", "",
                        "--data", "prac", "--prac-file", out_file, "--json")
    assert code == 0, out


def test_bench_two_four_says_why_not_on_cpu(tmp_path, grey_npz, capsys):
    ticket_file = _one_level_ticket(tmp_path / "store", grey_npz, "nm", capsys)
    code, out, _ = _run(capsys, "bench", "--model-file", ticket_file, "--batch-sizes", "2", "--repeats", "1",
                        "--two-four", "--json")
    assert code == 0
    report = json.loads(out)
    assert "not run sparse" in report["semi_structured"] and "CUDA" in report["semi_structured"].upper()
    assert {t["variant"] for t in report["timings"]} == {"dense", "masked"}


def test_train_compact_trains_a_studys_channel_masks_as_the_smaller_network(channel_study, grey_npz, tmp_path,
                                                                              capsys):
    masks = next(channel_study.glob("runs/*/seed_0/level_2/masks.safetensors"))
    base = ["train", *COMMON, "--dataset", grey_npz, "--store", tmp_path / "store", "--masks", masks]
    code, out, _ = _run(capsys, *base, "--compact", "--json")
    assert code == 0
    small = json.loads(out)
    code, out, _ = _run(capsys, *base, "--json")
    masked = json.loads(out)
    assert small["run_id"] != masked["run_id"] and "trained_parameters" not in masked
    assert small["trained_parameters"] < small["parameters"] == masked["parameters"]
    assert small["density"] == masked["density"]
    assert abs(small["test_accuracy"] - masked["test_accuracy"]) <= 0.05


def test_train_compact_refuses_what_it_cannot_compact(tmp_path, grey_npz, capsys):
    store = tmp_path / "store"
    unstructured = tmp_path / "m.safetensors"
    assert main(["prune", "--model", "lenet_300_100", "--dataset", str(grey_npz), "--density", "0.3",
                 "--out", str(unstructured), "--quiet"]) == 0
    for extra, message in ((["--compact"], "add --masks FILE"),
                           (["--compact", "--masks", unstructured], "not channel-structured"),
                           (["--compact", "--masks", unstructured, "--seeds", "2", "--stack"], "do not combine")):
        code, _, err = _run(capsys, "train", *COMMON, "--dataset", grey_npz, "--store", store, *extra)
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert not list(store.glob("runs/*"))  # nothing half-written


def test_prune_structure_channel_then_train_compact(tmp_path, tiny_npz, capsys):
    """One-shot channel pruning at init (refill after the criterion), trained as the smaller network."""
    masks_file = tmp_path / "m.safetensors"
    code, out, err = _run(capsys, "prune", "--model", "cifar_resnet_20", "--dataset", tiny_npz, "--density", "0.4",
                          "--structure", "channel", "--out", masks_file, "--json")
    assert code == 0 and f"--masks {masks_file} --compact" in err
    report = json.loads(out)
    # refill keeps the criterion's budget in whole rows; the weights reading removed channels are dropped too
    assert 0.4**2 * 0.7 < report["density"] < 0.4**2 * 1.5 and "the weights kept are" in err
    from ticketlab.sparsity import load_masks
    from ticketlab.sparsity.structure import is_channel_structured

    masks = load_masks(masks_file)
    convs = [n for n, m in masks.items() if m.dim() == 4]
    assert convs and all(is_channel_structured(masks[n]) for n in convs)
    assert not masks["stem.bn.weight"].all()  # removed channels' BatchNorm entries are masked too
    code, out, _ = _run(capsys, "train", "--model", "cifar_resnet_20", "--dataset", tiny_npz, "--masks", masks_file,
                        "--compact", "--epochs", "1", "--batch-size", "32", "--store", tmp_path / "store",
                        "--quiet", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["trained_parameters"] < summary["parameters"]
    code, _, err = _run(capsys, "prune", "--model", "lenet_300_100", "--dataset", tiny_npz, "--density", "0.4",
                        "--structure", "nm")
    assert code == 2 and "invalid choice: 'nm'" in err


def test_export_no_compact_of_a_network_without_a_channel_plan_succeeds(tmp_path, capsys):
    """--no-compact is the way out the compaction error names, so it must work where no channel plan exists
    (channels concatenated), and say so with exit code 0."""
    from torch import nn

    from ticketlab.tickets.ticketfile import save_ticket

    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
            self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 2)

        def forward(self, x):
            y = torch.relu(self.conv1(x))
            return self.fc(torch.flatten(self.pool(self.conv2(torch.cat([y, y], 1))), 1))

    ticket_file = save_ticket(tmp_path / "t.safetensors", Concat(), {}, model_name=None, model_options={},
                              num_classes=2, in_channels=3, image_size=8)
    out = tmp_path / "dense.safetensors"
    code, stdout, err = _run(capsys, "export", "--model-file", ticket_file, "--out", out, "--no-compact", "--json")
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["parameters"]["after"] == sum(
        p.numel() for p in Concat().parameters())
    x = torch.randn(2, 3, 8, 8)
    assert load_model(out)(x).shape == (2, 2)


class _ViewNet(torch.nn.Module):
    """Flattens with .view(), which fails on channels-last feature maps."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Linear(4 * 8 * 8, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.fc(y.view(y.size(0), -1))


class _OptOutViewNet(_ViewNet):
    channels_last = False


def test_bench_of_a_view_network_names_the_layout_and_honours_its_opt_out(tmp_path, capsys):
    from ticketlab.tickets.ticketfile import save_ticket

    def ticket(model, name):
        return save_ticket(tmp_path / name, model, {}, model_name=None, model_options={}, num_classes=2,
                           in_channels=3, image_size=8)

    plain = ticket(_ViewNet(), "plain.safetensors")
    code, _, err = _run(capsys, "bench", "--model-file", plain, "--batch-sizes", "2", "--repeats", "1")
    assert code == 2 and "--layout nchw" in err and err.count("\n") == 1 and "Traceback" not in err, err
    code, _, err = _run(capsys, "bench", "--model-file", plain, "--batch-sizes", "2", "--repeats", "1",
                        "--layout", "nchw")
    assert code == 0, err
    opted = ticket(_OptOutViewNet(), "opted.safetensors")  # the class's opt-out travels in the file
    assert load_ticket(opted).model.channels_last is False
    code, _, err = _run(capsys, "bench", "--model-file", opted, "--batch-sizes", "2", "--repeats", "1")
    assert code == 0, err


def test_a_user_ticket_whose_metadata_names_another_input_shape_is_refused(tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ticketlab.tickets.ticketfile import save_ticket

    path = save_ticket(tmp_path / "t.safetensors", _OptOutViewNet(), {}, model_name=None, model_options={},
                       num_classes=2, in_channels=3, image_size=8)
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for field, value in (("in_channels", 4), ("image_size", 9)):
        info = {**json.loads(meta["ticketlab.ticket"]), field: value}
        save_file(tensors, tmp_path / "forged.safetensors", metadata={**meta, "ticketlab.ticket": json.dumps(info)})
        for command in ("bench", "export"):
            extra = ["--out", str(tmp_path / "out.safetensors")] if command == "export" else []
            code, _, err = _run(capsys, command, "--model-file", tmp_path / "forged.safetensors", *extra)
            assert code == 2 and "does not take inputs of shape" in err and "Traceback" not in err, err


def test_bench_threads_apply_to_the_timing_only(conv_ticket, capsys):
    """`main` may run inside a caller's process: --threads must not change its thread count after."""
    before = torch.get_num_threads()
    threads = 1 if before > 1 else 2
    code, out, _ = _run(capsys, "bench", "--model-file", conv_ticket, "--batch-sizes", "1", "--repeats", "1",
                        "--threads", str(threads), "--json")
    assert code == 0 and json.loads(out)["threads"] == threads
    assert torch.get_num_threads() == before
