"""Host time per training step: the Trainer against a bare PyTorch loop on the same tiny network.

  python benchmarks/step_overhead.py [--steps 256] [--repeats 5]

A network too small to compute anything (fastnet at widths 4/4/4, batch 8) leaves only the cost of
issuing its operations, which is what a fast GPU step waits on when the host falls behind. The
Trainer's recipe run (batching, augmentation, schedule, hooks, running sums) is timed against a loop
of forward, loss, backward and SGD step on fixed tensors; the difference is the Trainer's own
per-step work. CPU only; medians of the repetitions. Timings of sub-millisecond differences are noisy
on a shared machine, so it also counts the ATen operations each side dispatches per step (exact, and
on a GPU nearly each one is a kernel launch).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ticketlab.config import DataConfig, ModelConfig, RunConfig
from ticketlab.data import ImageDataset
from ticketlab.data.batches import DeviceData
from ticketlab.train import Trainer, recipe_config
from ticketlab.train.run import default_augment, initial_model


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _stand_in_capture(module, sample_args, allow_unused_input=False):
    """What `make_graphed_callables` leaves the host to do a step, on the CPU: the forward copies the
    batch into the graph's input and returns its output; the backward copies the output's gradient
    in and returns the parameters' gradients. The graphs' own replays issue no operation. (The
    numbers it trains with are stale; only the count matters.)"""
    params = tuple(p for p in module.parameters() if p.requires_grad)
    static_in = sample_args[0].clone()
    out = module(static_in)
    grads = torch.autograd.grad(out.sum(), params)

    class Replay(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, *weights):
            static_in.copy_(x)
            return out.detach()

        @staticmethod
        def backward(ctx, grad):
            torch.empty_like(out).copy_(grad)
            return (None, *(g.detach() for g in grads))

    module.forward = lambda x: Replay.apply(x, *params)
    return module


def gpu_like_counts(trainer, steps: int) -> dict[str, float]:
    """Operations a step of the Trainer with the fused optimiser a GPU gets, eager and with
    `--cuda-graph` (its capture stood in for, above); autocast's casts, inside the graphs there,
    are not counted on either side."""
    optim = importlib.import_module("ticketlab.train.optim")  # `ticketlab.train` is also the API's function
    saved = optim.fused_on, torch.cuda.make_graphed_callables
    counts = {}
    try:
        optim.fused_on = lambda params: True  # the CPU has fused SGD too
        counts["trainer"] = _CountOps()
        trainer(counts["trainer"])
        torch.cuda.make_graphed_callables = _stand_in_capture
        counts["trainer_cuda_graph"] = _CountOps()
        trainer(counts["trainer_cuda_graph"], cuda_graph=True)
    finally:
        optim.fused_on, torch.cuda.make_graphed_callables = saved
    return {k: round(c.count / steps, 1) for k, c in counts.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    n = 8 * args.steps
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    ds = ImageDataset.create("random", x, y, x[:64], y[:64], tuple(str(i) for i in range(10)))
    cfg = RunConfig(data=DataConfig(dataset="cifar10"), model=ModelConfig("fastnet", (("widths", (4, 4, 4)),)),
                    train=recipe_config("fastnet", batch_size=8, epochs=1), device="cpu")
    data = DeviceData(ds.train_x, ds.train_y, ds.mean, ds.std, "cpu", default_augment(cfg.data, ds, "fastnet"))

    def trainer(counter: _CountOps | None = None, cuda_graph: bool = False) -> float:
        t = Trainer(initial_model(cfg, ds), data, cfg.train, progress=False)
        t.cfg = replace(t.cfg, cuda_graph=cuda_graph)  # past the constructor's check for a CUDA device
        start = time.perf_counter()
        with counter or contextlib.nullcontext():
            t.fit()
        return (time.perf_counter() - start) / t.iteration

    def bare(counter: _CountOps | None = None) -> float:
        model = initial_model(cfg, ds).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.85, nesterov=True, weight_decay=1e-3)
        xb = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        yb = torch.randint(0, 10, (8,))
        start = time.perf_counter()
        with counter or contextlib.nullcontext():
            for _ in range(args.steps):
                loss = F.cross_entropy(model(xb), yb, label_smoothing=0.2)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return (time.perf_counter() - start) / args.steps

    times: dict[str, list[float]] = {"trainer": [], "bare": []}
    for _ in range(args.repeats):
        times["trainer"].append(trainer())
        times["bare"].append(bare())
    ms = {k: round(1000 * statistics.median(v), 3) for k, v in times.items()}
    counts = {"trainer": _CountOps(), "bare": _CountOps()}
    trainer(counts["trainer"])
    bare(counts["bare"])
    ops = {k: round(c.count / args.steps, 1) for k, c in counts.items()}
    print(json.dumps({"ops_per_step": ops, "ops_per_step_as_on_a_gpu": gpu_like_counts(trainer, args.steps),
                      "median_ms_per_step": ms,
                      "overhead_ms": round(ms["trainer"] - ms["bare"], 3),
                      "runs_ms": {k: [round(1000 * t, 3) for t in v] for k, v in times.items()}}))


if __name__ == "__main__":
    main()
