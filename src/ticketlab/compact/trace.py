"""Channel plans read off a network's graph, for the networks nobody registered a plan for.

A user's own `nn.Module` should get structured tickets that compact, with residual streams tied,
without writing a plan by hand. torch.fx records what `forward` computes; following the tensors
from each Conv2d/Linear (a *producer*, which starts a space of output channels) gives the groups:

- an addition of two spaces makes them one (a channel must vanish from every addend: the tie);
- a BatchNorm (2d on conv channels, 1d on features) on a space adds its entries to the group's
  companions and buffers, wherever it sits (after a producer, or before a reader as in
  pre-activation nets);
- a Conv2d or Linear reading a space is a consumer (a Linear reading a flattened conv space reads
  each channel as a block of in_features / channels columns);
- ReLU-like activations, pooling, upsampling, zero padding, dropout, flattening and scaling by a
  number pass a space on: they map a zero channel to zero, so a removed channel stays removed. So
  does a depthwise conv (channel c in, channel c out), whose filters and biases join the companions.
- a space's batch size and spatial sizes may be read; its channel count may not be used, since
  compaction changes it (`view(n, -1)` is a flatten only when n is the batch size of that tensor).

fx records no shapes, so the rank of the input is unknown: a Linear applied to the input itself is
taken to read [batch, features] (as an MLP does), its output features on dim 1. A network that feeds
a Linear a [batch, steps, features] input and then a BatchNorm1d over the steps breaks that
assumption; register a plan for it by hand.

Anything else that touches a space (concatenation, sigmoid, adding a constant, scaling by a
per-channel parameter, a grouped conv that is not depthwise, a layer called twice or sharing its
weight) could turn a zero channel into a non-zero one or break a shape, so the plan is refused with
the operation named, and `register_channel_plan` remains the way out. A space that
reaches the output (the classifier's classes) is never a group. The built-in architectures keep
their registered plans; the tests check that tracing reads the same groups off each of them.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import fx, nn

from ticketlab.compact.channels import ChannelGroup, is_depthwise
from ticketlab.errors import TicketlabError

# Modules and functions with f(0) = 0 channel by channel: a silent channel stays silent through them.
_SILENT_MODULES = (
    nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Hardswish, nn.Mish, nn.Dropout, nn.Dropout2d,
    nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample,
)
_SILENT_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.hardswish, F.mish,
    torch.tanh, F.dropout, F.dropout2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
    F.interpolate, operator.neg, torch.neg,
}
_SILENT_METHODS = {"relu", "relu_", "tanh", "neg", "contiguous", "clone", "float"}
_BOUNDED = {F.hardtanh: (-1.0, 1.0), torch.clamp: (None, None), torch.clip: (None, None), "clamp": (None, None),
            "clamp_": (None, None), "clip": (None, None)}  # f(0) = 0 when 0 lies within their (default) bounds
_REDUCTIONS = {"mean", "sum", "amax", torch.mean, torch.sum, torch.amax}  # over non-channel dims only
_SCALINGS = {operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul}
_ADDITIONS = {operator.add, operator.iadd, torch.add, "add", "add_"}
_SUBTRACTIONS = {operator.sub, operator.isub, torch.sub, "sub", "sub_"}
# element by element, so their result keeps the batch of the tensor they act on
_ELEMENTWISE = {*_SILENT_FUNCTIONS, *_BOUNDED, *_SCALINGS, *_ADDITIONS, *_SUBTRACTIONS}
_ATTRIBUTES = {"device", "dtype", "ndim", "is_cuda", "requires_grad"}  # reading them carries no channels


@dataclass(eq=False)  # compared and hashed by identity
class _Space:
    """The channels one or more producers write (merged by additions)."""

    channels: int
    producers: list[str] = field(default_factory=list)
    companions: list[str] = field(default_factory=list)
    buffers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    flat_consumers: list[tuple[str, int]] = field(default_factory=list)
    output: bool = False
    merged_into: _Space | None = None

    def root(self) -> _Space:
        space = self
        while space.merged_into is not None:
            space = space.merged_into
        return space


@dataclass(frozen=True)
class _Flow:
    """What a traced value carries.

    `space`: channels on dim 1 (`flat`: flattened, channel-major). `batch`: a token naming its batch
    (the input it came from, or the node itself), so that `view(n, -1)` can be checked to keep dim
    0. The rest mark values that are not tensors of channels: `batch_size` (that batch's size),
    `shape` (the shape of a space), `width` (computed from a channel count, which compaction
    changes) and `param` (computed from a parameter of more than one entry, never resized).
    """

    space: _Space | None = None
    ndim: int | None = None
    flat: bool = False
    batch: object = None
    batch_size: object = None
    shape: _Flow | None = None
    width: bool = False
    param: str | None = None


_DATA = _Flow()  # whatever is computed from the input alone: channels no layer wrote


def traced_plan(model: nn.Module) -> list[ChannelGroup]:
    """The channel groups of `model`, found by tracing its forward with torch.fx (see the module doc)."""
    name = type(model).__name__
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = fx.symbolic_trace(model).graph
    except Exception as e:  # fx fails in many ways on Python control flow over tensor values
        raise TicketlabError(f"torch.fx cannot trace {name} ({type(e).__name__}: {e})") from None
    return _Tracer(model).plan(graph)


class _Tracer:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.spaces: list[_Space] = []
        self.seen: set[str] = set()
        self.weights: dict[int, str] = {}
        self.flows: dict[fx.Node, _Flow] = {}

    def plan(self, graph: fx.Graph) -> list[ChannelGroup]:
        for node in graph.nodes:
            args = [self.flows.get(a, _DATA) for a in _nodes(node.args, node.kwargs)]
            try:
                if node.op == "output":
                    self.output(args)
                    continue
                flow = self.step(node, args)
            except _Refused as refused:
                raise TicketlabError(f"{refused} (graph node %{node.name} of its torch.fx trace)") from None
            self.flows[node] = flow if flow.batch is not None else replace(flow, batch=node)
        return [self.group(space) for space in dict.fromkeys(s.root() for s in self.spaces)
                if not space.output and (space.consumers or space.flat_consumers)]

    def output(self, args: list[_Flow]) -> None:
        for flow in args:
            if flow.width or _sizes_space(flow):
                raise _Refused("the output holds a channel count, which compaction changes")
            if flow.space is not None:
                flow.space.root().output = True

    def step(self, node: fx.Node, args: list[_Flow]) -> _Flow:
        if any(flow.width for flow in args):
            raise _Refused(f"{_describe(node.target)} uses a channel count, which compaction changes")
        target = node.target
        if node.op == "get_attr":
            value = operator.attrgetter(target)(self.model)
            return _Flow(param=target) if isinstance(value, torch.Tensor) and value.numel() > 1 else _DATA
        if target is getattr or (node.op == "call_method" and target in ("size", "dim")):
            return self.measure(node, args[0])
        if target is operator.getitem and args and args[0].shape is not None:
            return self.dimension(node, args[0].shape)
        if any(_sizes_space(flow) for flow in args):
            raise _Refused(f"{_describe(target)} uses the shape of a channel space, whose width compaction changes")
        spaces = [flow for flow in args if flow.space is not None]
        if node.op == "call_module":
            return self.call_module(target, self.modules[target], args, spaces)
        if not spaces:
            flow = next((_Flow(param=flow.param) for flow in args if flow.param), _DATA)
            elementwise = target in _ELEMENTWISE or (node.op == "call_method" and target in _SILENT_METHODS)
            return replace(flow, batch=_kept_batch(args)) if elementwise else flow
        if target in _ADDITIONS or target in _SUBTRACTIONS:
            return self.add(node, spaces)
        if len(spaces) > 1:
            raise _Refused(f"{_describe(target)} combines channel spaces, which only an addition may")
        flow = spaces[0]
        if target in _SILENT_FUNCTIONS or (node.op == "call_method" and target in _SILENT_METHODS):
            return flow
        if target in _BOUNDED:
            return self.bounded(node, flow)
        if target is F.pad:
            return self.pad(node, flow)
        if target in _SCALINGS:
            return self.scale(node, flow, args)
        if target in (torch.flatten, "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self.flatten(flow, start, end)
        if target in ("view", "reshape") and len(node.args) == 3 and node.args[2] == -1:
            if self.flows.get(node.args[1], _DATA).batch_size is not flow.batch:
                raise _Refused(f"{target}(n, -1) with an n the trace cannot tie to this tensor's batch size; "
                               f"flatten with torch.flatten(x, 1), or x.{target}(x.size(0), -1), instead")
            return self.flatten(flow, 1, -1)
        if target in _REDUCTIONS:
            return self.reduce(node, flow)
        if target in ("squeeze", torch.squeeze) and len(node.args) == 2:  # x.squeeze(-1): a dim named, not dim 1
            return self.reduce(node, flow, keep=False)
        raise _Refused(f"{_describe(target)} may mix channels or make a removed channel non-zero")

    def call_module(self, name: str, module: nn.Module, args: list[_Flow], spaces: list[_Flow]) -> _Flow:
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)):
            return self.layer(name, module, args[0] if args else _DATA)
        if not spaces:
            return replace(_DATA, batch=_kept_batch(args)) if isinstance(module, _SILENT_MODULES) else _DATA
        if isinstance(module, nn.Flatten):
            return self.flatten(spaces[0], module.start_dim, module.end_dim)
        if isinstance(module, nn.Hardtanh):  # ReLU6 too
            return self.within(name, spaces[0], module.min_val, module.max_val)
        if not isinstance(module, _SILENT_MODULES):
            raise _Refused(f"{name} ({type(module).__name__}) may make a removed channel non-zero")
        return spaces[0]

    def measure(self, node: fx.Node, flow: _Flow) -> _Flow:
        """`x.size(d)`, `x.shape`, `x.dim()` and other attributes: the batch size, or shapes to watch."""
        if node.target == "dim":
            return _DATA
        if node.target is getattr:
            attribute = node.args[1]
            if attribute == "shape":
                return _Flow(shape=flow)
            if attribute in _ATTRIBUTES or flow.space is None:
                return _DATA
            if attribute == "data":
                return flow
            raise _Refused(f"reading .{attribute} of a channel space")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if dim is None:
            return _Flow(shape=flow)
        return self.dimension(node, flow, dim)

    def dimension(self, node: fx.Node, flow: _Flow, dim: object = None) -> _Flow:
        """One size of `flow`'s shape: dim 0 is its batch size, dim 1 a width compaction changes."""
        dim = node.args[1] if dim is None else dim
        if flow.space is None:  # the rank of data is unknown: only a plain 0 names its batch
            return _Flow(batch_size=flow.batch) if dim == 0 else _DATA
        if isinstance(dim, slice):  # x.shape[2:] is safe, x.shape[:2] holds the width
            return _Flow(width=True) if 1 in range(flow.ndim or 4)[dim] else _DATA
        if not isinstance(dim, int):
            raise _Refused("indexing the shape of a channel space by anything but a number or a slice")
        dim %= flow.ndim or 4
        if dim == 0:
            return _Flow(batch_size=flow.batch)
        return _Flow(width=True) if dim == 1 else _DATA

    def layer(self, name: str, module: nn.Module, flow: _Flow) -> _Flow:
        if name in self.seen:
            raise _Refused(f"{name} is called twice, so its channels cannot be cut for one of the calls alone")
        self.seen.add(name)
        for key, param in module.named_parameters(recurse=False):
            other = self.weights.setdefault(id(param), f"{name}.{key}")
            if other != f"{name}.{key}":
                raise _Refused(f"{name}.{key} is the same tensor as {other}, so its channels cannot be cut for one "
                               "layer alone")
        space = None if flow.space is None else flow.space.root()
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or is_depthwise(module)):  # 1 channel: both
            if not is_depthwise(module):
                raise _Refused(f"{name} is a grouped convolution (groups={module.groups}); compaction needs groups=1 "
                               "or a depthwise convolution")
            if space is not None:  # depthwise: channel c in, channel c out, so the set passes on with its rows
                if flow.flat or flow.ndim != 4:
                    raise _Refused(f"{name} reads a flattened channel space")
                space.companions += [f"{name}.weight"] + ([f"{name}.bias"] if module.bias is not None else [])
            return flow
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if space is not None:
                if flow.flat or flow.ndim != (4 if isinstance(module, nn.BatchNorm2d) else 2):
                    raise _Refused(f"{type(module).__name__} {name} normalises a flattened channel space or one of "
                                   "another rank")
                space.companions += [f"{name}.weight", f"{name}.bias"] if module.affine else []
                space.buffers += [f"{name}.running_mean", f"{name}.running_var"] if module.track_running_stats else []
            return flow
        if space is not None:
            self.read(name, module, flow, space)
        produced = _Space(module.weight.shape[0], producers=[f"{name}.weight"])
        produced.companions += [f"{name}.bias"] if module.bias is not None else []
        self.spaces.append(produced)
        ndim = 4 if isinstance(module, nn.Conv2d) else (2 if flow.space is None else flow.ndim)
        return _Flow(produced, ndim, batch=flow.batch)

    def read(self, name: str, module: nn.Module, flow: _Flow, space: _Space) -> None:
        weight = f"{name}.weight"
        if isinstance(module, nn.Conv2d):
            if flow.flat or flow.ndim != 4:
                raise _Refused(f"{name} reads a flattened channel space")
            space.consumers.append(weight)
            return
        if not flow.flat:
            if flow.ndim != 2:
                raise _Refused(f"Linear {name} reads channels on its last dimension, not on dim 1")
            space.consumers.append(weight)
            return
        block, rest = divmod(module.in_features, space.channels)
        if rest:
            raise _Refused(f"Linear {name} reads {module.in_features} columns of a flattened space of "
                           f"{space.channels} channels, which is not a whole block per channel")
        if block == 1:
            space.consumers.append(weight)
        else:
            space.flat_consumers.append((weight, block))

    def add(self, node: fx.Node, spaces: list[_Flow]) -> _Flow:
        """A sum (or difference) of two spaces ties them; adding a literal 0 (as `sum()` starts) is no-op."""
        operands = [a for a in node.args if isinstance(a, (fx.Node, int, float))]
        if len(spaces) == 1 and len(operands) == 2 and 0 in [a for a in operands if not isinstance(a, fx.Node)]:
            return spaces[0]
        if set(node.kwargs) - {"alpha"} or not isinstance(node.kwargs.get("alpha", 1), (int, float)):
            raise _Refused(f"{_describe(node.target)} with options {sorted(node.kwargs)}")
        if len(spaces) != 2 or len(operands) != 2:
            raise _Refused("an addition to a channel space of something no layer wrote shifts removed channels "
                           "away from zero")
        first, second = (flow.space.root() for flow in spaces)
        if spaces[0].flat or spaces[1].flat or spaces[0].ndim != spaces[1].ndim:
            raise _Refused("an addition of a flattened channel space")
        if first is not second:
            if first.channels != second.channels:
                raise _Refused(f"an addition of spaces of {first.channels} and {second.channels} channels")
            for key in ("producers", "companions", "buffers", "consumers", "flat_consumers"):
                getattr(first, key).extend(getattr(second, key))
            first.output |= second.output
            second.merged_into = first
        batch = spaces[0].batch if spaces[0].batch is spaces[1].batch else None
        return _Flow(first, spaces[0].ndim, batch=batch)

    def scale(self, node: fx.Node, flow: _Flow, args: list[_Flow]) -> _Flow:
        """x * a and x / a keep a zero channel zero, unless `a` is a per-channel parameter never resized."""
        param = next((f.param for f in args if f.param), None)
        if param is not None:
            raise _Refused(f"{_describe(node.target)} by the parameter {param}, which compaction does not resize")
        if node.target in (operator.truediv, operator.itruediv) and self.flows.get(node.args[0], _DATA) is not flow:
            raise _Refused("dividing by a channel space")
        return flow

    def bounded(self, node: fx.Node, flow: _Flow) -> _Flow:
        low, high = _BOUNDED[node.target]
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", node.kwargs.get("min", low))
        high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", node.kwargs.get("max", high))
        return self.within(_describe(node.target), flow, low, high)

    def within(self, name: str, flow: _Flow, low: object, high: object) -> _Flow:
        """A clamp to [low, high] keeps a zero channel zero only when 0 lies within the bounds."""
        bounds_ok = all(b is None or isinstance(b, (int, float)) for b in (low, high))
        if not bounds_ok or (low is not None and low > 0) or (high is not None and high < 0):
            raise _Refused(f"{name} clamps to [{low}, {high}], which moves a removed channel away from zero")
        return flow

    def pad(self, node: fx.Node, flow: _Flow) -> _Flow:
        """Padding spatial dims with zeros (or by reflection, replication, wrapping) keeps a zero channel zero."""
        pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
        if flow.flat or not isinstance(pad, (tuple, list)) or len(pad) > 2 * ((flow.ndim or 4) - 2):
            raise _Refused("padding the channel dimension of a channel space")
        if mode == "constant" and value not in (None, 0):
            raise _Refused(f"padding a channel space with {value}, which makes a removed channel non-zero")
        return flow

    def flatten(self, flow: _Flow, start: int = 0, end: int = -1) -> _Flow:
        ndim = flow.ndim if flow.ndim is not None else 4
        if start != 1 or end not in (-1, ndim - 1):
            raise _Refused(f"flattening dims {start}..{end} moves the channel dimension; flatten from dim 1 instead")
        if flow.flat or ndim == 2:
            return flow
        return replace(flow, ndim=2, flat=True)

    def reduce(self, node: fx.Node, flow: _Flow, keep: bool | None = None) -> _Flow:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = keep if keep is not None else bool(node.args[2] if len(node.args) > 2 else
                                                     node.kwargs.get("keepdim", False))
        dims = (dims,) if isinstance(dims, int) else dims
        ndim = flow.ndim or 4
        if flow.flat or not isinstance(dims, (tuple, list)) or 1 in [d % ndim for d in dims if isinstance(d, int)]:
            raise _Refused(f"{_describe(node.target)} over the channel dimension (or over all dims) mixes channels")
        if 0 in [d % ndim for d in dims if isinstance(d, int)]:
            if not keepdim:
                raise _Refused(f"{_describe(node.target)} over the batch dimension moves the channel dimension")
            return replace(flow, batch=None)
        return replace(flow, ndim=ndim if keepdim else ndim - len(dims))

    def group(self, space: _Space) -> ChannelGroup:
        return ChannelGroup(space.channels, tuple(space.producers), tuple(space.companions), tuple(space.buffers),
                            tuple(space.consumers), tuple(space.flat_consumers))


class _Refused(Exception):
    """An operation the tracer cannot prove keeps removed channels removed."""


def _nodes(*values: object) -> Iterator[fx.Node]:
    """The fx nodes inside (nested) args and kwargs, in order."""
    for value in values:
        if isinstance(value, fx.Node):
            yield value
        elif isinstance(value, (tuple, list)):
            yield from _nodes(*value)
        elif isinstance(value, dict):
            yield from _nodes(*value.values())


def _kept_batch(args: list[_Flow]) -> object:
    """The batch token an element-wise result keeps: its tensor operands' one token (numbers and parameters
    broadcast over it), else None, and the result is a batch of its own."""
    tokens = {flow.batch for flow in args if not (flow.batch_size or flow.shape or flow.width) and not (
        isinstance(flow.batch, fx.Node) and flow.batch.op == "get_attr")}
    return tokens.pop() if len(tokens) == 1 else None


def _sizes_space(flow: _Flow) -> bool:
    """Whether `flow` is the whole shape of a channel space (its width included)."""
    return flow.shape is not None and flow.shape.space is not None


def _describe(target: object) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))
