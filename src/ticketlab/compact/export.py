"""Shipping a model as data: its graph as JSON and its weights as tensors, in one safetensors file.

A compacted model no longer has the shapes its architecture code builds, so its weights alone
cannot be loaded back. Here the module is traced with torch.fx,
every leaf layer is described by its type and constructor arguments and every operation by a
name, and `load_model` rebuilds a `torch.fx.GraphModule` from fixed whitelists of those: a file
is read as data only, never unpickled or executed, so an untrusted file cannot run code.
"""

from __future__ import annotations

import importlib
import io
import json
import keyword
import logging
import math
import operator
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import fx, nn

from ticketlab.errors import TicketlabError, first_line
from ticketlab.store.files import atomic_write, write_tensors
from ticketlab.train.evaluate import eval_mode

FORMAT = 1
ARCHITECTURE = "ticketlab.architecture"
METADATA = "ticketlab.metadata"
INPUT_SHAPE = "ticketlab.input_shape"

# Leaf layers, each with the constructor arguments that describe it completely (its weights are
# the tensors). "bias" is stored as whether the layer has one.
_MODULES: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "Conv2d": (
        nn.Conv2d,
        ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias")
        + ("padding_mode",),
    ),
    "Linear": (nn.Linear, ("in_features", "out_features", "bias")),
    "BatchNorm1d": (nn.BatchNorm1d, ("num_features", "eps", "momentum", "affine", "track_running_stats")),
    "BatchNorm2d": (nn.BatchNorm2d, ("num_features", "eps", "momentum", "affine", "track_running_stats")),
    "ReLU": (nn.ReLU, ("inplace",)),
    "GELU": (nn.GELU, ("approximate",)),
    "MaxPool2d": (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")),
    "AvgPool2d": (
        nn.AvgPool2d,
        ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    ),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, ("output_size",)),
    "AdaptiveMaxPool2d": (nn.AdaptiveMaxPool2d, ("output_size", "return_indices")),
    "Flatten": (nn.Flatten, ("start_dim", "end_dim")),
    "Identity": (nn.Identity, ()),
    "Dropout": (nn.Dropout, ("p", "inplace")),
    "Dropout2d": (nn.Dropout2d, ("p", "inplace")),
    "ReLU6": (nn.ReLU6, ("inplace",)),
    "LeakyReLU": (nn.LeakyReLU, ("negative_slope", "inplace")),
    "SiLU": (nn.SiLU, ("inplace",)),
    "ELU": (nn.ELU, ("alpha", "inplace")),
    "Tanh": (nn.Tanh, ()),
    "Hardtanh": (nn.Hardtanh, ("min_val", "max_val", "inplace")),
    "Hardswish": (nn.Hardswish, ("inplace",)),
    "Mish": (nn.Mish, ("inplace",)),
    "Upsample": (nn.Upsample, ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor")),
}
_MODULE_NAMES = {cls: name for name, (cls, _) in _MODULES.items()}

