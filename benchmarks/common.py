"""What the benchmark scripts share: the machine's name, interleaved timing, a slice of CIFAR-10
to train on, the structure step of `ticketlab find --structure channel`, and the removal attacks
of the ownership benchmarks."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ticketlab.compact import complete_channel_masks, tied_layers
from ticketlab.config import TrainConfig
from ticketlab.data import ImageDataset, load_dataset
from ticketlab.sparsity import magnitude, prune_fraction, refill, select_prunable
from ticketlab.train import Hook, evaluate

Tensors = dict[str, torch.Tensor]


def machine(device: str = "cpu") -> str:
    """The device the figures are for, and the torch that ran them."""
    name = (torch.cuda.get_device_name() if device == "cuda" else
            f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    return f"{name}, torch {torch.__version__}"


def seconds(run: Callable[[], object], device: str = "cpu") -> float:
    """Wall time of `run()`, with the GPU's queue drained on both sides."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved(variants: dict[str, Callable[[], float]], repeats: int,
                label: str = "") -> tuple[dict[str, float], dict[str, list[float]]]:
    """Medians and all timings of `variants` (each returns its seconds): one warm-up each, then
    `repeats` rounds in turns, so machine noise hits every variant alike."""
    for run in variants.values():  # allocator, oneDNN / cuDNN kernel selection per shape
        run()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(repeats):
        for name, run in variants.items():
            times[name].append(run())
        print(f"{label}repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    return {k: statistics.median(v) for k, v in times.items()}, times


def training_slice(data_dir: str, batch_size: int, steps: int,
                   dataset: str = "cifar10") -> tuple[ImageDataset, torch.Tensor, torch.Tensor]:
    """The dataset and its first `batch_size * steps` training examples: one epoch of `steps` steps."""
    ds = load_dataset(dataset, data_dir=data_dir)
    n = batch_size * steps
    return ds, ds.train_x[:n].contiguous(), ds.train_y[:n].contiguous()


def sgd_steps(batch_size: int) -> TrainConfig:
    """One epoch at a constant lr with the CIFAR recipes' SGD: what a step costs, not what it learns."""
    return TrainConfig(epochs=1, batch_size=batch_size, lr=0.05, schedule="constant", momentum=0.9,
                       nesterov=True, weight_decay=5e-4)


def channel_tickets(model: nn.Module, levels: int, fraction: float,
                    scope: str = "global") -> Iterator[tuple[int, Tensors, Tensors]]:
    """(level, weight masks, completed masks) of `find --structure channel`'s structure step on
    `model`'s own weights: a magnitude step of `fraction` (global or per layer), refill with the
    residual streams tied, the classifier unstructured. Speed depends on which channels survive,
    not on how well the weights are trained."""
    names = list(select_prunable(model))
    params = dict(model.named_parameters())
    weights = {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}
    tied = tied_layers(model)
    for level in range(1, levels + 1):
        weights = prune_fraction(magnitude({n: params[n].detach() for n in names}), weights, fraction, scope)
        weights = refill(weights, tied=tied, keep={names[-1]})
        yield level, weights, complete_channel_masks(model, weights)


class Curve(Hook):
    """Each step's training loss and batch accuracy."""

    def __init__(self) -> None:
        self.loss: list[float] = []
        self.accuracy: list[float] = []

    def after_step(self, trainer, step) -> None:
        self.loss.append(float(step.loss))
        self.accuracy.append(float((step.logits.argmax(1) == step.targets).float().mean()))


def test_accuracy(model: nn.Module, ds: ImageDataset) -> float:
    mean, std = torch.tensor(ds.mean), torch.tensor(ds.std)
    return evaluate(model.eval(), ds.test_x, ds.test_y, mean, std)["accuracy"]


def pruned_further(model: nn.Module, masks: Tensors, fraction: float, scores: Tensors) -> nn.Module:
    """A copy of `model` with `fraction` more of its kept weights (global, lowest `scores`) zeroed: a thief
    removing an ownership mark."""
    import copy

    attacked = copy.deepcopy(model)
    kept = prune_fraction(scores, masks, fraction, scope="global")
    with torch.no_grad():
        for name, p in attacked.named_parameters():
            if name in kept:
                p.mul_(kept[name])
    return attacked
