"""`ticketlab bench` and `ticketlab export`: what a ticket is worth at run time, and shipping it."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from ticketlab.cli.table import print_json, table
from ticketlab.config import PRECISIONS
from ticketlab.errors import TicketlabError


def _variants(ticket, multiple: int = 1) -> tuple[dict, dict]:
    """dense, masked (torch.nn.utils.prune) and, where the masks allow it, compacted (widths padded to
    `multiple`)."""
    from ticketlab.compact import compact, compaction_report
    from ticketlab.speed import masked_module

    variants = {"dense": ticket.model, "masked": masked_module(ticket.model, ticket.masks)}
    notes: dict = {}
    try:
        small = compact(ticket.model, ticket.masks, multiple)
        variants["compacted"] = small
        notes["compaction"] = compaction_report(ticket.model, small)
    except TicketlabError as error:
        notes["compacted"] = f"not compacted: {error}"
    return variants, notes


def _two_four(variants: dict, masks: dict, device) -> dict:
    """2:4 tickets on a GPU that has the kernels: the semi-structured network against the same dense
    network in fp16 (the kernels' dtype), so the ratio compares like with like. Elsewhere: why not."""
    import copy
    import warnings

    import torch

    from ticketlab.sparsity.semistructured import is_two_four, semi_structured_support, to_semi_structured

    linear = {n: m for n, m in masks.items() if m.dim() == 2 and is_two_four(m)}
    if not linear:
        return {"semi_structured": "no Linear layer of this ticket has a 2:4 mask, so nothing was run sparse; "
                                   "find a ticket with --structure nm for that"}
    ok, reason = semi_structured_support(device)
    if not ok:
        return {"semi_structured": f"2:4 Linear layers not run sparse: {reason}"}
    dense = copy.deepcopy(variants["dense"]).to(device, torch.float16)
    sparse = copy.deepcopy(dense)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = to_semi_structured(sparse, linear)
    variants.clear()
    variants.update({"dense_fp16": dense, "2:4_fp16": sparse})
    return {"semi_structured": f"converted {len(converted)} Linear layer(s): {', '.join(converted) or 'none'}"
            + "".join(f"; {w.message}" for w in caught)}


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    threads = torch.get_num_threads()
    try:
        return _bench(args)
    finally:  # `main` may run inside a caller's process (a notebook, the tests): its thread count is theirs
        torch.set_num_threads(threads)


def _bench(args: argparse.Namespace) -> int:
    import torch

    from ticketlab.speed import PRECISION_DTYPES, forward_flops, measure
    from ticketlab.tickets.ticketfile import load_ticket
    from ticketlab.train.run import resolve_device

    device = resolve_device(args.device)
    if args.two_four and args.precision != "fp32":
        raise TicketlabError("--two-four times dense and 2:4 in fp16 already (the kernels' dtype); drop --precision")
    if args.threads:
        torch.set_num_threads(args.threads)
    # exact widths are fastest on CPUs; cuDNN's tensor-core kernels want multiples of 8 (BENCHMARKS.md)
    multiple = args.multiple or (8 if device.type == "cuda" else 1)
    ticket = load_ticket(args.model_file)
    shape = ticket.input_shape
    variants, notes = _variants(ticket, multiple)
    flops = {name: forward_flops(m, shape) for name, m in variants.items()}  # before --two-four swaps them
    dtype = PRECISION_DTYPES[args.precision]
    if args.two_four:
        notes.update(_two_four(variants, ticket.masks, device))
    if "compacted" in variants:  # not where --two-four replaced the variants
        notes["multiple"] = multiple
    elif args.multiple:
        raise TicketlabError(f"--multiple pads a compacted network's widths, and {args.model_file} times no compacted "
                             "network (no channel ticket, or --two-four); drop --multiple")
    if "dense_fp16" in variants:  # the 2:4 kernels' dtype
        dtype = torch.float16
    else:
        for model in variants.values():
            model.to(dtype)
    timings = measure(variants, shape, args.batch_sizes, device=device, warmup=args.warmup, repeats=args.repeats,
                      dtype=dtype, channels_last=args.layout == "channels-last",
                      cuda_graph=args.cuda_graph, compiled=args.compile, progress=not args.quiet)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in variants.items()}
    graphs = " (CUDA graphs)" if args.cuda_graph else ""
    graphs += ", compiled by torch.compile with frozen weights" if args.compile else ""
    widths = f", compacted widths padded to multiples of {multiple}" if multiple > 1 and "compacted" in variants else ""
    precision = str(dtype).removeprefix("torch.")
    print(f"{args.model_file}: median of {args.repeats} timed repetitions after {args.warmup} warm-up passes, "
          f"{device.type}{graphs}, {precision}, {torch.get_num_threads()} threads, {args.layout} layout{widths}; "
          "ratios are throughput / dense")
    print(table(("variant", "batch", "latency (ms)", "images/s", "vs dense", "parameters", "MFLOPs/image"),
                [(t.variant, t.batch_size, f"{t.latency_ms:.3f}", f"{t.throughput:.1f}", f"{t.ratio:.2f}x",
                  params[t.variant], f"{flops[t.variant] / 1e6:.2f}" if t.variant in flops else "n/a")
                 for t in timings]))
    for key in ("compacted", "semi_structured"):
        if isinstance(notes.get(key), str):
            print(notes[key])
    if args.json:
        print_json(args, {"model_file": args.model_file, "device": device.type, "threads": torch.get_num_threads(),
                          "layout": args.layout, "cuda_graph": args.cuda_graph, "compiled": args.compile,
                          "precision": precision,
                          "timings": [t.as_dict() for t in timings], "parameters": params, "flops": flops, **notes})
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ticketlab.compact import compact, compaction_report, export_onnx, save_model
    from ticketlab.store.files import writable
    from ticketlab.tickets.ticketfile import load_ticket

    out = Path(args.out)
    # checked before the ticket is loaded and compacted, so a wrong --out costs nothing
    if out.suffix not in (".safetensors", ".onnx"):
        raise TicketlabError(f"--out {out} names no format ticketlab writes; end it in .safetensors (loads with "
                             "ticketlab.compact.load_model) or .onnx")
    writable(out, out.suffix, "--out")
    if out.resolve() == Path(args.model_file).resolve():
        raise TicketlabError(f"--out {out} is the ticket file itself, which export would overwrite; "
                             "give another path")
    ticket = load_ticket(args.model_file)
    try:
        model = ticket.model if args.no_compact else compact(ticket.model, ticket.masks)
    except TicketlabError as error:
        raise TicketlabError(f"{error}; or export the dense network with its masks applied: --no-compact") from None
    # before anything is written: a failure must not leave a file behind an exit code of 2. Uncompacted, the
    # network has no channel plan to report (a user's network may have none at all)
    size = sum(p.numel() for p in ticket.model.parameters())
    report = {"parameters": {"before": size, "after": size}} if args.no_compact else compaction_report(ticket.model,
                                                                                                        model)
    batch_shape = (1, *ticket.input_shape)  # the exporters take the shape of a batch, not of one example
    if out.suffix == ".onnx":
        export_onnx(model, out, batch_shape)
    else:
        info = {k: v for k, v in ticket.info.items() if k != "architecture"}  # the file stores its own graph
        save_model(out, model, batch_shape, metadata={"ticket": info})
    print(f"wrote {out}: {report['parameters']['after']:,} parameters "
          f"(the ticket's dense architecture has {report['parameters']['before']:,})")
    if args.json:
        print_json(args, {"out": str(out), **report})
    return 0


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _zero_or_positive(zero_means: str, what: str) -> Callable[[str], int]:
    """An argparse type for counts where 0 picks a default (torch.set_num_threads, for one, takes positive
    counts only)."""
    def parse(text: str) -> int:
        if not text.strip().isdecimal():  # "-1" as well as "x"
            raise argparse.ArgumentTypeError(f"expected 0 ({zero_means}) or a positive {what}, got {text!r}")
        return int(text)

    return parse


