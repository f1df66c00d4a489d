"""fastnet's recipe against airbench94 (`airbench` 0.1.8's `train94`) on CIFAR-10, same GPU, in turns.

  python benchmarks/fastnet_airbench.py --data-dir DIR [--runs 5] [--device cuda] [--precision bf16[,fp16]]
      [--loss-scale 1024] [--compile] [--cuda-graph [--graphs-only]] [--no-airbench] [--epochs E]
      [--model-arg widths=[64,256,256]]

Each side first trains once untimed (cuDNN autotuning, kernel caches; airbench's own `warmup94`
does the same), then the sides alternate run by run with seeds 0..R-1 (several precisions, e.g.
`--precision bf16,fp16 --loss-scale 1024`, are sides of their own, each against the same airbench
runs; `--cuda-graph` adds each one replayed from CUDA graphs as a side too). The timed part of a run is
what each recipe needs before it can be evaluated: building the network, the data-dependent
whitening, and training (airbench: `train94(verbose=False)`, which also builds its test loader;
ticketlab: `initial_model` + `Trainer.fit` without a test set). Accuracy is then measured outside
the timing with each side's flip + shift test-time augmentation. airbench reads CIFAR-10 from the
`train.pt`/`test.pt` cache this script writes from ticketlab's loader (the same official images),
so it downloads nothing. Prints one JSON line: per-side accuracies, times, and the ratio
ticketlab / airbench of the median times (goal <= 1.0 at >= 94.0% mean accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import torch

from ticketlab.cli.main import _model_arg
from ticketlab.config import DataConfig, ModelConfig, RunConfig
from ticketlab.data import load_dataset
from ticketlab.data.batches import DeviceData
from ticketlab.train import Trainer, recipe_config
from ticketlab.train.run import default_augment, initial_model


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def ticketlab_run(ds, data: DeviceData, config: RunConfig, device: str) -> tuple[float, float]:
    _sync(device)
    start = time.perf_counter()
    model = initial_model(config, ds)
    trainer = Trainer(model, data, config.train, progress=False)
    trainer.fit()
    _sync(device)
    seconds = time.perf_counter() - start
    return trainer.evaluate((ds.test_x, ds.test_y))["accuracy"], seconds


def write_airbench_cache(ds, folder: Path) -> None:
    """airbench's CifarLoader reads {train,test}.pt holding NHWC uint8 images, labels and class names."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        torch.save({"images": x.permute(0, 2, 3, 1).contiguous(), "labels": y.clone(), "classes": list(ds.classes)},
                   folder / f"{split}.pt")


def airbench_run(seed: int) -> tuple[float, float]:
    import airbench

    torch.manual_seed(seed)
    loader = airbench.CifarLoader("cifar10", train=True, batch_size=1024, aug={"flip": True, "translate": 2},
                                  altflip=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    model = airbench.train94(loader, verbose=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    test = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
    return airbench.evaluate(model, test, tta_level=2), seconds


def _precisions(text: str) -> list[str]:
    names = text.split(",")
    if not names or set(names) - {"fp32", "bf16", "fp16"} or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"expected distinct fp32, bf16 or fp16, comma-separated; got {text!r}")
    return names


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16", type=_precisions,
                    help="fp32, bf16 or fp16; several, comma-separated, are timed in turns as sides of their own")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="also time each precision with its steps' forward and backward replayed from CUDA graphs")
    ap.add_argument("--graphs-only", action="store_true",
                    help="with --cuda-graph: time only the sides replayed from CUDA graphs (no eager twins)")
    ap.add_argument("--loss-scale", type=float, default=0.0,
                    help="the fp16 side's fixed power-of-two loss scale (0: dynamic)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--model-arg", type=_model_arg, action="append", default=[])
    ap.add_argument("--no-airbench", action="store_true", help="time ticketlab only (no GPU or no airbench)")
    args = ap.parse_args()

    ds = load_dataset("cifar10", data_dir=args.data_dir)
    sides, results, configs = {}, {}, {}
    if args.graphs_only and not args.cuda_graph:
        ap.error("--graphs-only needs --cuda-graph")
    variants = [(p, False) for p in args.precision if not args.graphs_only]
    variants += [(p, True) for p in args.precision] if args.cuda_graph else []
    for precision, graph in variants:
        config = RunConfig(data=DataConfig(dataset="cifar10"),
                           model=ModelConfig("fastnet", tuple(sorted(dict(args.model_arg).items()))),
                           train=recipe_config("fastnet", precision=precision, compile=args.compile or None,
                                               cuda_graph=graph or None, epochs=args.epochs,
                                               loss_scale=(args.loss_scale or None) if precision == "fp16" else None),
                           device=args.device)
        name = "ticketlab" if len(variants) == 1 else f"ticketlab_{precision}" + ("_graph" if graph else "")
        configs[name] = config
        results[name] = {"accuracy": [], "seconds": []}
    base = next(iter(configs.values()))
    data = DeviceData(ds.train_x, ds.train_y, ds.mean, ds.std, args.device,
                      default_augment(base.data, ds, "fastnet"))
    for name, config in configs.items():
        sides[name] = lambda seed, c=config: ticketlab_run(ds, data, replace(c, train=replace(c.train, seed=seed)),
                                                           args.device)
    with tempfile.TemporaryDirectory() as cache:
        if not args.no_airbench:
            write_airbench_cache(ds, Path(cache) / "cifar10")
            os.chdir(cache)  # airbench looks for ./cifar10/{train,test}.pt
            sides["airbench"] = airbench_run
            results["airbench"] = {"accuracy": [], "seconds": []}
        for name, run_side in list(sides.items()):  # untimed warm-up; a side that fails here is left out
            try:
                run_side(1000)
            except Exception as error:  # noqa: BLE001 - the other sides' figures still count
                print(json.dumps({"side": name, "failed": f"{type(error).__name__}: {error}"}), file=sys.stderr,
                      flush=True)
                del sides[name], results[name], configs[name]
        for seed in range(args.runs):
            for name, run_side in sides.items():
                accuracy, seconds = run_side(seed)
                results[name]["accuracy"].append(accuracy)
                results[name]["seconds"].append(round(seconds, 3))
                # one line per run, so a run cut off at its time limit still leaves what it measured
                print(json.dumps({"side": name, "seed": seed, "accuracy": accuracy, "seconds": round(seconds, 3)}),
                      file=sys.stderr, flush=True)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({platform.machine()})"
    out = {"runs": args.runs, "device": name, "precision": ",".join(args.precision), "loss_scale": args.loss_scale,
           "compile": args.compile, "cuda_graph": args.cuda_graph, "date": str(date.today()),
           "steps": base.train.epochs * data.steps_per_epoch(base.train.batch_size, base.train.drop_last)}
    for name, r in results.items():
        out[name] = {"mean_accuracy": statistics.fmean(r["accuracy"]), "min_accuracy": min(r["accuracy"]),
                     "median_seconds": statistics.median(r["seconds"]), **r}
    if "airbench" in results:  # one ratio, or one per precision
        ratios = {name: round(out[name]["median_seconds"] / out["airbench"]["median_seconds"], 3) for name in configs}
        out["time_ratio"] = ratios["ticketlab"] if list(ratios) == ["ticketlab"] else ratios
    print(json.dumps(out))


if __name__ == "__main__":
    main()