_FUNCTIONS = {
    "operator.add": operator.add,
    "operator.sub": operator.sub,
    "operator.mul": operator.mul,
    "operator.truediv": operator.truediv,
    "operator.neg": operator.neg,
    "operator.getitem": operator.getitem,
    "torch.add": torch.add,
    "torch.mul": torch.mul,
    "torch.cat": torch.cat,
    "torch.flatten": torch.flatten,
    "torch.relu": torch.relu,
    "torch.nn.functional.relu": F.relu,
    "torch.nn.functional.gelu": F.gelu,
    "torch.nn.functional.adaptive_avg_pool2d": F.adaptive_avg_pool2d,
    # what a traced channel plan lets a channel pass through (ticketlab.compact.trace), so that
    # whatever compacts can also be saved
    "operator.iadd": operator.iadd,
    "operator.imul": operator.imul,
    "operator.itruediv": operator.itruediv,
    "operator.isub": operator.isub,
    "torch.sub": torch.sub,
    "torch.neg": torch.neg,
    "torch.clamp": torch.clamp,
    "torch.clip": torch.clip,
    "torch.nn.functional.interpolate": F.interpolate,
    "torch.nn.functional.pad": F.pad,
    "torch.relu_": torch.relu_,
    "torch.tanh": torch.tanh,
    "torch.mean": torch.mean,
    "torch.sum": torch.sum,
    "torch.amax": torch.amax,
    "torch.squeeze": torch.squeeze,
    "torch.nn.functional.relu_": F.relu_,
    "torch.nn.functional.relu6": F.relu6,
    "torch.nn.functional.leaky_relu": F.leaky_relu,
    "torch.nn.functional.silu": F.silu,
    "torch.nn.functional.elu": F.elu,
    "torch.nn.functional.hardtanh": F.hardtanh,
    "torch.nn.functional.hardswish": F.hardswish,
    "torch.nn.functional.mish": F.mish,
    "torch.nn.functional.dropout": F.dropout,
    "torch.nn.functional.dropout2d": F.dropout2d,
    "torch.nn.functional.max_pool2d": F.max_pool2d,
    "torch.nn.functional.avg_pool2d": F.avg_pool2d,
    "torch.nn.functional.adaptive_max_pool2d": F.adaptive_max_pool2d,
    # `x.shape[0]` traces to getattr(x, "shape"): only the attributes in _TENSOR_ATTRIBUTES are allowed
    "builtins.getattr": getattr,
}
_FUNCTION_NAMES = {fn: name for name, fn in _FUNCTIONS.items()}
_METHODS = frozenset({"add", "add_", "amax", "clamp", "clamp_", "clip", "clone", "contiguous", "dim", "flatten",
                      "float", "mean", "mul", "neg", "relu", "relu_", "reshape", "size", "squeeze", "sub", "sub_",
                      "sum", "tanh", "view"})
_TENSOR_ATTRIBUTES = frozenset({"shape", "ndim"})


def _plain_getattr(args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    """A getattr node reads a tensor's shape or rank, nothing else (a file could name any attribute)."""
    return len(args) == 2 and not kwargs and args[1] in _TENSOR_ATTRIBUTES

# Names end up in the Python source fx generates for the graph, so a file may only use plain
# identifiers (and digits for Sequential children): nothing in it can become code.
_PART = re.compile(r"[A-Za-z0-9_]+")
# fx turns the graph into Python source and compiles it: a ResNet-152 has about 500 nodes, and a file
# asking for millions would only cost time and memory
_MOST_NODES = 50_000


def _identifier(name: Any) -> bool:
    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)


def _path(target: Any) -> bool:
    return isinstance(target, str) and all(_PART.fullmatch(part) for part in target.split("."))


def _untrusted(what: str) -> TicketlabError:
    return TicketlabError(
        f"model file asks for {what}, which is not in ticketlab's whitelist; the file is corrupt or was not "
        "written by ticketlab.compact.save_model, and is not loaded (untrusted files are never executed)"
    )


def _encode(value: Any, where: str) -> Any:
    """A graph argument as JSON: nodes by name, tuples and slices tagged, non-finite floats as text."""
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": str(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, slice):
        return {"slice": [_encode(v, where) for v in (value.start, value.stop, value.step)]}
    raise TicketlabError(
        f"{where} has an argument of type {type(value).__name__}, which save_model cannot store; "
        "use numbers, strings, tuples, lists and slices as constants"
    )


def _decode(value: Any, nodes: dict[str, fx.Node]) -> Any:
    if isinstance(value, list):
        return [_decode(v, nodes) for v in value]
    if not isinstance(value, dict):
        return value
    ((tag, content),) = value.items()
    if tag == "node":
        return nodes[content]
    if tag == "tuple":
        return tuple(_decode(v, nodes) for v in content)
    if tag == "slice":
        return slice(*(_decode(v, nodes) for v in content))
    if tag == "float" and content in ("inf", "-inf", "nan"):
        return float(content)
    raise _untrusted(f"a constant tagged {tag!r}")


