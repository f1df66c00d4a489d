"""Dynamic sparse training against static sparse training from the same masks, on real data.

Every arm starts from one random ERK mask per seed at `--density`: `static` trains it as it is,
`set` and `rigl` move it (train/dynamic.py), `granet` starts at `--granet-start` from its own ERK
mask and prunes down to `--density`; `dense` is the unpruned network. Same recipe, seeds and
epochs for all; the table gives test accuracy, mean ± sample std over the seeds.

    python benchmarks/dst_mnist.py --data-dir ../shared/data --density 0.02 --epochs 10 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace

from common import machine

import ticketlab
from ticketlab.config import ModelConfig, RunConfig
from ticketlab.data import load_dataset
from ticketlab.train import DynamicSparsity, initial_masks, recipe_config
from ticketlab.train.run import initial_model

ARMS = ("dense", "static", "set", "rigl", "granet")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--model", default="lenet_300_100")
    p.add_argument("--density", type=float, default=0.02)
    p.add_argument("--granet-start", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--store", help="run store (default: a temporary folder)")
    p.add_argument("--json", help="also write the per-seed results here")
    args = p.parse_args()
    ds = load_dataset(args.dataset, data_dir=args.data_dir, download=False)
    store = args.store or tempfile.mkdtemp(prefix="dst-bench-")
    train_cfg = recipe_config(args.model, epochs=args.epochs)
    results: dict[str, list[dict]] = {}
    for seed in range(args.seeds):
        config = RunConfig(model=ModelConfig.of(args.model), train=replace(train_cfg, seed=seed))
        masks = initial_masks(initial_model(config, ds), args.density, "erk", seed=seed)
        for arm in args.arms.split(","):
            options: dict = {}
            if arm == "static":
                options["masks"] = masks
            elif arm in ("set", "rigl"):
                options["hooks"] = [DynamicSparsity(arm, masks, seed=seed)]
            elif arm == "granet":
                start = initial_masks(initial_model(config, ds), args.granet_start, "erk", seed=seed)
                options["hooks"] = [DynamicSparsity("granet", start, final_density=args.density, seed=seed)]
            began = time.perf_counter()
            run = ticketlab.train(args.model, ds, store=store, epochs=args.epochs, seed=seed, progress=False,
                                  **options)
            results.setdefault(arm, []).append({"seed": seed, "test_accuracy": run.summary["test_accuracy"],
                                                "density": run.summary["density"], "run_id": run.run_id,
                                                "seconds": round(time.perf_counter() - began, 1)})
            print(f"{arm:7s} seed {seed}: {100 * run.summary['test_accuracy']:.2f}% at density "
                  f"{run.summary['density']:.4f}", flush=True)
    print(f"\n{args.model} on {args.dataset}, {args.epochs} epochs, density {args.density}, {args.seeds} seeds; "
          f"{machine()}\n")
    print("| arm | test accuracy (mean ± std) | per seed | density |")
    print("|---|---|---|---|")
    for arm, rows in results.items():
        accs = [100 * r["test_accuracy"] for r in rows]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {arm} | {statistics.mean(accs):.2f} ± {std:.2f} | {', '.join(f'{a:.2f}' for a in accs)} | "
              f"{statistics.mean(r['density'] for r in rows):.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "machine": machine(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
