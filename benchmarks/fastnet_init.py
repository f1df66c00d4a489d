"""Seconds to build fastnet and fit its whitening from 5,000 images, as each timed run does.

  python benchmarks/fastnet_init.py [--repeats 5] [--device cpu]

On CIFAR-shaped random images (the fit's cost does not depend on what they show); one untimed call,
then the median of the repetitions, printed as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from fastnet_variants import random_cifar

from ticketlab.config import DataConfig, ModelConfig, RunConfig
from ticketlab.train import recipe_config
from ticketlab.train.run import initial_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    ds = random_cifar()
    config = RunConfig(data=DataConfig(dataset="cifar10"), model=ModelConfig("fastnet"),
                       train=recipe_config("fastnet"), device=args.device)

    def once() -> float:
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        initial_model(config, ds)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once()
    times = [once() for _ in range(args.repeats)]
    print(json.dumps({"device": args.device, "median_seconds": round(statistics.median(times), 4),
                      "seconds": [round(t, 4) for t in times]}))


if __name__ == "__main__":
    main()
