"""How a CPU convolution's time depends on its output width (why `--refill-multiple` exists).

  python benchmarks/conv_widths.py [--in-channels 64] [--size 32] [--widths 32-64] [--batch 64] [--rounds 3]

Times one 3x3 Conv2d (channels-last, fp32, eval, no autograd: how `ticketlab bench` runs a compacted
ticket) for every output width in the range, all widths in turns within each repetition
(`speed.measure`), and prints each width's time against the widest one's next to the ratio of their
FLOPs. Each round is a full `measure`; the figures are medians over rounds. Vector units that hold
16 fp32 values (AVX-512) fill only whole groups of 16 output channels, so widths just above a
multiple of 16 cost about as much as the next multiple.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import date
from pathlib import Path

import torch
from common import machine
from torch import nn

from ticketlab.speed import measure


def widths(text: str) -> list[int]:
    low, _, high = text.partition("-")
    return list(range(int(low), int(high or low) + 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--in-channels", type=int, default=64)
    ap.add_argument("--size", type=int, default=32, help="input height and width")
    ap.add_argument("--widths", default="32-64", help="output widths, LOW-HIGH")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/conv_widths.json")
    args = ap.parse_args()
    outs = widths(args.widths)
    torch.manual_seed(0)
    widest = max(outs)
    convs = {str(w): nn.Conv2d(args.in_channels, w, 3, padding=1, bias=False) for w in [widest, *outs]}
    shape = (args.in_channels, args.size, args.size)
    ms: dict[str, list[float]] = {name: [] for name in convs}
    for _ in range(args.rounds):
        for t in measure(convs, shape, (args.batch,), repeats=args.repeats):
            ms[t.variant].append(t.latency_ms)
    rows = []
    reference = statistics.median(ms[str(widest)])
    for w in outs:
        median = statistics.median(ms[str(w)])
        rows.append({"width": w, "ms": round(median, 3), "time_ratio": round(median / reference, 3),
                     "flops_ratio": round(w / widest, 3), "rounds_ms": [round(v, 3) for v in ms[str(w)]]})
        print(f"{args.in_channels:4d} -> {w:4d}: {median:7.2f} ms  time {median / reference:5.2f}  "
              f"FLOPs {w / widest:5.2f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "date": str(date.today()), "in_channels": args.in_channels,
                               "size": args.size, "batch": args.batch, "repeats": args.repeats,
                               "rounds": args.rounds, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