def _describe_module(target: str, module: nn.Module) -> dict[str, Any]:
    if not _path(target):  # what the file may hold: checked here, so saving, not loading, names the fix
        raise TicketlabError(f"layer {target!r} has a name save_model cannot store (letters, digits and _ only, "
                             "as the loader reads nothing else); rename it, e.g. in its ModuleDict keys")
    name = _MODULE_NAMES.get(type(module))
    if name is None:
        raise TicketlabError(
            f"layer {target} is a {type(module).__name__}, which save_model cannot store; "
            f"supported layers: {', '.join(_MODULES)}"
        )
    args = {arg: module.bias is not None if arg == "bias" else getattr(module, arg) for arg in _MODULES[name][1]}
    return {"type": name, "args": {arg: _encode(v, f"layer {target}") for arg, v in args.items()}}


def _describe(graph_module: fx.GraphModule, model_name: str) -> dict[str, Any]:
    """The traced graph as JSON, checked against the whitelists."""
    params, buffers = dict(graph_module.named_parameters()), dict(graph_module.named_buffers())
    modules, attributes, nodes = {}, {}, []
    for node in graph_module.graph.nodes:
        target = node.target
        if node.op == "call_module":
            modules[target] = _describe_module(target, graph_module.get_submodule(target))
        elif node.op == "call_function":
            target = _FUNCTION_NAMES.get(target)
            if target is None:
                raise TicketlabError(
                    f"{model_name} calls {getattr(node.target, '__name__', node.target)} (graph node {node.name}), "
                    f"which save_model cannot store; supported functions: {', '.join(_FUNCTIONS)}"
                )
            if node.target is getattr and not _plain_getattr(node.args, node.kwargs):
                raise TicketlabError(
                    f"{model_name} reads the attribute {node.args[1]!r} of a tensor (graph node {node.name}), which "
                    f"save_model cannot store; it stores {' and '.join(sorted(_TENSOR_ATTRIBUTES))}"
                )
        elif node.op == "call_method" and target not in _METHODS:
            raise TicketlabError(
                f"{model_name} calls the tensor method .{target}() (graph node {node.name}), which save_model "
                f"cannot store; supported methods: {', '.join(sorted(_METHODS))}"
            )
        elif node.op == "get_attr":
            if target not in params and target not in buffers:
                raise TicketlabError(
                    f"{model_name} reads {target}, a tensor that is neither a parameter nor a buffer, so save_model "
                    "cannot store it; register it with register_buffer"
                )
            attributes[target] = "parameter" if target in params else "buffer"
        where = f"graph node {node.name} of {model_name}"
        nodes.append(
            {
                "name": node.name,
                "op": node.op,
                "target": target,
                "args": [_encode(a, where) for a in node.args],
                "kwargs": {k: _encode(v, where) for k, v in node.kwargs.items()},
            }
        )
    frozen = [name for name, p in params.items() if not p.requires_grad]
    return {"format": FORMAT, "modules": modules, "attributes": attributes, "frozen": frozen, "nodes": nodes}


def _container(root: nn.Module, path: str) -> nn.Module:
    """The module at `path` under `root`, creating empty parents as needed."""
    module = root
    for part in path.split(".") if path else []:
        if part not in module._modules:
            module.add_module(part, nn.Module())
        module = module._modules[part]
    return module


def _target(op: str, target: Any, architecture: dict[str, Any]) -> Any:
    """The node target a file asks for, only if it is whitelisted or defined by the file itself."""
    if op == "call_function":
        if target not in _FUNCTIONS:
            raise _untrusted(f"the function {target!r}")
        return _FUNCTIONS[target]
    if op == "call_method" and target in _METHODS:
        return target
    if op == "call_module" and target in architecture["modules"]:
        return target
    if op == "get_attr" and target in architecture["attributes"]:
        return target
    if op == "placeholder" and _identifier(target):
        return target
    if op == "output" and target == "output":
        return target
    raise _untrusted(f"a {op!r} node with target {target!r}")


