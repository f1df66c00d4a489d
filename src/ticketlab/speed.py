"""Inference latency and throughput, measured side by side.

Pruned models are famously no faster, so every speed claim ticketlab makes
is a ratio measured in one process: the variants take turns within each repetition, so a noisy
machine slows them alike, and the figure is the median over repetitions after a warm-up.

The variants of a ticket:
  * dense: the architecture with the ticket's weights (zeros computed like any other number);
  * masked: what a pruning library gives, `torch.nn.utils.prune` re-applying the mask on every
    forward;
  * compacted: the physically smaller network (`ticketlab.compact`), channel tickets only.

Beside the clock, `forward_flops` counts the work a variant asks for. Density, FLOPs and speed
part ways: weights and compute sit in different layers (a CIFAR ResNet's last stage holds most
weights but a third of the work), and narrow convolutions use a CPU less well than wide ones, so
a ticket can drop two thirds of the FLOPs and run well short of 3x. The gap between the FLOPs
ratio and the measured one is what better kernels could still win.

Image models run in the channels-last layout by default, as the Trainer trains them: it is the
faster layout of both oneDNN and cuDNN, and in the default NCHW layout oneDNN's CPU convolutions
are slow at some channel counts (16 channels at 32x32 takes 3x the time of 15), which would
flatter any ticket that moves off them. Every variant gets the same layout.

A deployment compiles: `compiled` times each variant as `torch.compile` (TorchInductor, with weights
frozen as constants, so BatchNorm folds into the convolutions and fused kernels replace chains of
small ones) runs it. Narrow networks are bound by per-operation overhead more than wide ones, so the
ratio can move either way; both figures are worth reporting side by side.
"""

from __future__ import annotations

import contextlib
import copy
import io
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from ticketlab.errors import TicketlabError, first_line
from ticketlab.train.evaluate import eval_mode

# what `--precision` names, for the variants timed (ticketlab bench, benchmarks/structured_speed.py)
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Timing:
    variant: str
    batch_size: int
    latency_ms: float  # median time of one forward pass of the batch
    throughput: float  # images per second at that median
    ratio: float  # throughput relative to the first variant (dense) at this batch size
    repeats: int

    def as_dict(self) -> dict[str, float | int | str]:
        return {"variant": self.variant, "batch_size": self.batch_size, "latency_ms": round(self.latency_ms, 4),
                "throughput": round(self.throughput, 2), "ratio": round(self.ratio, 4), "repeats": self.repeats}


