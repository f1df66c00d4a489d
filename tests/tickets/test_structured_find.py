import json

import pytest
import torch

from ticketlab.cli.main import main
from ticketlab.compact import load_model
from ticketlab.config import REFILL_CRITERIA
from ticketlab.errors import TicketlabError
from ticketlab.sparsity import load_masks
from ticketlab.sparsity.structure import is_channel_structured
from ticketlab.store import RunStore, read_tensors
from ticketlab.tickets import TicketConfig, find_ticket
from ticketlab.tickets.ticketfile import load_ticket

from helpers import tiny_dataset


def _study(tmp_path, model, ds, device="cpu", **ticket_options):
    tickets = TicketConfig(levels=ticket_options.pop("levels", 2),
                           baselines=ticket_options.pop("baselines", ("random",)),
                           rewind="1it", **ticket_options)
    return find_ticket(model, ds, tickets=tickets, store=tmp_path, epochs=2, batch_size=32, lr=0.003,
                       optimizer="adam", progress=False, device=device)


@pytest.mark.gpu
def test_a_channel_study_on_cuda_measures_the_gpu_speed_up_too(tmp_path):
    ds = tiny_dataset(n=96, channels=3, size=8)
    result = _study(tmp_path, "cifar_resnet_20", ds, device="cuda", structure="channel", fraction=0.5, levels=1,
                    baselines=())
    row = result.summary["levels"][0]
    assert row["speedup_gpu"] > 0 and row["speedup_cpu"] > 0 and row["gpu"]


