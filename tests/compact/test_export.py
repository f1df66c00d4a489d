import json
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import fx, nn

from ticketlab.compact import (
    channel_groups,
    compact,
    complete_channel_masks,
    export_onnx,
    load_model,
    save_model,
)
from ticketlab.errors import TicketlabError
from ticketlab.models import build_model

from helpers import COMPACTABLE as ARCHITECTURES
from helpers import UserResNet


def compacted(name):
    """The model with the last quarter of every group's channels removed."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, **ARCHITECTURES[name][0])
    params = dict(model.named_parameters())
    masks = {}
    for group in channel_groups(model):
        keep = torch.arange(group.channels) < group.channels - group.channels // 4
        for producer in group.producers:
            shape = params[producer].shape
            masks[producer] = keep.view(-1, *[1] * (len(shape) - 1)).expand(shape).clone()
    return compact(model, complete_channel_masks(model, masks)).eval()


def shapes(model):
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_saved_model_loads_without_its_code_and_computes_the_same(name, tmp_path):
    model = compacted(name)
    shape = ARCHITECTURES[name][1]
    save_model(tmp_path / "model.safetensors", model, shape, metadata={"model": name, "density": 0.5})
    loaded = load_model(tmp_path / "model.safetensors")

    assert isinstance(loaded, fx.GraphModule) and not loaded.training
    assert shapes(loaded) == shapes(model)
    x = torch.randn(shape)
    with torch.no_grad():
        assert float((loaded(x) - model(x)).abs().max()) <= 1e-6
    assert loaded.meta["ticketlab.metadata"] == {"model": name, "density": 0.5}
    assert loaded.meta["ticketlab.input_shape"] == list(shape)
    assert [p.requires_grad for p in loaded.parameters()] == [p.requires_grad for p in model.parameters()]


def test_a_user_network_compacted_by_its_traced_plan_saves_and_loads(tmp_path):
    """Whatever compaction can read a plan off (functional activations, pooling, in-place additions,
    a flatten by view) save_model can store."""
    torch.manual_seed(0)
    model = UserResNet().eval()
    params = dict(model.named_parameters())
    masks = {}
    for group in channel_groups(model):
        keep = torch.arange(group.channels) % 3 != 0
        for producer in group.producers:
            masks[producer] = keep.view(-1, 1, 1, 1).expand(params[producer].shape).clone()
    small = compact(model, complete_channel_masks(model, masks)).eval()
    save_model(tmp_path / "user.safetensors", small, (2, 3, 16, 16))
    loaded = load_model(tmp_path / "user.safetensors")
    assert shapes(loaded) == shapes(small) and small.head.out_channels == 4
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert float((loaded(x) - small(x)).abs().max()) <= 1e-6


def test_every_operation_a_channel_plan_passes_can_be_saved(tmp_path):
    """Upsampling, zero padding, clamping, negation and subtraction keep a removed channel silent, so
    compaction accepts them; save_model must store them too."""
    import torch.nn.functional as F

    class Ops(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.c3 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 1), nn.Conv2d(6, 2, 1)
            self.up = nn.Upsample(scale_factor=2.0, mode="nearest")

        def forward(self, x):
            y = torch.clamp(F.pad(F.interpolate(self.c1(x), scale_factor=0.5), (1, 1, 1, 1)), min=-1.0)
            y = torch.neg(y).float().clamp(max=2.0).clip(-3.0, 3.0)
            z = self.c2(y)
            z = torch.sub(z, y.neg()) - y
            z -= 0.5 * y
            return self.c3(self.up(z.sub(y)))

    torch.manual_seed(0)
    model = Ops().eval()
    params = dict(model.named_parameters())
    masks = {}
    for group in channel_groups(model):
        keep = torch.arange(group.channels) % 2 == 0
        for producer in group.producers:
            masks[producer] = keep.view(-1, 1, 1, 1).expand(params[producer].shape).clone()
    small = compact(model, complete_channel_masks(model, masks)).eval()
    save_model(tmp_path / "ops.safetensors", small, (2, 3, 8, 8))
    loaded = load_model(tmp_path / "ops.safetensors")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert float((loaded(x) - small(x)).abs().max()) <= 1e-6


class ReadsShapes(nn.Module):
    """Flattens by `x.shape[0]` and branches on nothing: the idioms of hand-written heads."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8 * 6 * 6, 4)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.fc(y.view(y.shape[0], -1)) * x.dim() / x.ndim


