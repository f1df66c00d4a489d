"""What a compacted ticket computes against how fast it runs (see BENCHMARKS.md for figures).

  python benchmarks/compact_flops.py TICKET [TICKET ...] [--multiples 1,8,16] [--repeats 7] [--rounds 2]

For each ticket file (`seed_0/level_<L>/ticket.safetensors` of a channel study) it compacts the
network with widths exact and padded with silent channels to each multiple (training pads to 8:
`ticketlab.compact.training.TRAIN_MULTIPLE`), checks every padded network computes the exact one's
function, counts forward FLOPs per image, and times all variants against the dense network at
batch 64 on the CPU, in turns within each repetition. Each round is a full `speed.measure`; the
figure is the median over rounds. The ideal speed-up is dense FLOPs / compacted FLOPs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import date
from pathlib import Path

import torch
from common import machine

from ticketlab.compact import compact
from ticketlab.speed import forward_flops, measure, speedup
from ticketlab.tickets.ticketfile import load_ticket

BATCH = 64


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tickets", nargs="+")
    ap.add_argument("--multiples", default="1,8,16")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/compact_flops.json")
    args = ap.parse_args()
    multiples = [int(m) for m in args.multiples.split(",")]
    rows = []
    for path in args.tickets:
        ticket = load_ticket(path)
        variants = {"dense": ticket.model.eval()}
        variants.update({f"x{m}": compact(ticket.model, ticket.masks, m).eval() for m in multiples})
        x = torch.randn(4, *ticket.input_shape)
        with torch.no_grad():
            exact = variants[f"x{multiples[0]}"](x)
            for name, model in variants.items():
                if name != "dense":
                    assert (model(x) - exact).abs().max() <= 1e-4, f"{name} computes another function"
        flops = {name: forward_flops(model, ticket.input_shape) for name, model in variants.items()}
        ratios: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            timings = measure(variants, ticket.input_shape, (BATCH,), repeats=args.repeats)
            for name in variants:
                ratios[name].append(speedup(timings, name, BATCH))
        row = {"ticket": path, "model": ticket.info["model"], "density": ticket.info.get("density"),
               "flops": flops, "speedup": {n: round(statistics.median(r), 3) for n, r in ratios.items()},
               "speedup_rounds": {n: [round(v, 3) for v in r] for n, r in ratios.items()}}
        rows.append(row)
        parts = [f"{n} {flops[n] / 1e6:.1f} MFLOPs (ideal {flops['dense'] / flops[n]:.2f}x) "
                 f"measured {row['speedup'][n]:.2f}x" for n in variants if n != "dense"]
        print(f"{row['model']} at {100 * row['density']:.1f}%: dense {flops['dense'] / 1e6:.1f} MFLOPs; "
              + ", ".join(parts), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "date": str(date.today()), "batch": BATCH,
                               "repeats": args.repeats, "rounds": args.rounds, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
