"""Several networks in one batched step (StackedModels) against training them one after another.

  python benchmarks/stacked_speed.py --data-dir ../shared/data [--model lenet_300_100 --dataset mnist]
      [--count 4] [--steps 40] [--repeats 5] [--device cpu|cuda]

Both sides use the one Trainer on the same data, batch and recipe: K trainers run S steps each, or
one trainer runs S steps of the K stacked networks. Sides alternate within each repetition so
machine noise hits both alike; the figure is the median time ratio (one by one / stacked).
"""

from __future__ import annotations

import argparse
import json
from datetime import date

import torch
from common import interleaved, machine, seconds

from ticketlab.config import TrainConfig
from ticketlab.data import load_dataset
from ticketlab.data.augment import Augment
from ticketlab.data.batches import DeviceData
from ticketlab.models import build_model
from ticketlab.train import StackedModels, Trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--model", default="lenet_300_100")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    ds = load_dataset(args.dataset, data_dir=args.data_dir)
    n = args.batch_size * args.steps
    data = DeviceData(ds.train_x[:n], ds.train_y[:n], ds.mean, ds.std, args.device, Augment())
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.05, schedule="constant")

    def nets():
        torch.manual_seed(0)
        shape = dict(num_classes=ds.num_classes, in_channels=ds.in_channels, image_size=ds.image_size)
        return [build_model(args.model, **shape) for _ in range(args.count)]

    def train(model) -> float:
        return seconds(Trainer(model, data, cfg, progress=False).fit, args.device)

    sides = {
        "one_by_one": lambda: sum(train(net) for net in nets()),
        "stacked": lambda: train(StackedModels(nets())),
    }
    med, _ = interleaved(sides, args.repeats)
    print(json.dumps({
        "date": date.today().isoformat(), "device": args.device,
        "machine": machine(args.device),
        "model": args.model, "count": args.count, "batch_size": args.batch_size, "steps": args.steps,
        "median_seconds": med, "speedup_stacked": med["one_by_one"] / med["stacked"],
    }))


if __name__ == "__main__":
    main()
