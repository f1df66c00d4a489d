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
- ReLU-like activations, pooling, dropout, flattening and scaling pass a space on: they map a zero
  channel to zero, so a removed channel stays removed. So does a depthwise conv (channel c in,
  channel c out), whose filters and biases join the companions.

Anything else that touches a space (concatenation, sigmoid, adding a constant, a grouped conv that
is not depthwise, a layer called twice) could turn a zero channel into a non-zero one, so the plan
is refused with the operation named, and `register_channel_plan` remains the way out. A space that
reaches the output (the classifier's classes) is never a group. The built-in architectures keep
their registered plans; the tests check that tracing reads the same groups off each of them.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from ticketlab.compact.channels import ChannelGroup, is_depthwise
from ticketlab.errors import TicketlabError

# Modules and functions with f(0) = 0 channel by channel: a silent channel stays silent through them.
_SILENT_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Mish,
    nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)
_SILENT_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.hardtanh,
    F.hardswish, F.mish, torch.tanh, F.dropout, F.dropout2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
}
_SILENT_METHODS = {"relu", "relu_", "tanh", "contiguous", "clone"}
_REDUCTIONS = {"mean", "sum", "amax", torch.mean, torch.sum, torch.amax}  # over non-channel dims only
_SCALINGS = {operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul}
_ADDITIONS = {operator.add, operator.iadd, torch.add, "add", "add_"}


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
    """What a traced value carries: `space` channels on dim 1 (`flat`: flattened, channel-major), or None."""

    space: _Space | None
    ndim: int | None = None
    flat: bool = False


_DATA = _Flow(None)  # the input and whatever is computed from it alone: channels no layer wrote


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
        self.modules = dict(model.named_modules())
        self.spaces: list[_Space] = []
        self.seen: set[str] = set()
        self.flows: dict[fx.Node, _Flow] = {}

    def plan(self, graph: fx.Graph) -> list[ChannelGroup]:
        for node in graph.nodes:
            args = [self.flows.get(a, _DATA) for a in _nodes(node.args, node.kwargs)]
            if node.op == "output":
                for flow in args:
                    if flow.space is not None:
                        flow.space.root().output = True
                continue
            try:
                self.flows[node] = self.step(node, args)
            except _Refused as refused:
                raise TicketlabError(f"{refused} (graph node %{node.name} of its torch.fx trace)") from None
        return [self.group(space) for space in dict.fromkeys(s.root() for s in self.spaces)
                if not space.output and (space.consumers or space.flat_consumers)]

    def step(self, node: fx.Node, args: list[_Flow]) -> _Flow:
        spaces = [flow for flow in args if flow.space is not None]
        target = node.target
        if node.op == "call_module":
            module = self.modules[target]
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)):
                return self.layer(target, module, args[0] if args else _DATA)
            if spaces and isinstance(module, nn.Flatten):
                return self.flatten(spaces[0], module.start_dim, module.end_dim)
            if spaces and not isinstance(module, _SILENT_MODULES):
                raise _Refused(f"{target} ({type(module).__name__}) may make a removed channel non-zero")
            return spaces[0] if spaces else _DATA
        if not spaces or target == "size" or target is getattr:  # shapes and sizes carry no channels
            return _DATA
        if target in _ADDITIONS:
            return self.add(node, spaces)
        if len(spaces) > 1:
            raise _Refused(f"{_describe(target)} combines channel spaces, which only an addition may")
        flow = spaces[0]
        if target in _SILENT_FUNCTIONS or (node.op == "call_method" and target in _SILENT_METHODS):
            return flow
        if target in _SCALINGS:
            numerator = node.args[0]
            if target not in (operator.truediv, operator.itruediv) or self.flows.get(numerator, _DATA) is flow:
                return flow  # x * anything, or x / anything: a zero stays zero
        if target in (torch.flatten, "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self.flatten(flow, start, end)
        if target in ("view", "reshape") and len(node.args) == 3 and node.args[2] == -1:
            return self.flatten(flow, 1, -1)  # x.view(x.size(0), -1)
        if target in _REDUCTIONS:
            return self.reduce(node, flow)
        if target in ("squeeze", torch.squeeze) and len(node.args) == 2:  # x.squeeze(-1): a dim named, not dim 1
            return self.reduce(node, flow, keep=False)
        raise _Refused(f"{_describe(target)} may mix channels or make a removed channel non-zero")

    def layer(self, name: str, module: nn.Module, flow: _Flow) -> _Flow:
        if name in self.seen:
            raise _Refused(f"{name} is called twice, so its channels cannot be cut for one of the calls alone")
        self.seen.add(name)
        space = None if flow.space is None else flow.space.root()
        if isinstance(module, nn.Conv2d) and module.groups != 1:
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
        return _Flow(produced, ndim)

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
        operands = [a for a in node.args if isinstance(a, (fx.Node, int, float))]
        if len(spaces) != 2 or len(operands) != 2 or node.kwargs:
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
        return _Flow(first, spaces[0].ndim)

    def flatten(self, flow: _Flow, start: int = 0, end: int = -1) -> _Flow:
        ndim = flow.ndim if flow.ndim is not None else 4
        if start != 1 or end not in (-1, ndim - 1):
            raise _Refused(f"flattening dims {start}..{end} moves the channel dimension; flatten from dim 1 instead")
        if flow.flat or ndim == 2:
            return flow
        return _Flow(flow.space, 2, flat=True)

    def reduce(self, node: fx.Node, flow: _Flow, keep: bool | None = None) -> _Flow:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = keep if keep is not None else bool(node.args[2] if len(node.args) > 2 else
                                                     node.kwargs.get("keepdim", False))
        dims = (dims,) if isinstance(dims, int) else dims
        ndim = flow.ndim or 4
        if flow.flat or not isinstance(dims, (tuple, list)) or 1 in [d % ndim for d in dims if isinstance(d, int)]:
            raise _Refused(f"{_describe(node.target)} over the channel dimension (or over all dims) mixes channels")
        return _Flow(flow.space, ndim if keepdim else ndim - len(dims))

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


def _describe(target: object) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))
