"""Training step time of channel tickets: masked at full size against physically compacted.

  python benchmarks/compact_training.py --data-dir ../shared/data [--models cifar_resnet_20,cifar_vgg_16]
      [--levels 4] [--fraction 0.3] [--multiples 1,8,16] [--steps 15] [--repeats 3] [--device cpu|cuda]

Per level of the structure step `ticketlab find --structure channel` takes (global magnitude IMP
step on the seeded weights, refill with the residual streams tied, masks completed), the
Trainer trains the same ticket for `--steps` CIFAR-10 steps (crop + flip, as the study trains):
  * masked: the full-size network under MaskHook (`find --no-compact-training`);
  * compacted xM: `compacted_for_training(model, masks, M)`, widths padded with silent channels
    to a multiple of M (M = 1: exact widths; `find` uses 8).
Variants alternate within each repetition; figures are medians of the repetitions' seconds.
"""

from __future__ import annotations

import argparse
import copy
import json
from datetime import date
from pathlib import Path

import torch
from common import channel_tickets, interleaved, machine, seconds, sgd_steps, training_slice

from ticketlab.compact import channel_groups
from ticketlab.compact.training import compacted_for_training
from ticketlab.data.augment import Augment
from ticketlab.data.batches import DeviceData
from ticketlab.models import build_model
from ticketlab.sparsity import density_report
from ticketlab.train import MaskHook, Trainer


def widths(model) -> list[int]:
    return [g.channels for g in channel_groups(model)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--models", default="cifar_resnet_20,cifar_vgg_16")
    ap.add_argument("--levels", type=int, default=4)
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--multiples", default="1,8,16")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--out", default="benchmarks/results/compact_training.json")
    args = ap.parse_args()

    ds, x, y = training_slice(args.data_dir, args.batch_size, args.steps)
    data = DeviceData(x, y, ds.mean, ds.std, args.device, Augment(crop_padding=4, flip=True))
    cfg = sgd_steps(args.batch_size)
    multiples = [int(m) for m in args.multiples.split(",")]

    def train(net, masks) -> float:
        trainer = Trainer(copy.deepcopy(net), data, cfg, hooks=[MaskHook(masks)] if masks else [], progress=False)
        return seconds(trainer.fit, args.device)

    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(name, num_classes=10)
        for level, weights, masks in channel_tickets(model, args.levels, args.fraction):
            plans = {m: compacted_for_training(model, masks, m) for m in multiples}
            variants = {"masked": lambda: train(model, masks)}
            for m, plan in plans.items():
                variants[f"compacted_x{m}"] = lambda plan=plan: train(plan.small, plan.masks)
            med, times = interleaved(variants, args.repeats, label=f"{name} level {level} ")
            row = {"model": name, "level": level, "density": round(density_report(weights)["total"]["density"], 4),
                   "widths": {"full": widths(model), **{f"x{m}": widths(p.small) for m, p in plans.items()}},
                   "median_seconds": med, "all_seconds": times,
                   "speedup_over_masked": {k: med["masked"] / v for k, v in med.items() if k != "masked"}}
            rows.append(row)
            print(f"{name} level {level} density {row['density']:.3f}: masked {med['masked']:.2f}s, "
                  + ", ".join(f"{k} {med[k]:.2f}s ({s:.2f}x)" for k, s in row["speedup_over_masked"].items()),
                  flush=True)
    result = {"date": date.today().isoformat(), "device": args.device, "machine": machine(args.device),
              "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
