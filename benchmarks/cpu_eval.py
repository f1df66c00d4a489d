"""Evaluation speed on the CPU: memory layout and batch size (see BENCHMARKS.md for figures).

  python benchmarks/cpu_eval.py --data-dir ../shared/data [--models cifar_resnet_20,fastnet]
      [--examples 5000] [--repeats 3]

Times `ticketlab.train.evaluate` on CIFAR-10 test images (seeded initial weights: speed does not
depend on training) in four settings: NCHW or channels-last, batches of 1000 (the GPU default) or
of `eval_batch_size(cpu)`. Settings alternate within each repetition; figures are medians, and
ratios are against NCHW at 1000, what ticketlab did before it chose both by device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from common import machine

from ticketlab.data import load_dataset
from ticketlab.models import build_model
from ticketlab.train.evaluate import eval_batch_size, evaluate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--models", default="cifar_resnet_20,fastnet")
    ap.add_argument("--examples", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/cpu_eval.json")
    args = ap.parse_args()
    ds = load_dataset("cifar10", data_dir=args.data_dir)
    x, y = ds.test_x[: args.examples], ds.test_y[: args.examples]
    mean, std = torch.tensor(ds.mean), torch.tensor(ds.std)
    small = eval_batch_size(torch.device("cpu"))
    settings = [(layout, batch) for layout in ("nchw", "channels_last") for batch in (1000, small)]
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        nchw = build_model(name, num_classes=10)
        last = build_model(name, num_classes=10)
        last.load_state_dict(nchw.state_dict())
        last.to(memory_format=torch.channels_last)
        models = {"nchw": nchw, "channels_last": last}
        seconds: dict[tuple[str, int], list[float]] = {s: [] for s in settings}
        accuracy = {}
        for layout, batch in settings:  # warm-up
            evaluate(models[layout], x[:1000], y[:1000], mean, std, batch_size=batch,
                     channels_last=layout == "channels_last")
        for _ in range(args.repeats):
            for layout, batch in settings:
                start = time.perf_counter()
                out = evaluate(models[layout], x, y, mean, std, batch_size=batch,
                               channels_last=layout == "channels_last")
                seconds[(layout, batch)].append(time.perf_counter() - start)
                accuracy[(layout, batch)] = out["accuracy"]
        reference = statistics.median(seconds[("nchw", 1000)])
        for (layout, batch), times in seconds.items():
            median = statistics.median(times)
            rows.append({"model": name, "layout": layout, "batch_size": batch, "median_seconds": median,
                         "images_per_second": len(y) / median, "speedup": reference / median,
                         "accuracy": accuracy[(layout, batch)], "all_seconds": times})
            print(f"{name:16s} {layout:13s} batch {batch:4d}: {median:6.2f} s, {len(y) / median:7.0f} images/s, "
                  f"{reference / median:.2f}x", flush=True)
    result = {"date": date.today().isoformat(), "examples": len(y), "repeats": args.repeats,
              "machine": machine(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