def masked_module(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy whose masked weights go through `torch.nn.utils.prune`'s forward re-masking."""
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    for name, mask in masks.items():
        module_name, _, param = name.rpartition(".")
        prune.custom_from_mask(modules[module_name], param, mask.to(next(masked.parameters()).device))
    return masked


def forward_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Floating-point operations of one example's forward pass, as PyTorch's FlopCounterMode counts
    them: convolutions and matrix multiplies (2 per multiply-accumulate), nearly all of a CNN's work.
    The count follows the shapes, so a masked network counts its zeros, as dense kernels compute them."""
    reference = next(model.parameters(), None)
    device, dtype = (reference.device, reference.dtype) if reference is not None else ("cpu", torch.float32)
    # eval: BatchNorm in training mode rejects a batch of one and would update its statistics
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    return counter.get_total_flops()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, calls: int) -> float:
    _synchronize(x.device)
    start = time.perf_counter()
    for _ in range(calls):
        forward(x)
    _synchronize(x.device)
    return (time.perf_counter() - start) / calls


def _graphed(name: str, model: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], Any]:
    """The model's forward on `x` captured in a CUDA graph (after a warm-up on a side stream, which
    capture requires); calling the result replays it on the same input."""
    side = torch.cuda.Stream(x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):
        model(x)
    torch.cuda.current_stream(x.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            model(x)
    except RuntimeError as error:
        raise TicketlabError(f"variant {name!r} cannot be captured in a CUDA graph ({error}); "
                             "time it without the CUDA-graph option") from None
    return lambda _: graph.replay()


_COMPILATIONS = 100_000  # dynamo's limits inside `measure(compiled=True)`: see _compiling


def _compiling() -> contextlib.ExitStack:
    """Inductor's freezing: parameters become constants of the compiled graph (BatchNorm folded into
    the convolution before it, weights pre-packed for oneDNN), as for a model that only serves.

    Every variant and batch size is one more compilation of the same `forward` code, and dynamo
    keeps 8 per code object (counting earlier calls' in this process), past which it would run the
    rest eagerly without a word. So the limits are lifted far beyond any benchmark, and hitting them
    anyway is an error rather than an eager timing labelled compiled."""
    from torch._dynamo import config as dynamo
    from torch._inductor import config as inductor

    stack = contextlib.ExitStack()
    stack.enter_context(inductor.patch(freezing=True))
    stack.enter_context(dynamo.patch(recompile_limit=_COMPILATIONS, accumulated_recompile_limit=_COMPILATIONS,
                                     fail_on_recompile_limit_hit=True))
    return stack


def _compiled(name: str, model: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], Any]:
    """The model compiled for inputs shaped like `x`, compiled now (on its first call) so no timing pays
    for it. Compilation needs a C++ compiler on the CPU and Triton on CUDA; a failure is the user's to
    fix (or to time without compiling), so it is reported as such."""
    forward = torch.compile(model, dynamic=False)
    try:
        forward(x)
    except Exception as error:  # dynamo and inductor raise many types, all meaning "cannot compile"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TicketlabError(f"variant {name!r} cannot be compiled by torch.compile ({first}); "
                             "time it without the compile option") from None
    return forward


_HEADROOM = 3  # live activations at the widest point: a layer's input, its output, a skip branch


def _largest_activation(name: str, model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the largest output any leaf module produces for the batch `x` (one example suffices); the
    first forward of variant `name`, so a failing one is reported here as the user's error."""
    largest = [x.numel() * x.element_size()]

    def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    handles = [m.register_forward_hook(record) for m in model.modules() if not any(m.children())]
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # a failing fx GraphModule prints its own traceback
            model(x)
    except Exception as error:  # the user's forward on this input, whatever it raises
        first = first_line(error)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and "view size" in first:
            raise TicketlabError(
                f"variant {name!r} calls .view() on a tensor in the channels-last layout it is timed in; time it "
                "with --layout nchw (channels_last=False), or set the class attribute channels_last = False on "
                "the model") from None
        raise TicketlabError(f"variant {name!r} fails on an input of shape {tuple(x.shape)} "
                             f"({type(error).__name__}: {first}); time it on inputs it takes") from None
    finally:
        for handle in handles:
            handle.remove()
    return largest[0]


def _available_bytes(device: torch.device) -> int | None:
    """Memory the timings may still take: the GPU's free memory, or the host's MemAvailable (Linux)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_memory(models: Mapping[str, nn.Module], x: torch.Tensor, batch_sizes: Sequence[int]) -> None:
    """Refuse batch sizes whose activations cannot fit, before any is timed: past the host's memory a
    CPU run swaps or is killed without a word, long after the smaller batches were measured."""
    per_example = max(_largest_activation(name, m, x) for name, m in models.items()) // x.shape[0]
    available = _available_bytes(x.device)
    if available is None:
        return
    needed = {b: _HEADROOM * b * per_example for b in batch_sizes}
    too_large = [b for b, n in needed.items() if n > available]
    if too_large:
        fits = max(1, available // (_HEADROOM * per_example))
        raise TicketlabError(
            f"batch size {too_large[0]} needs about {needed[too_large[0]] / 2**30:.1f} GiB of activations on "
            f"{x.device.type}, and {available / 2**30:.1f} GiB is available; give --batch-sizes of at most {fits}")


def _placed(model: nn.Module, device: torch.device, layout: torch.memory_format) -> nn.Module:
    """The model in eval mode on `device` in `layout`, moved only when it is not there already: a
    network with 2:4 semi-structured weights is built in place and cannot be moved again."""
    def placed(t: torch.Tensor) -> bool:
        on_device = t.device.type == device.type and device.index in (None, t.device.index)
        return on_device and (t.dim() != 4 or t.is_contiguous(memory_format=layout))

    if all(placed(t) for t in (*model.parameters(), *model.buffers())):
        return model.eval()
    return model.to(device, memory_format=layout).eval()


def measure(
    variants: Mapping[str, nn.Module],
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 64, 256),
    *,
    device: str | torch.device = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    min_seconds: float = 0.05,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
    cuda_graph: bool = False,
    compiled: bool = False,
    progress: bool = False,
) -> list[Timing]:
    """Median forward latency of each variant (eval mode, no autograd) at each batch size.

    Each repetition times every variant once, in turn; a repetition runs enough forward calls to
    last about `min_seconds`, so sub-millisecond batch-1 timings are not timer noise. The first
    variant is the reference of the ratios. The variants are moved (and, for image inputs with
    `channels_last`, re-laid out) in place; a variant whose class sets `channels_last = False` (a forward
    that calls .view() on feature maps) has every variant timed in the plain layout.

    `cuda_graph` times each forward replayed from a captured CUDA graph, as a deployment would run it:
    small networks on a large GPU are bound by kernel launches, which a graph removes, so their time
    then follows the work their kernels do.

    `compiled` times each variant compiled by `torch.compile` with frozen weights (module docstring);
    each batch size is compiled once, before its warm-up, and compiling is not timed.

    `progress`: a bar on stderr, one step per variant's warm-up and per timed repetition, with its ETA.
    """
    if not variants:
        raise TicketlabError("nothing to measure: give at least one model variant")
    if repeats < 1 or warmup < 0:
        raise TicketlabError(f"--repeats must be at least 1 and warm-up at least 0, got {repeats} and {warmup}")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise TicketlabError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    batch_sizes = list(dict.fromkeys(batch_sizes))  # each timed once
    dev = torch.device(device)
    if cuda_graph and dev.type != "cuda":
        raise TicketlabError(f"CUDA graphs need a CUDA device, got {dev}; "
                             "drop the CUDA-graph option or use --device cuda")
    if cuda_graph and compiled:
        raise TicketlabError("time with CUDA graphs or compiled, not both (as in training); "
                             "drop one of the two options")
    # a model that opts out of channels-last (as training honours) sets the layout of the whole comparison
    channels_last = channels_last and all(getattr(m, "channels_last", True) for m in variants.values())
    layout = torch.channels_last if channels_last and len(input_shape) == 3 else torch.contiguous_format
    for name, model in variants.items():
        wrong = {str(p.dtype) for p in model.parameters() if p.dtype.is_floating_point and p.dtype != dtype}
        if wrong:
            raise TicketlabError(f"variant {name!r} holds {', '.join(sorted(wrong))} weights and is timed on {dtype} "
                                 f"inputs; cast the variants first (model.to({dtype}))")
    models = {name: _placed(m, dev, layout) for name, m in variants.items()}
    generator = torch.Generator().manual_seed(0)
    timings: list[Timing] = []
    compiling = _compiling() if compiled else contextlib.nullcontext()
    bar = tqdm(total=len(batch_sizes) * len(models) * (1 + repeats), desc="timing", unit="run", leave=False,
               disable=not progress, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
    with torch.inference_mode(), compiling, bar:
        one = torch.zeros(1, *input_shape).to(dev, dtype, memory_format=layout)
        _check_memory(models, one, batch_sizes)
        for batch in batch_sizes:
            x = torch.randn(batch, *input_shape, generator=generator).to(dev, dtype, memory_format=layout)
            calls = {}
            forwards: dict[str, Callable[[torch.Tensor], Any]] = dict(models)
            for name, model in models.items():
                if compiled:
                    forwards[name] = _compiled(name, model, x)
                warm = [_time_once(forwards[name], x, 1) for _ in range(warmup)]
                if cuda_graph:
                    forwards[name], warm = _graphed(name, model, x), []
                # the fastest single call sizes the repetitions: one call the host preempted would shrink them all
                once = min([*warm, _time_once(forwards[name], x, 1)])
                calls[name] = max(1, int(min_seconds / max(once, 1e-9)))
                bar.update()
            seconds: dict[str, list[float]] = {name: [] for name in models}
            for _ in range(repeats):
                for name, forward in forwards.items():
                    seconds[name].append(_time_once(forward, x, calls[name]))
                    bar.update()
            medians = {name: statistics.median(s) for name, s in seconds.items()}
            reference = next(iter(medians.values()))
            for name, median in medians.items():
                timings.append(Timing(name, batch, 1000 * median, batch / median, reference / median, repeats))
    return timings


def speedup(timings: Sequence[Timing], variant: str, batch_size: int) -> float:
    """The throughput ratio of `variant` to the reference at `batch_size`."""
    for t in timings:
        if t.variant == variant and t.batch_size == batch_size:
            return t.ratio
    raise TicketlabError(f"no timing of {variant!r} at batch size {batch_size}")