def _threads(text: str) -> int:
    """0 or a positive count up to 4 threads per core: more only queues work (and tens of thousands crash the
    OpenMP runtime)."""
    count = _zero_or_positive("PyTorch's default", "number of threads")(text)
    most = 4 * (os.cpu_count() or 1)
    if count > most:
        raise argparse.ArgumentTypeError(f"expected at most {most} threads (4 per core of this machine), got {count}")
    return count


_multiple = _zero_or_positive("8 on CUDA, 1 on CPU", "width multiple")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency and throughput of a ticket: dense, masked and compacted, side by side")
    p.add_argument("--model-file", required=True, help="a ticket file (level_<L>/ticket.safetensors of a study)")
    p.add_argument("--batch-sizes", type=_ints, default=(1, 64, 256), help="comma list (default 1,64,256)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--repeats", type=int, default=10, help="timed repetitions; the median is reported")
    p.add_argument("--warmup", type=int, default=3, help="untimed forward passes first")
    p.add_argument("--threads", type=_threads, default=0, help="CPU threads (0: PyTorch's default)")
    p.add_argument("--layout", choices=("channels-last", "nchw"), default="channels-last",
                   help="memory layout of image models, the same for every variant (default channels-last, the "
                        "layout ticketlab trains in and the faster one; nchw is PyTorch's default)")
    p.add_argument("--two-four", action="store_true",
                   help="2:4 tickets: time the Linear layers as semi-structured sparse tensors (CUDA, compute "
                        "capability >= 8.0) against dense fp16; elsewhere, say why not")
    p.add_argument("--multiple", type=_multiple, default=0,
                   help="pad compacted widths with silent channels to a multiple of this (0: 8 on CUDA, where "
                        "tensor-core kernels want it, 1 on CPU, where exact widths are fastest)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="CUDA: time each forward replayed from a CUDA graph, as a deployment runs it; small networks "
                        "on a large GPU are otherwise bound by kernel launches, whatever their size")
    p.add_argument("--compile", action="store_true",
                   help="time each variant compiled by torch.compile with its weights frozen (BatchNorm folded, "
                        "kernels fused), as a deployment runs it; needs a C++ compiler on CPU, and compiling each "
                        "variant and batch size takes seconds (not timed)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="weights and inputs of every variant in this dtype (default fp32); a GPU deployment "
                        "serves in half precision, where tensor cores change what a narrower layer saves")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (the rest goes to stderr)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("export", help="save a ticket as a compacted model (safetensors + JSON graph, or .onnx)")
    p.add_argument("--model-file", required=True, help="a ticket file (level_<L>/ticket.safetensors of a study)")
    p.add_argument("--out", required=True,
                   help="output .safetensors (loads with ticketlab.compact.load_model) or .onnx")
    p.add_argument("--no-compact", action="store_true", help="export the dense-shaped masked network as it is")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)
