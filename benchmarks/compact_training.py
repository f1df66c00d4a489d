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
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from ticketlab.compact import channel_groups, complete_channel_masks, tied_layers
from ticketlab.compact.training import compacted_for_training
from ticketlab.config import TrainConfig
from ticketlab.data import load_dataset
from ticketlab.data.augment import Augment
from ticketlab.data.batches import DeviceData
from ticketlab.models import build_model
from ticketlab.sparsity import density_report, magnitude, prune_fraction, refill, select_prunable
from ticketlab.train import MaskHook, Trainer


def seconds(model, masks, x, y, mean, std, cfg, device) -> float:
    data = DeviceData(x, y, mean, std, device, Augment(crop_padding=4, flip=True))
    trainer = Trainer(model, data, cfg, hooks=[MaskHook(masks)] if masks else [], progress=False)
    start = time.perf_counter()
    trainer.fit()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


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

    ds = load_dataset("cifar10", data_dir=args.data_dir)
    n = args.batch_size * args.steps
    x, y = ds.train_x[:n].contiguous(), ds.train_y[:n].contiguous()
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.05, schedule="constant", momentum=0.9,
                      nesterov=True, weight_decay=5e-4)
    multiples = [int(m) for m in args.multiples.split(",")]
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(name, num_classes=10)
        names = list(select_prunable(model))
        weights = {n: torch.ones_like(p, dtype=torch.bool) for n, p in select_prunable(model).items()}
        for level in range(1, args.levels + 1):
            params = dict(model.named_parameters())
            weights = prune_fraction(magnitude({n: params[n].detach() for n in names}), weights, args.fraction)
            weights = refill(weights, tied=tied_layers(model), keep={names[-1]})
            masks = complete_channel_masks(model, weights)
            plans = {m: compacted_for_training(model, masks, m) for m in multiples}
            variants = {"masked": lambda: seconds(copy.deepcopy(model), masks, x, y, ds.mean, ds.std, cfg,
                                                       args.device)}
            for m, plan in plans.items():
                variants[f"compacted_x{m}"] = (lambda plan=plan: seconds(copy.deepcopy(plan.small), plan.masks,
                                                                          x, y, ds.mean, ds.std, cfg, args.device))
            for run in variants.values():  # warm-up: oneDNN picks its kernels per shape
                run()
            times: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(args.repeats):
                for key, run in variants.items():
                    times[key].append(run())
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {"model": name, "level": level, "density": round(density_report(weights)["total"]["density"], 4),
                   "widths": {"full": widths(model), **{f"x{m}": widths(p.small) for m, p in plans.items()}},
                   "median_seconds": med, "all_seconds": times,
                   "speedup_over_masked": {k: med["masked"] / v for k, v in med.items() if k != "masked"}}
            rows.append(row)
            print(f"{name} level {level} density {row['density']:.3f}: masked {med['masked']:.2f}s, "
                  + ", ".join(f"{k} {med[k]:.2f}s ({s:.2f}x)" for k, s in row["speedup_over_masked"].items()),
                  flush=True)
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
    result = {"date": date.today().isoformat(), "device": args.device, "gpu": gpu,
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                         f"torch {torch.__version__}",
              "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