def _build(architecture: dict[str, Any], state: dict[str, torch.Tensor]) -> fx.GraphModule:
    """A GraphModule from the JSON description and the weights, using the whitelists only.

    Layers are built on the meta device and take the stored tensors themselves (`assign`): a file
    cannot make the loader allocate more than the tensors it holds, and every tensor keeps its dtype."""
    for part in ("modules", "attributes", "nodes"):
        if len(architecture[part]) > _MOST_NODES:
            raise _untrusted(f"{len(architecture[part]):,} {part} (at most {_MOST_NODES:,} are read)")
    root = nn.Module()
    with torch.device("meta"):
        for target, entry in architecture["modules"].items():
            if entry["type"] not in _MODULES:
                raise _untrusted(f"the layer type {entry['type']!r}")
            cls, allowed = _MODULES[entry["type"]]
            if not _path(target) or not set(entry["args"]) <= set(allowed):
                raise _untrusted(f"a layer {target!r} with arguments {sorted(entry['args'])}")
            parent, _, leaf = target.rpartition(".")
            _container(root, parent).add_module(leaf, cls(**{k: _decode(v, {}) for k, v in entry["args"].items()}))
        for target, kind in architecture["attributes"].items():
            if not _path(target) or kind not in ("parameter", "buffer"):
                raise _untrusted(f"a tensor attribute {target!r} of kind {kind!r}")
            parent, _, leaf = target.rpartition(".")
            owner = _container(root, parent)
            if leaf not in owner._parameters and leaf not in owner._buffers:  # not part of a rebuilt layer
                tensor = torch.empty_like(state[target], device="meta")
                if kind == "parameter":
                    owner.register_parameter(leaf, nn.Parameter(tensor))
                else:
                    owner.register_buffer(leaf, tensor)
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    inputs: set[Any] = set()
    for entry in architecture["nodes"]:
        name, op = entry["name"], entry["op"]
        # names, placeholder targets and keyword names become identifiers of fx's generated Python source
        if not _identifier(name) or name in nodes:
            raise _untrusted(f"a graph node named {name!r}" + (" twice" if name in nodes else ""))
        if op == "placeholder" and entry["target"] in inputs:
            raise _untrusted(f"two inputs named {entry['target']!r}")
        inputs.add(entry["target"] if op == "placeholder" else None)
        if not all(_identifier(k) for k in entry["kwargs"]):
            raise _untrusted(f"keyword arguments named {sorted(entry['kwargs'])} (graph node {name})")
        args = tuple(_decode(a, nodes) for a in entry["args"])
        kwargs = {k: _decode(v, nodes) for k, v in entry["kwargs"].items()}
        target = _target(op, entry["target"], architecture)
        if target is getattr and not _plain_getattr(args, kwargs):
            raise _untrusted(f"a getattr node reading {args[1:]!r} (graph node {name})")
        nodes[name] = graph.create_node(op, target, args, kwargs, name=name)
    graph.lint()
    called = {node.target for node in graph.nodes if node.op == "call_module"}
    unused = sorted(set(architecture["modules"]) - called)
    if unused:
        raise _untrusted(f"layers no graph node calls ({', '.join(unused[:3])})")
    model = fx.GraphModule(root, graph)
    model.load_state_dict(state, strict=True, assign=True)
    for name in architecture["frozen"]:
        model.get_parameter(name).requires_grad_(False)
    return model.eval()


