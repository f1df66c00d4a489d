"""Where fastnet's GPU step time goes: the recipe's training time under variants, on CIFAR-shaped random data.

  python benchmarks/fastnet_variants.py [--variants eager,foreach,graphs] [--repeats 3] [--profile eager,fp16static]

Training time does not depend on what the images show, so this needs no dataset (the accuracy side is
`fastnet_airbench.py`'s job). Variants: `eager` (the recipe as it is), `foreach` (torch's foreach SGD
instead of the fused SGD the trainer uses on a GPU since 2026-12-04), `compile` (TrainConfig.compile;
`compile-graphs` in mode "reduce-overhead", CUDA graphs), `graphs` (TrainConfig.cuda_graph: the eager
step's forward and backward replayed from CUDA graphs), `fp16` (fp16 autocast with torch's dynamic
loss scaling), `fp16static` (fp16 with a fixed loss scale of 1024, no per-step host sync; cuDNN runs
BatchNorm for fp16), `adaptive` (the head's global max-pool as nn.AdaptiveMaxPool2d(1), as before
2026-12-04, instead of one nn.MaxPool2d window over the final 3x3 map, airbench's head), `airbench`
(airbench 0.1.8's `train94`, side by side on the same random images; needs airbench installed). A
variant may be named more than once. Each variant trains once untimed, then `--repeats` timed runs;
one JSON line per variant with the median seconds and the median seconds of its parts. `--profile
VARIANTS` adds the profiler's top operators of one run of each (eager, fp16static, adaptive, graphs),
by self CUDA time and by self CPU time, to tell a launch-bound step from a compute-bound one;
`--profile-airbench` the same for one airbench run. `--model-arg widths=[8,8,8]` leaves the host's
own time; `--syncs` lists where one run waits for the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from fastnet_airbench import airbench_run, write_airbench_cache

from ticketlab.cli.main import _model_arg
from ticketlab.config import DataConfig, ModelConfig, RunConfig
from ticketlab.data import ImageDataset
from ticketlab.data.batches import DeviceData
from ticketlab.train import Trainer, recipe_config
from ticketlab.train.run import default_augment, initial_model


def random_cifar(seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (50000, 3, 32, 32), generator=g, dtype=torch.uint8)
    xt = torch.randint(0, 256, (10000, 3, 32, 32), generator=g, dtype=torch.uint8)
    y, yt = torch.randint(0, 10, (50000,), generator=g), torch.randint(0, 10, (10000,), generator=g)
    return ImageDataset.create("random-cifar", x, y, xt, yt, tuple(str(i) for i in range(10)))


def train_once(ds: ImageDataset, data: DeviceData, config: RunConfig, adaptive: bool = False,
               phases: dict[str, list[float]] | None = None) -> tuple[float, Trainer]:
    """Seconds of one run (network, whitening, training); `phases` collects the parts' seconds."""
    marks = [time.perf_counter()]

    def mark() -> None:
        torch.cuda.synchronize()
        marks.append(time.perf_counter())

    mark()
    model = initial_model(config, ds)
    if adaptive:
        model.pool = torch.nn.AdaptiveMaxPool2d(1)
    mark()
    trainer = Trainer(model, data, config.train, progress=False)
    mark()
    trainer.fit()
    mark()
    if phases is not None:
        for name, a, b in zip(("network", "trainer", "fit"), marks[1:], marks[2:]):
            phases.setdefault(name, []).append(b - a)
    return marks[-1] - marks[1], trainer


def count_syncs(ds: ImageDataset, data: DeviceData, config: RunConfig) -> dict[str, int]:
    """Where one run waits for the GPU: torch's sync debug mode warns at each synchronising call."""
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_once(ds, data, config)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    sites: dict[str, int] = {}
    for w in caught:
        if "synchroniz" in str(w.message):
            site = f"{Path(w.filename).name}:{w.lineno}"
            sites[site] = sites.get(site, 0) + 1
    return dict(sorted(sites.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="eager,foreach,graphs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--model-arg", type=_model_arg, action="append", default=[], metavar="KEY=VALUE",
                    help="fastnet option, e.g. widths=[8,8,8]: a net too small to compute leaves the host's time")
    ap.add_argument("--syncs", action="store_true", help="count the host-device synchronisations of one run")
    ap.add_argument("--profile", default="", metavar="VARIANTS",
                    help="profile one run of each of these (eager, fp16static, adaptive, graphs), comma-separated")
    ap.add_argument("--profile-airbench", action="store_true", help="also profile one airbench train94 run")
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = set(variants) - {"eager", "foreach", "compile", "compile-graphs", "fp16", "fp16static", "adaptive",
                               "graphs", "airbench"}
    profiled = [v for v in args.profile.split(",") if v]
    unknown |= set(profiled) - {"eager", "fp16static", "adaptive", "graphs"}
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(sorted(unknown))}")
    ds = random_cifar()
    base = RunConfig(data=DataConfig(dataset="cifar10"),
                     model=ModelConfig("fastnet", tuple(sorted(dict(args.model_arg).items()))),
                     train=recipe_config("fastnet", precision=args.precision), device="cuda")
    data = DeviceData(ds.train_x, ds.train_y, ds.mean, ds.std, "cuda", default_augment(base.data, ds, "fastnet"))
    sgd, compile_ = torch.optim.SGD, torch.compile
    cache = tempfile.TemporaryDirectory()
    if "airbench" in variants or args.profile_airbench:
        write_airbench_cache(ds, Path(cache.name) / "cifar10")
        os.chdir(cache.name)  # airbench looks for ./cifar10/{train,test}.pt

    def config_of(variant: str) -> RunConfig:
        fp16 = variant in ("fp16", "fp16static")
        return replace(base, train=replace(base.train, compile=variant in ("compile", "compile-graphs"),
                                           cuda_graph=variant == "graphs",
                                           precision="fp16" if fp16 else base.train.precision,
                                           loss_scale=1024.0 if variant == "fp16static" else 0.0))

    for variant in variants:
        config = config_of(variant)
        torch.optim.SGD = (lambda *a, **k: sgd(*a, **{**k, "fused": None})) if variant == "foreach" else sgd
        # "reduce-overhead" replays the compiled forward and backward from CUDA graphs
        torch.compile = (lambda *a, **k: compile_(*a, mode="reduce-overhead", **k)) if variant == "compile-graphs" \
            else compile_
        if variant == "airbench":
            times = [airbench_run(seed)[1] for seed in range(args.repeats + 1)][1:]
        else:
            train_once(ds, data, config, variant == "adaptive")
            phases: dict[str, list[float]] = {}
            times = [train_once(ds, data, config, variant == "adaptive", phases)[0] for _ in range(args.repeats)]
            phase_medians = {name: round(statistics.median(t), 3) for name, t in phases.items()}
        print(json.dumps({"variant": variant, "seconds": [round(t, 3) for t in times],
                          "median_seconds": round(statistics.median(times), 3),
                          **({"phases": phase_medians} if variant != "airbench" else {})}), flush=True)
    torch.optim.SGD, torch.compile = sgd, compile_
    if args.syncs:
        print(json.dumps({"synchronisations": count_syncs(ds, data, base)}), flush=True)
    for variant in profiled:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            seconds, trainer = train_once(ds, data, config_of(variant), variant == "adaptive")
        events = prof.key_averages()
        print(f"profiled {variant} run: {seconds:.3f} s, {trainer.iteration} steps", flush=True)
        print(events.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))
        print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    if args.profile_airbench:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            airbench_run(0)
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=60))


if __name__ == "__main__":
    main()