def test_a_network_reading_its_input_shape_compacts_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = ReadsShapes().eval()
    (group,) = channel_groups(model)
    keep = (torch.arange(8) % 3 != 0).view(-1, 1, 1, 1).expand(8, 3, 3, 3).clone()
    small = compact(model, complete_channel_masks(model, {group.producers[0]: keep})).eval()
    save_model(tmp_path / "m.safetensors", small, (2, 3, 8, 8))
    loaded = load_model(tmp_path / "m.safetensors")
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert float((loaded(x) - small(x)).abs().max()) <= 1e-6


class ReadsDtype(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x).to(x.dtype)


class _FunctionalDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 2)

    def forward(self, x):
        return self.fc2(nn.functional.dropout(torch.relu(self.fc1(x)), 0.5, self.training))


def test_a_model_left_in_training_mode_saves_what_it_computes_in_eval_mode(tmp_path):
    model = _FunctionalDropout().train()  # as right after training
    save_model(tmp_path / "m.safetensors", model, (1, 8))
    assert model.training
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "m.safetensors")(x), model.eval()(x))


def test_a_loaded_model_saves_again_and_keeps_frozen_weights(tmp_path):
    model = compacted("fastnet")
    model.whiten.weight.requires_grad_(False)
    save_model(tmp_path / "a.safetensors", model, (1, 3, 16, 16))
    again = load_model(tmp_path / "a.safetensors")
    assert not again.get_parameter("whiten.weight").requires_grad
    assert not again.get_parameter("groups.0.bn1.weight").requires_grad  # fastnet's frozen BN scale
    save_model(tmp_path / "b.safetensors", again, (1, 3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "b.safetensors")(x), model(x))


def rewrite(path, edit):
    """Rewrite the architecture JSON of a saved file through `edit(architecture) -> architecture`."""
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        names = f.keys()
        tensors = {name: f.get_tensor(name) for name in names}
    header["ticketlab.architecture"] = json.dumps(edit(json.loads(header["ticketlab.architecture"])))
    save_file(tensors, str(path), metadata=header)


def set_first(architecture, op, field, value):
    node = next(n for n in architecture["nodes"] if n["op"] == op)
    node[field] = value
    return architecture