def _shape(input_shape: Sequence[int]) -> list[int]:
    shape = list(input_shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise TicketlabError(
            "input_shape must be the shape of one input batch, positive integers such as (1, 3, 32, 32); "
            f"got {input_shape!r}"
        )
    return shape


def _example(model: nn.Module, shape: list[int]) -> torch.Tensor:
    """A fixed random batch on the model's device and in its dtype (its own generator: the caller's
    RNG is left alone)."""
    like = next(iter(model.parameters()), torch.empty(0))
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(like.device, like.dtype)


@torch.no_grad()
def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`model(x)` in eval mode, or a user error naming the shape when the model does not take it."""
    with eval_mode(model):
        try:
            return model(x)
        except Exception as e:  # any failure of the user's forward on this shape
            raise TicketlabError(
                f"{type(model).__name__} fails on an input of shape {tuple(x.shape)} ({type(e).__name__}: {e}); "
                "pass the shape of one input batch the model accepts"
            ) from e


@torch.no_grad()
def _check_reproduces(model: nn.Module, rebuilt: fx.GraphModule, shape: list[int]) -> None:
    """Refuse to write a file that would not compute what `model` computes."""
    x = _example(model, shape)
    expected = _forward(model, x)
    got = rebuilt.to(x.device)(x)
    try:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    except AssertionError as e:
        first = first_line(e)
        raise TicketlabError(
            f"the traced graph of {type(model).__name__} computes something else than its forward ({first}); its "
            "forward depends on state torch.fx cannot record (Python values that change between calls)"
        ) from None


def describe_model(model: nn.Module, input_shape: Sequence[int]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """`model`'s graph as JSON-ready data and its weights, checked to rebuild into a network that
    computes what `model` computes on a batch of `input_shape` (`rebuild` reads them back)."""
    shape = _shape(input_shape)
    model_name = type(model).__name__
    try:
        with eval_mode(model):  # the file loads in eval mode: a forward reading self.training is traced so
            graph_module = fx.symbolic_trace(model)
    except Exception as e:  # fx fails in many ways on Python control flow over tensor values
        raise TicketlabError(
            f"cannot trace {model_name} with torch.fx ({type(e).__name__}: {e}); saving a model needs a forward "
            "without Python control flow on tensor values"
        ) from e
    architecture = _describe(graph_module, model_name)
    # clones: tied weights would share storage, which safetensors refuses
    state = {name: t.detach().clone() for name, t in graph_module.state_dict().items()}
    _check_reproduces(model, _build(architecture, state), shape)
    return architecture, state


def rebuild(architecture: dict[str, Any], state: dict[str, torch.Tensor], where: str) -> fx.GraphModule:
    """The network `describe_model` described, in eval mode, built from whitelists only; `where`
    names the file it came from in errors."""
    try:
        if architecture.get("format") != FORMAT:
            raise TicketlabError(
                f"{where} has model format {architecture.get('format')!r}, this ticketlab reads format {FORMAT}; "
                "load it with the ticketlab version that wrote it"
            )
        return _build(architecture, state)
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError, SyntaxError, AssertionError,
            IndexError) as e:  # all a hand-made description can make the builders raise
        raise TicketlabError(
            f"{where} is a malformed model file ({type(e).__name__}: {e}); write it again with ticketlab"
        ) from None


def save_model(
    path: str | Path, model: nn.Module, input_shape: Sequence[int], metadata: dict | None = None
) -> None:
    """Write `model` (graph, layers and weights) to one safetensors file that `load_model` reads
    without the code that built it.

    `input_shape` is the shape of one input batch, e.g. (1, 3, 32, 32): it is stored for users of
    the file and used to check, before writing, that the file reproduces the model's outputs.
    `metadata` (JSON-serialisable) is stored as it is.
    """
    shape = _shape(input_shape)
    try:
        extra = json.dumps(metadata if metadata is not None else {})
    except (TypeError, ValueError) as e:
        raise TicketlabError(
            f"model metadata must be JSON-serialisable ({e}); pass numbers, strings, lists and dicts"
        ) from None
    architecture, state = describe_model(model, shape)
    header = {ARCHITECTURE: json.dumps(architecture), METADATA: extra, INPUT_SHAPE: json.dumps(shape)}
    write_tensors(Path(path), state, metadata=header)


def load_model(path: str | Path) -> fx.GraphModule:
    """The model saved by `save_model`, in eval mode; `model.meta` holds the stored
    "ticketlab.metadata" and "ticketlab.input_shape"."""
    path = Path(path)
    if not path.is_file():
        raise TicketlabError(f"no model file at {path}; give the path of a file written by compact.save_model")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            names = f.keys()
            state = {name: f.get_tensor(name) for name in names}
    except SafetensorError as e:
        raise TicketlabError(f"{path} is not a safetensors file ({e}); give a file written by save_model") from None
    if ARCHITECTURE not in header:
        raise TicketlabError(f"{path} holds no model architecture; it was not written by ticketlab.compact.save_model")
    try:
        architecture = json.loads(header[ARCHITECTURE])
        meta = json.loads(header.get(METADATA, "{}")), json.loads(header.get(INPUT_SHAPE, "null"))
    except (ValueError, RecursionError) as e:
        raise TicketlabError(f"{path} is a malformed model file ({e}); write it again with save_model") from None
    model = rebuild(architecture, state, str(path))
    model.meta[METADATA], model.meta[INPUT_SHAPE] = meta
    return model


def export_onnx(model: nn.Module, path: str | Path, input_shape: Sequence[int]) -> None:
    """Write `model` in eval mode as an ONNX file for inputs shaped like `input_shape` in all but the
    batch size, which the file leaves free; the file is written only once onnxruntime, running it,
    reproduces the model's outputs (batches of 1 and 2).

    Needs the `onnx` extra (pip install 'ticketlab[onnx]'): torch's exporter is built on onnx and
    onnxscript, and onnxruntime runs the result.
    """
    shape = _shape(input_shape)
    dtypes = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.dtype.is_floating_point}
    if dtypes - {torch.float32}:
        raise TicketlabError(
            f"export_onnx writes float32 models, and {type(model).__name__} holds "
            f"{', '.join(sorted(str(d).removeprefix('torch.') for d in dtypes))} tensors; export model.float() "
            "(onnxruntime checks the file against it in float32)"
        )
    for package in ("onnx", "onnxscript", "onnxruntime"):
        try:
            importlib.import_module(package)
        except ImportError:
            raise TicketlabError(
                f"export_onnx needs the {package} package; install the extra: pip install 'ticketlab[onnx]'"
            ) from None
    # traced at batch 2: the exporter fixes a dimension of size 1 instead of leaving it free
    x = _example(model, [2, *shape[1:]])
    expected = _forward(model, x)  # a wrong shape is the user's mistake, not the exporter's: say so before exporting

    def export(tmp: str) -> None:
        try:
            torch.onnx.export(model, (x,), tmp, dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
        except Exception as e:
            cause = _root_cause(e)  # torch's own wrappers only say which export step failed
            first = first_line(cause)
            raise TicketlabError(
                f"torch.onnx.export cannot export {type(model).__name__} ({type(cause).__name__}: {first}); "
                "export a model made of standard layers, such as the result of compact() or load_model()"
            ) from e
        for batch in (x[:1], x):
            _check_onnx(tmp, batch, _forward(model, batch) if batch is not x else expected, type(model).__name__)

    with eval_mode(model), _quiet_torch():
        atomic_write(Path(path), export)


def _check_onnx(path: str, x: torch.Tensor, expected: Any, model_name: str) -> None:
    """Refuse an ONNX file whose outputs, as onnxruntime computes them, are not the model's (every tensor
    of a forward that returns several, in order)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # a check on two small batches: no thread pool spun up for it
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy()})
    wanted = [t for t in torch.utils._pytree.tree_leaves(expected) if isinstance(t, torch.Tensor)]
    try:
        torch.testing.assert_close([torch.from_numpy(g) for g in got], [t.detach().cpu().float() for t in wanted],
                                   rtol=1e-4, atol=1e-4)
    except AssertionError as e:
        raise TicketlabError(
            f"onnxruntime computes something else than {model_name} on a batch of "
            f"{x.shape[0]} ({first_line(e)}); the ONNX file is not written"
        ) from None


@contextmanager
def _quiet_torch() -> Iterator[None]:
    """Silence torch's loggers, warnings and stderr prints: its exporter logs every failed trace step
    and prints partial graphs (dozens of lines), and notes internals on success, while the error
    raised says what went wrong. Loggers a user set through TORCH_LOGS keep their levels."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error
