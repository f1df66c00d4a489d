"""Speed of channel tickets after physical compaction, against the dense network.

  python benchmarks/structured_speed.py [--models cifar_resnet_20,cifar_vgg_16] [--levels 6] [--repeats 7]
      [--fraction 0.2] [--scope global|layerwise]
      [--batch-sizes 1,64,256] [--device cpu|cuda] [--layout channels-last|nchw] [--cuda-graph | --compile]
      [--multiples 1,8] [--precision fp32|bf16|fp16]

`--models` also takes the networks of benchmarks/user_nets.py (user_mobilenet_v2), which no
registered plan describes: their channel groups come from their torch.fx graphs.

Speed depends on which channels survive, not on how well the weights are trained, so this runs
the structure step of `ticketlab find --structure channel` (global magnitude IMP step of 20%,
refill with the residual streams tied, BN entries of removed channels masked) for a number of
levels on the seeded initial weights, compacts each level's ticket, checks the compacted network
computes the masked one's function, and times dense, masked (torch.nn.utils.prune) and compacted
forward passes side by side (ticketlab.speed.measure: interleaved repetitions, medians).
Accuracy at each density needs trained tickets: see the `ticketlab find --structure channel`
figures in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
from datetime import date
from pathlib import Path

import torch
from common import channel_tickets, machine
from user_nets import USER_MODELS

from ticketlab.compact import compact
from ticketlab.models import build_model
from ticketlab.sparsity import apply_masks, density_report
from ticketlab.speed import PRECISION_DTYPES, masked_module, measure


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="cifar_resnet_20,cifar_vgg_16")
    ap.add_argument("--levels", type=int, default=6)
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--scope", choices=("global", "layerwise"), default="global",
                    help="the magnitude step's scope, as `find --scope` (layerwise: every layer keeps the same share)")
    ap.add_argument("--batch-sizes", default="1,64,256")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the GPU target is batch 256)")
    ap.add_argument("--layout", choices=("channels-last", "nchw"), default="channels-last",
                    help="memory layout of every variant (as `ticketlab bench --layout`)")
    ap.add_argument("--cuda-graph", action="store_true", help="time forwards replayed from CUDA graphs (GPU)")
    ap.add_argument("--compile", action="store_true",
                    help="time every variant compiled by torch.compile with frozen weights (as `ticketlab bench`)")
    ap.add_argument("--multiples", default="1", help="compacted widths padded to each multiple (1: exact)")
    ap.add_argument("--precision", choices=tuple(PRECISION_DTYPES), default="fp32",
                    help="every variant's weights and inputs in this dtype (as `ticketlab bench --precision`)")
    ap.add_argument("--out", default="benchmarks/results/structured_speed.json")
    args = ap.parse_args()
    batches = tuple(int(b) for b in args.batch_sizes.split(","))
    multiples = [int(m) for m in args.multiples.split(",")]
    dtype = PRECISION_DTYPES[args.precision]
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = (USER_MODELS[name](num_classes=10) if name in USER_MODELS else
                 build_model(name, num_classes=10, in_channels=3, image_size=32))
        with torch.no_grad():  # BatchNorm statistics of real activations, so the equivalence check sees signal
            for _ in range(3):
                model(torch.randn(64, 3, 32, 32))
        model.eval()
        for level, weights, masks in channel_tickets(model, args.levels, args.fraction, args.scope):
            ticket = copy.deepcopy(model)
            with torch.no_grad():
                apply_masks(ticket, masks)
            smalls = {("compacted" if m == 1 else f"compacted_x{m}"): compact(ticket, masks, m).eval()
                      for m in multiples}
            small = next(iter(smalls.values()))
            x = torch.randn(8, 3, 32, 32)
            with torch.no_grad():  # on the CPU, before timing moves them
                err = max(float((s(x) - ticket(x)).abs().max()) for s in smalls.values())
            timed = {"dense": ticket, "masked": masked_module(ticket, masks), **smalls}
            timings = measure({name: m.to(dtype) for name, m in timed.items()},
                              (3, 32, 32), batches, device=args.device, repeats=args.repeats, dtype=dtype,
                              channels_last=args.layout == "channels-last", cuda_graph=args.cuda_graph,
                              compiled=args.compile)
            density = density_report(weights)["total"]["density"]
            row = {"model": name, "level": level, "density": density,
                   "parameters": sum(p.numel() for p in ticket.parameters()),
                   "compacted_parameters": sum(p.numel() for p in small.parameters()), "max_abs_diff": err,
                   "timings": [t.as_dict() for t in timings]}
            rows.append(row)
            ratios = {(t.variant, t.batch_size): t.ratio for t in timings}
            print(f"{name} level {level} density {density:.3f}: params {row['compacted_parameters']:,}/"
                  f"{row['parameters']:,}, max|diff| {err:.1e}, compacted/dense " +
                  ", ".join(f"{v} b{b} {ratios[(v, b)]:.2f}x" for v in smalls for b in batches) +
                  f", masked/dense b64 {ratios.get(('masked', 64), float('nan')):.2f}x", flush=True)
    result = {"date": date.today().isoformat(), "device": args.device, "layout": args.layout, "scope": args.scope,
              "precision": args.precision,
              "cuda_graph": args.cuda_graph, "compiled": args.compile,
              "machine": machine(args.device), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
