"""CPU training-speed benchmarks for the foundation (see BENCHMARKS.md for figures).

  python benchmarks/cpu_train.py --data-dir ../shared/data [--steps 30] [--repeats 5]

1. throughput: ticketlab's Trainer against a plain hand-written PyTorch loop doing the same
   work (same model and initial weights, batch, threads, optimiser, per-batch gather and
   normalisation, no augmentation in either), as a steps/s ratio: once against the loop as users
   usually write it (default NCHW layout) and once against the loop in the channels-last layout
   the Trainer uses (the Trainer's own overhead);
2. masked: the Trainer with 80%-sparse masks (MaskHook) against the dense Trainer, as a
   step-time ratio;
3. records: the Trainer keeping per-example records (ExampleRecords, PrAC's input) against the
   plain Trainer, as a step-time ratio.
Variants alternate within each repetition so machine noise hits both alike; figures are medians.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from common import interleaved, machine, sgd_steps, training_slice

from ticketlab.data.augment import Augment
from ticketlab.data.batches import DeviceData, stream_seed
from ticketlab.models import build_model
from ticketlab.sparsity import prunable_parameters
from ticketlab.train import ExampleRecords, MaskHook, Trainer


def trainer_seconds(model, x, y, mean, std, cfg, hooks=()) -> float:
    data = DeviceData(x, y, mean, std, "cpu", Augment())
    trainer = Trainer(model, data, cfg, hooks=hooks, progress=False)
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start


def hand_loop_seconds(model, x, y, mean, std, cfg, channels_last=False) -> float:
    """What a user writes by hand: shuffle, gather, normalise, forward, backward, step; with
    `channels_last`, in the memory layout the Trainer uses (the like-for-like overhead figure)."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    model.train()
    start = time.perf_counter()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(stream_seed("data", cfg.seed, 0)))
    for i in range(0, len(y), cfg.batch_size):
        idx = order[i : i + cfg.batch_size]
        xb = (x[idx].float() / 255 - m) / s
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def random_masks(model, density: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {n: (torch.rand(p.shape, generator=g) < density).float() for n, p in prunable_parameters(model).items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--model", default="cifar_resnet_20")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/cpu_train.json")
    args = ap.parse_args()

    ds, x, y = training_slice(args.data_dir, args.batch_size, args.steps)
    n = len(y)
    cfg = sgd_steps(args.batch_size)
    torch.manual_seed(0)
    init = build_model(args.model, num_classes=10)
    masks = random_masks(init, 0.2)

    variants = {
        "hand": lambda: hand_loop_seconds(copy.deepcopy(init), x, y, ds.mean, ds.std, cfg),
        "hand_channels_last": lambda: hand_loop_seconds(copy.deepcopy(init), x, y, ds.mean, ds.std, cfg, True),
        "trainer": lambda: trainer_seconds(copy.deepcopy(init), x, y, ds.mean, ds.std, cfg),
        "trainer_masked": lambda: trainer_seconds(copy.deepcopy(init), x, y, ds.mean, ds.std, cfg, [MaskHook(masks)]),
        "trainer_records": lambda: trainer_seconds(copy.deepcopy(init), x, y, ds.mean, ds.std, cfg,
                                                   [ExampleRecords(n, 10, 1)]),
    }
    med, times = interleaved(variants, args.repeats)
    result = {
        "date": date.today().isoformat(), "machine": machine(),
        "model": args.model, "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
        "median_seconds": med, "all_seconds": times,
        "steps_per_second": {k: args.steps / v for k, v in med.items()},
        "throughput_ratio_trainer_over_hand": med["hand"] / med["trainer"],
        "throughput_ratio_trainer_over_hand_channels_last": med["hand_channels_last"] / med["trainer"],
        "step_time_ratio_masked_over_dense": med["trainer_masked"] / med["trainer"],
        "step_time_ratio_records_over_dense": med["trainer_records"] / med["trainer"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("steps_per_second", "throughput_ratio_trainer_over_hand",
                                             "throughput_ratio_trainer_over_hand_channels_last",
                                             "step_time_ratio_masked_over_dense",
                                             "step_time_ratio_records_over_dense")}, indent=2))


if __name__ == "__main__":
    main()