def test_tampered_files_are_refused_not_executed(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(path, compacted("cifar_resnet_20"), (1, 3, 16, 16))
    original = path.read_bytes()
    edits = {
        "the function 'os.system'": lambda a: set_first(a, "call_function", "target", "os.system"),
        "a 'call_method' node with target '__class__'": lambda a: set_first(
            set_first(a, "call_function", "target", "__class__"), "call_function", "op", "call_method"
        ),
        "the layer type 'Evil'": lambda a: {**a, "modules": {**a["modules"], "fc": {"type": "Evil", "args": {}}}},
        "a graph node named": lambda a: set_first(a, "placeholder", "name", "x; import os"),
        "a constant tagged 'pickle'": lambda a: set_first(a, "call_function", "args", [{"pickle": "..."}]),
        "a getattr node reading \\('__dict__',\\)": lambda a: set_first(
            set_first(a, "call_function", "target", "builtins.getattr"), "call_function", "args",
            [{"node": "x"}, "__dict__"]),
    }
    for what, edit in edits.items():
        path.write_bytes(original)
        rewrite(path, edit)
        with pytest.raises(TicketlabError, match=f"asks for {what}.*never executed"):
            load_model(path)


def injected_keyword(architecture):
    """A keyword name fx would paste into its generated forward as code."""
    node = next(n for n in architecture["nodes"] if n["op"] == "call_module")
    node["kwargs"] = {"_=__import__('os').mkdir('pwned'), y": None}
    return architecture


def test_names_that_would_become_code_or_clash_in_the_generated_forward_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "model.safetensors"
    save_model(path, compacted("lenet_300_100"), (1, 1, 28, 28))
    original = path.read_bytes()

    def second_input(a):
        a["nodes"].insert(1, {**a["nodes"][0], "name": "y"})
        return a

    edits = {
        "50,008 nodes": lambda a: {**a, "nodes": a["nodes"] * (50_001 // len(a["nodes"]) + 1)},
        "keyword arguments named": injected_keyword,
        "two inputs named 'x'": second_input,
        "a graph node named 'fc' twice": lambda a: {**a, "nodes": a["nodes"][:-1] + [
            {**next(n for n in a["nodes"] if n["name"] == "fc")}, a["nodes"][-1]]},
    }
    for what, edit in edits.items():
        path.write_bytes(original)
        rewrite(path, edit)
        with pytest.raises(TicketlabError, match=f"asks for {what}.*never executed"):
            load_model(path)(torch.randn(1, 1, 28, 28))
    assert not (tmp_path / "pwned").exists()


def test_a_file_cannot_make_the_loader_allocate_beyond_its_tensors(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(path, compacted("lenet_300_100"), (1, 1, 28, 28))
    original = path.read_bytes()
    huge = {"in_features": 10**6, "out_features": 10**6, "bias": True}  # 4 TB of weights if it were built
    edits = {
        "50,001 modules": lambda a: {**a, "modules": {f"m{i}": {"type": "ReLU", "args": {}} for i in range(50_001)}},
        "(?s)malformed model file.*size mismatch": lambda a: {
            **a, "modules": {**a["modules"], "fc": {"type": "Linear", "args": huge}}},
        "layers no graph node calls": lambda a: {
            **a, "modules": {**a["modules"], "spare": {"type": "Linear", "args": huge}}},
        "malformed model file.*AssertionError": lambda a: {**a, "modules": {**a["modules"], "spare": {
            "type": "Hardtanh", "args": {"min_val": 2.0, "max_val": 1.0}}}},
    }
    for what, edit in edits.items():
        path.write_bytes(original)
        rewrite(path, edit)
        with pytest.raises(TicketlabError, match=what):
            load_model(path)
    path.write_bytes(original)
    with safe_open(str(path), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    header["ticketlab.architecture"] = '{"format": 1, "modules": ' + "[" * 100_000 + "]" * 100_000 + "}"
    save_file(tensors, str(path), metadata=header)
    with pytest.raises(TicketlabError, match="malformed model file"):
        load_model(path)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_model_in_another_dtype_saves_and_loads_in_that_dtype(dtype, tmp_path):
    model = compacted("cifar_resnet_20").to(dtype)
    save_model(tmp_path / "m.safetensors", model, (2, 3, 16, 16))
    loaded = load_model(tmp_path / "m.safetensors")
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    x = torch.randn(2, 3, 16, 16, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_malformed_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(path, compacted("lenet_300_100"), (1, 1, 28, 28))
    rewrite(path, lambda a: set_first(a, "call_module", "args", [{"node": "nowhere"}]))
    with pytest.raises(TicketlabError, match="malformed model file"):
        load_model(path)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(TicketlabError, match="holds no model architecture"):
        load_model(tmp_path / "weights.safetensors")
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(TicketlabError, match="not a safetensors file"):
        load_model(tmp_path / "text.safetensors")
    with pytest.raises(TicketlabError, match="no model file"):
        load_model(tmp_path / "missing.safetensors")


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


class WithSoftplus(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.act = nn.Softplus()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


class WithSoftmax(WithSoftplus):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(x), dim=1)


def test_models_that_cannot_be_stored_are_refused_by_name(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises(TicketlabError, match="cannot trace Branchy with torch.fx"):
        save_model(path, Branchy(), (1, 4))
    with pytest.raises(TicketlabError, match="layer act is a Softplus, which save_model cannot store; supported"):
        save_model(path, WithSoftplus(), (1, 4))
    with pytest.raises(TicketlabError, match="WithSoftmax calls softmax.*supported functions"):
        save_model(path, WithSoftmax(), (1, 4))
    with pytest.raises(TicketlabError, match="reads the attribute 'dtype' of a tensor.*it stores ndim and shape"):
        save_model(path, ReadsDtype(), (1, 4))
    with pytest.raises(TicketlabError, match="fails on an input of shape"):
        save_model(path, compacted("lenet_300_100"), (1, 3, 28, 28))
    with pytest.raises(TicketlabError, match="input_shape must be"):
        save_model(path, compacted("lenet_300_100"), (1, 0, 28, 28))
    with pytest.raises(TicketlabError, match="metadata must be JSON-serialisable"):
        save_model(path, compacted("lenet_300_100"), (1, 1, 28, 28), metadata={"x": object()})
    assert not path.exists()


def test_onnx_export_runs_in_onnxruntime_like_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = compacted("fastnet")
    export_onnx(model, tmp_path / "model.onnx", (1, 3, 16, 16))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # the batch size is left free
        x = torch.randn(batch, 3, 16, 16)
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            assert float((torch.from_numpy(got) - model(x)).abs().max()) <= 1e-4


class _TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        features = torch.relu(self.conv(x)).mean((2, 3))
        return self.fc(features), features


def test_onnx_export_checks_every_output_of_a_model_with_several(tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = _TwoOutputs().eval()
    export_onnx(model, tmp_path / "two.onnx", (1, 3, 8, 8))
    assert (tmp_path / "two.onnx").is_file()
    run = ort.InferenceSession.run  # then onnxruntime gets the second output wrong
    monkeypatch.setattr(ort.InferenceSession, "run", lambda self, *a: [o + i for i, o in enumerate(run(self, *a))])
    with pytest.raises(TicketlabError, match="onnxruntime computes something else than _TwoOutputs"):
        export_onnx(model, tmp_path / "other.onnx", (1, 3, 8, 8))
    assert not (tmp_path / "other.onnx").exists()


def test_an_onnx_file_onnxruntime_runs_differently_is_not_written(tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run = ort.InferenceSession.run
    monkeypatch.setattr(ort.InferenceSession, "run", lambda self, *a: [out + 1 for out in run(self, *a)])
    with pytest.raises(TicketlabError, match="onnxruntime computes something else than LeNet300100.*not written"):
        export_onnx(compacted("lenet_300_100"), tmp_path / "model.onnx", (1, 1, 28, 28))
    assert list(tmp_path.iterdir()) == []


def test_an_onnx_file_that_cannot_be_written_says_so(tmp_path):
    pytest.importorskip("onnxscript")
    (tmp_path / "file").write_text("")
    with pytest.raises(TicketlabError, match="cannot write") as caught:
        export_onnx(compacted("lenet_300_100"), tmp_path / "file" / "model.onnx", (1, 1, 28, 28))
    assert "cannot export" not in str(caught.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_onnx_export_of_a_half_precision_model_says_to_export_it_in_float32(dtype, tmp_path):
    model = compacted("lenet_300_100").to(dtype)
    with pytest.raises(TicketlabError, match=r"export_onnx writes float32 models.*model.float\(\)"):
        export_onnx(model, tmp_path / "model.onnx", (1, 1, 28, 28))
    assert list(tmp_path.iterdir()) == []


def test_onnx_export_without_the_extra_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(TicketlabError, match=r"pip install 'ticketlab\[onnx\]'"):
        export_onnx(compacted("lenet_300_100"), tmp_path / "model.onnx", (1, 1, 28, 28))
    assert not (tmp_path / "model.onnx").exists()


def test_onnx_export_failures_are_one_clear_error_and_torch_stays_quiet(tmp_path, capsys):
    pytest.importorskip("onnxscript")
    path = tmp_path / "model.onnx"
    # a shape the model does not take is named before torch.export runs (and logs its failed trace)
    with pytest.raises(TicketlabError, match=r"fails on an input of shape \(2, 3, 28, 28\)"):
        export_onnx(compacted("lenet_300_100"), path, (1, 3, 28, 28))
    with pytest.raises(TicketlabError, match="cannot export Branchy") as caught:
        export_onnx(Branchy(), path, (1, 4))
    message = str(caught.value)
    assert "TorchExportError" not in message and "\x1b" not in message  # the cause, not torch's step banner
    assert capsys.readouterr().err == ""  # torch.export prints the partial graph to sys.stderr
    assert not path.exists()


def test_a_layer_name_the_loader_would_refuse_is_refused_when_saving(tmp_path):
    class Keyed(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleDict({"conv-1": nn.Conv2d(3, 4, 3)})

        def forward(self, x):
            return self.blocks["conv-1"](x)

    with pytest.raises(TicketlabError, match="layer 'blocks.conv-1' has a name save_model cannot store"):
        save_model(tmp_path / "m.safetensors", Keyed(), (1, 3, 8, 8))
    assert not (tmp_path / "m.safetensors").exists()