@pytest.mark.parametrize("stack", [False, True])  # the ticket and its random baseline also trained together
def test_channel_study_on_a_residual_network_compacts_and_measures(tmp_path, stack):
    ds = tiny_dataset(n=96, channels=3, size=8)
    result = _study(tmp_path, "cifar_resnet_20", ds, structure="channel", fraction=0.5, stack=stack)
    s = result.summary
    assert s["structure"] == "channel"
    for row in s["levels"]:
        assert row["speedup_cpu"] > 0 and row["compacted_parameters"] < row["parameters"]
        assert 0 < row["compacted_flops"] < row["flops"]
        assert "speedup_gpu" not in row  # trained on the CPU: no GPU figure
    json.dumps(s)
    store = RunStore(tmp_path)
    per_seed = json.loads((result.folder / "per_seed.json").read_text())
    for level in per_seed[0][1:]:
        folder = result.folder / "seed_0" / f"level_{level['level']}"
        masks = load_masks(folder / "masks.safetensors")
        weights = [n for n in masks if n.endswith("weight") and masks[n].dim() > 1]
        # every layer but the classifier holds whole channels; the stage-1 residual stream shares one set
        assert all(is_channel_structured(masks[n]) for n in weights if n != "fc.weight")
        stream = [masks[n].flatten(1).any(1) for n in ("stem.conv.weight", "stages.0.0.conv2.weight",
                                                       "stages.0.2.conv2.weight")]
        assert all(torch.equal(stream[0], other) for other in stream[1:])
        # the BN of a removed channel is masked too, so the trained ticket computes exactly zero there
        final = read_tensors(store.folder(level["runs"]["ticket"]) / "final.safetensors")
        for name, m in masks.items():
            assert torch.all(final[name][~m] == 0), name
        assert (~masks["stem.bn.bias"]).any()
        ticket = load_ticket(folder / "ticket.safetensors")
        assert ticket.info["structure"] == "channel"
    assert (result.folder / "speed.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("criterion", ["l1", "activation", "taylor"])
def test_channel_criteria_run_in_a_study(tmp_path, criterion):
    ds = tiny_dataset(n=64, channels=1, size=8)
    result = _study(tmp_path, "lenet_300_100", ds, structure="channel", refill_criterion=criterion,
                    refill_rate=0.2, levels=1, baselines=())
    row = result.summary["levels"][0]
    masks = result.masks[0]
    assert is_channel_structured(masks["hidden.fc1.weight"]) and is_channel_structured(masks["hidden.fc2.weight"])
    assert row["speedup_cpu"] > 0


def test_group_and_nm_studies_report_no_compaction_honestly(tmp_path):
    ds = tiny_dataset(n=64, channels=1, size=8)
    group = _study(tmp_path, "lenet_300_100", ds, structure="group", levels=1)
    assert group.summary["levels"][0]["speedup_cpu"] is None
    assert "no compaction" in group.summary["levels"][0]["speed_note"]
    nm = _study(tmp_path, "lenet_300_100", ds, structure="nm", levels=1)
    fc2 = nm.masks[0]["hidden.fc2.weight"]
    assert torch.all(fc2.view(fc2.shape[0], -1, 4).sum(-1) == 2)  # exactly 2 of every 4 inputs
    assert nm.summary["levels"][0]["density"] < 0.6
    for study in (group, nm):  # the random arm keeps as many weights as the ticket, in the ticket's structure
        level = json.loads((study.folder / "per_seed.json").read_text())[0][1]
        assert level["arm_density"]["random"] == pytest.approx(level["density"])


def test_structure_options_are_checked():
    with pytest.raises(TicketlabError, match="levels 1"):
        TicketConfig(structure="nm", levels=3).validate()
    with pytest.raises(TicketlabError, match="structure channel"):
        TicketConfig(refill_rate=0.3).validate()
    with pytest.raises(TicketlabError, match="unknown --structure"):
        TicketConfig(structure="blocks").validate()
    with pytest.raises(TicketlabError, match="N:M"):
        TicketConfig(structure="nm", nm="4:2", levels=1).validate()
    with pytest.raises(TicketlabError, match="channel tickets only"):
        TicketConfig(compact_training=False).validate()
    with pytest.raises(TicketlabError, match="structure channel"):
        TicketConfig(refill_multiple=16).validate()
    for multiple in (0, 2.5, True):
        with pytest.raises(TicketlabError, match="positive integer"):
            TicketConfig(structure="channel", refill_multiple=multiple).validate()
    for option, value in (("fraction", 0.5), ("scope", "layerwise"), ("exclude_last", True)):
        with pytest.raises(TicketlabError, match="no effect under --structure nm"):
            TicketConfig(structure="nm", levels=1, **{option: value}).validate()
    TicketConfig(structure="nm", levels=1, fraction=0.5, early_bird=0.1).validate()  # early-bird prunes by fraction


def test_levels_that_would_leave_no_weight_are_refused_before_the_dense_run_trains(tmp_path):
    with pytest.raises(TicketlabError, match="20 levels pruning 0.9 each leave less than one"):
        _study(tmp_path, "lenet_300_100", tiny_dataset(n=64, channels=1, size=8), fraction=0.9, levels=20)
    assert RunStore(tmp_path).list() == []


def test_an_nm_pattern_that_fits_no_layer_is_refused_before_the_dense_run_trains(tmp_path):
    with pytest.raises(TicketlabError, match="divisible by 7"):
        _study(tmp_path, "lenet_300_100", tiny_dataset(n=64, channels=1, size=8), structure="nm", nm="2:7", levels=1)
    assert RunStore(tmp_path).list() == []


def test_a_channel_study_with_a_refill_multiple_keeps_multiples_of_it_in_the_ticket_and_its_baseline(tmp_path):
    ds = tiny_dataset(n=96, channels=3, size=8)
    result = _study(tmp_path, "cifar_resnet_20", ds, structure="channel", fraction=0.3, levels=1, refill_multiple=8)
    folder = result.folder / "seed_0" / "level_1"
    ticket = load_masks(folder / "masks.safetensors")
    widths = {n: int(m.flatten(1).any(1).sum()) for n, m in ticket.items() if m.dim() > 1 and n != "fc.weight"}
    assert all(w % 8 == 0 for w in widths.values()), widths
    assert any(w < m.shape[0] for w, m in zip(widths.values(), (ticket[n] for n in widths)))  # something pruned
    level = json.loads((result.folder / "per_seed.json").read_text())[0][1]
    random = read_tensors(RunStore(tmp_path).folder(level["runs"]["random"]) / "final.safetensors")
    assert {n: int(random[n].flatten(1).ne(0).any(1).sum()) for n in widths} == widths  # other channels, as many
    plain = _study(tmp_path, "cifar_resnet_20", ds, structure="channel", fraction=0.3, levels=1)
    assert plain.folder != result.folder and plain.summary["levels"][0]["density"] != level["density"]


def test_keep_streams_narrows_only_the_layers_inside_residual_blocks(tmp_path):
    ds = tiny_dataset(n=96, channels=3, size=8)
    result = _study(tmp_path, "cifar_resnet_20", ds, structure="channel", fraction=0.75, scope="layerwise", levels=1,
                    keep_streams=True, baselines=())
    masks = result.masks[0]
    blocks = [f"stages.{s}.{b}" for s in range(3) for b in range(3)]
    writers = ["stem.conv.weight", "stages.1.0.shortcut.0.weight", "stages.2.0.shortcut.0.weight"]
    writers += [f"{b}.conv2.weight" for b in blocks]
    # every stream keeps its full width: its writers lose no output channel (conv2 only the inputs conv1 dropped)
    assert all(n not in masks or masks[n].flatten(1).any(1).all() for n in writers)
    widths = [int(masks[f"{b}.conv1.weight"].flatten(1).any(1).sum()) for b in blocks]
    assert widths == [4] * 3 + [8] * 3 + [16] * 3  # a quarter of each block's inner channels
    row = result.summary["levels"][0]
    assert 0 < row["compacted_flops"] < 0.3 * row["flops"]
    plain = _study(tmp_path, "cifar_resnet_20", ds, structure="channel", fraction=0.75, scope="layerwise", levels=1,
                   baselines=())
    assert plain.folder != result.folder and not plain.masks[0]["stem.conv.weight"].all()


def test_channel_arms_train_compacted_unless_told_not_to(tmp_path):
    ds = tiny_dataset(n=96, channels=3, size=8)
    compacted = _study(tmp_path / "a", "cifar_resnet_20", ds, structure="channel", fraction=0.5, levels=1)
    masked = _study(tmp_path / "b", "cifar_resnet_20", ds, structure="channel", fraction=0.5, levels=1,
                    compact_training=False)
    for result, path, expected in ((compacted, tmp_path / "a", 8), (masked, tmp_path / "b", 0)):
        dense, level = json.loads((result.folder / "per_seed.json").read_text())[0]
        runs = level["runs"]
        store = RunStore(path)
        assert store.get(runs["ticket"]).config.get("compacted", 0) == expected  # the ticket
        assert store.get(runs["random"]).config.get("compacted", 0) == expected  # and its random-channel baseline
        assert store.get(dense["runs"]["ticket"]).config.get("compacted", 0) == 0  # the dense network
    # the same masks, and the same accuracies up to the rounding of a few steps
    assert all(torch.equal(compacted.masks[0][n], m) for n, m in masked.masks[0].items())
    for arm in ("ticket", "random"):
        a, b = (json.loads((r.folder / "per_seed.json").read_text())[0][1]["test"][arm] for r in (compacted, masked))
        assert abs(a - b) <= 0.05


def test_channel_study_of_a_user_module_compacts_it_by_its_traced_plan_and_ships_it(tmp_path, capsys):
    from helpers import TinyNet

    ds = tiny_dataset(n=64, channels=3, size=8)
    result = _study(tmp_path, TinyNet(), ds, structure="channel", levels=1, baselines=(), fraction=0.5)
    row = result.summary["levels"][0]
    masks = result.masks[0]
    assert is_channel_structured(masks["conv.weight"]) and not masks["conv.weight"].flatten(1).any(1).all()
    assert not masks["bn.bias"].all()  # its BatchNorm read off the graph, so removed channels stay silent
    assert row["speedup_cpu"] > 0 and row["compacted_parameters"] < row["parameters"]
    # its ticket file holds the module's traced graph: `bench` and `export` read it without TinyNet's code
    path = result.folder / "seed_0" / "level_1" / "ticket.safetensors"
    ticket = load_ticket(path)
    assert isinstance(ticket.model, torch.fx.GraphModule) and ticket.info["model"] == "TinyNet"
    trained = RunStore(tmp_path).get(json.loads((result.folder / "per_seed.json").read_text())[0][1]["runs"]["ticket"])
    net = TinyNet()
    net.load_state_dict(read_tensors(trained.folder / "final.safetensors"))
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(ticket.model.eval()(x), net.eval()(x), atol=1e-6)
    assert main(["bench", "--model-file", str(path), "--batch-sizes", "2", "--repeats", "1", "--json"]) == 0
    timed = json.loads(capsys.readouterr().out)
    assert {t["variant"] for t in timed["timings"]} == {"dense", "masked", "compacted"}
    assert main(["export", "--model-file", str(path), "--out", str(tmp_path / "small.safetensors")]) == 0
    small = load_model(tmp_path / "small.safetensors")
    with torch.no_grad():
        assert torch.allclose(small(x), net(x), atol=1e-5)


def test_a_depthwise_user_network_refills_each_expansion_with_its_depthwise_conv(tmp_path):
    from helpers import InvertedResiduals

    ds = tiny_dataset(n=64, channels=3, size=8)
    result = _study(tmp_path, InvertedResiduals(), ds, structure="channel", levels=1, baselines=(), fraction=0.5)
    masks = result.masks[0]
    for b in (0, 1):
        expansion, depthwise = (masks[f"blocks.{b}.{k}.weight"].flatten(1).any(1) for k in (0, 3))
        assert torch.equal(expansion, depthwise) and not expansion.all()
    assert result.summary["levels"][0]["speedup_cpu"] > 0


class Gate(torch.nn.Module):
    """A conv read through a sigmoid: a removed channel would still send sigmoid(0) = 0.5 on."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.sigmoid(self.conv(x)).mean((2, 3)))


def test_channel_study_of_a_user_module_without_a_plan_refills_but_says_why_it_cannot_compact(tmp_path):
    ds = tiny_dataset(n=64, channels=3, size=8)
    result = _study(tmp_path, Gate(), ds, structure="channel", levels=1, baselines=())
    row = result.summary["levels"][0]
    assert is_channel_structured(result.masks[0]["conv.weight"])
    assert row["speedup_cpu"] is None and "Gate" in row["speed_note"] and "sigmoid" in row["speed_note"]
    # nor can its graph be stored (save_model has no sigmoid either): the row says so, and no file is half-written
    assert row["ticket_note"].startswith("no ticket file: ") and "sigmoid" in row["ticket_note"]
    assert not (result.folder / "seed_0" / "level_1" / "ticket.safetensors").exists()


def test_the_gpu_speed_of_a_level_is_timed_as_deployed(monkeypatch):
    """On CUDA a level is also timed at batch 256, from CUDA graphs, with widths padded to 8. The GPU
    itself is faked here (the real run is the gpu-marked study test): what is checked is what gets timed."""
    import ticketlab.speed
    from ticketlab.compact import complete_channel_masks, tied_layers
    from ticketlab.models import build_model
    from ticketlab.sparsity import magnitude, prune_fraction, refill, select_prunable
    from ticketlab.speed import Timing
    from ticketlab.tickets.structured import Structure

    torch.manual_seed(0)
    model = build_model("cifar_resnet_20", num_classes=4, in_channels=3, image_size=8)
    names = list(select_prunable(model))
    params = dict(model.named_parameters())
    weights = prune_fraction(magnitude({n: params[n].detach() for n in names}),
                             {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}, 0.5)
    masks = complete_channel_masks(model, refill(weights, tied=tied_layers(model), keep={names[-1]}))
    real, calls = ticketlab.speed.measure, []

    def measure(variants, shape, batch_sizes, **options):
        calls.append((dict(variants), tuple(batch_sizes), options))
        if str(options.get("device", "cpu")) == "cpu":
            return real(variants, shape, batch_sizes, **options)
        return [Timing("dense", 256, 2.0, 128.0, 1.0, 1), Timing("compacted", 256, 1.25, 204.8, 1.6, 1)]

    monkeypatch.setattr(ticketlab.speed, "measure", measure)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a faked GPU")
    out = Structure("channel", model, names).speed(model, masks, (3, 8, 8), repeats=1, device="cuda")
    assert out["speedup_gpu"] == 1.6 and out["gpu"] == "a faked GPU" and out["speedup_cpu"] > 0
    (cpu_variants, cpu_batches, cpu_options), (gpu_variants, gpu_batches, gpu_options) = calls
    assert cpu_batches == (64,) and not cpu_options.get("cuda_graph")
    assert gpu_batches == (256,) and gpu_options["cuda_graph"] and gpu_options["device"] == "cuda"
    exact = {n: p.shape for n, p in cpu_variants["compacted"].named_parameters()}
    padded = {n: p.shape for n, p in gpu_variants["compacted"].named_parameters()}
    full = {n: p.shape for n, p in model.named_parameters()}
    assert exact != padded  # refill left widths that are not multiples of 8; the GPU copy pads them
    for name, shape in padded.items():
        if name.endswith("conv1.weight") or name.endswith("conv2.weight"):
            assert shape[0] % 8 == 0 or shape[0] == full[name][0], name
    assert gpu_variants["dense"] is not model  # the caller's model stays where it was


@pytest.mark.parametrize("criterion", REFILL_CRITERIA)  # l1 reads the model but no batch
def test_early_bird_in_a_channel_study_watches_refilled_masks(tmp_path, criterion):
    ds = tiny_dataset(n=96, channels=1, size=8)
    tickets = TicketConfig(levels=1, baselines=(), rewind="1it", structure="channel", early_bird=0.99,
                           refill_criterion=criterion)
    result = find_ticket("lenet_300_100", ds, tickets=tickets, store=tmp_path, epochs=7, batch_size=32, lr=0.003,
                         optimizer="adam", progress=False)
    assert result.summary["levels"][0]["stopped_epoch"] == [6]  # the first epoch with five distances


def test_masked_and_compacted_training_give_the_same_chain_of_channel_tickets(tmp_path):
    """The weights that read removed channels are dead: masked at zero, a study trained masked (where weight
    decay would shrink them) and one trained compacted (where they are absent) prune the same next level."""
    ds = tiny_dataset(n=96, channels=3, size=8)
    levels = {}
    for compacted in (True, False):
        tickets = TicketConfig(levels=2, baselines=(), rewind="1it", structure="channel", fraction=0.5,
                               compact_training=compacted)
        result = find_ticket("cifar_resnet_20", ds, tickets=tickets, store=tmp_path / str(compacted), epochs=2,
                             batch_size=32, lr=0.1, optimizer="sgd", weight_decay=0.5, progress=False)
        levels[compacted] = result.masks
        row = result.summary["levels"][0]
        # the density is what the compacted network keeps of the weights, less than refill's whole-row budget
        assert row["density"] < row["mask_density"] and 0.2 < row["density"] < 0.3
    for masked, compact in zip(levels[False], levels[True]):
        assert all(torch.equal(masked[n], compact[n]) for n in masked)


def test_each_channel_level_prunes_its_fraction_of_the_live_weights(tmp_path):
    """Layer-wise, every layer loses half its live weights per level, so half its channels: fc2's rows read
    only fc1's kept channels, and refill counts them by those live weights, not by its whole rows."""
    ds = tiny_dataset(n=64, channels=1, size=8)
    result = _study(tmp_path, "lenet_300_100", ds, structure="channel", fraction=0.5, levels=2,
                    baselines=(), scope="layerwise")
    channels = [{n: int(m.flatten(1).any(1).sum()) for n, m in level.items() if n.startswith("hidden.fc")
                 and n.endswith("weight")} for level in result.masks]
    assert channels == [{"hidden.fc1.weight": 150, "hidden.fc2.weight": 50},
                        {"hidden.fc1.weight": 75, "hidden.fc2.weight": 25}]


class ReadsWidth(torch.nn.Module):
    """Scales by 1/sqrt(fan-in) read off a layer: the compacted copy would compute another function."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)) / self.fc.in_features ** 0.5)


def test_a_channel_study_of_a_forward_reading_a_width_trains_masked_and_says_why(tmp_path):
    """Found when the study starts, not when level 1 is cut after the dense run has trained."""
    ds = tiny_dataset(n=64, channels=3, size=8)
    result = _study(tmp_path, ReadsWidth(), ds, structure="channel", levels=1, baselines=())
    row = result.summary["levels"][0]
    assert is_channel_structured(result.masks[0]["conv.weight"]) and not result.masks[0]["conv.weight"].all()
    assert row["speedup_cpu"] is None and "reads a value that compaction changes" in row["speed_note"]
