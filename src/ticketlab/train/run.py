"""A stored training run: configuration in, trained model and summary out.

`train_run` is what `ticketlab train` and `ticketlab.train(...)` call. The run id is the hash of
the configuration (config.py): a finished run is loaded instead of retrained, an interrupted one
resumes from its checkpoint, and a run that fails on a user error is removed, so the store never
holds a half-written run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ticketlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ticketlab.data import DATASETS, ImageDataset, load_dataset, train_validation_split
from ticketlab.data.augment import Augment, normalize
from ticketlab.data.batches import DeviceData, stream_seed
from ticketlab.errors import TicketlabError
from ticketlab.models import build_model
from ticketlab.sparsity import density
from ticketlab.store import RunRecord, RunStore, read_json, read_tensors, write_json, write_tensors
from ticketlab.train.hooks import Hook, MaskHook
from ticketlab.train.trainer import Trainer


@dataclass
class RunResult:
    run_id: str
    model: nn.Module
    summary: dict[str, Any]  # the headline numbers; `ticketlab train --json` prints exactly this
    history: list[dict[str, float]]
    folder: Path
    reused: bool  # True when a finished run with this configuration was loaded, not retrained


def resolve_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise TicketlabError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TicketlabError("--device cuda was asked for but this machine has no usable CUDA GPU; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise TicketlabError(f"unsupported device {device!r}; use cpu or cuda")
    return dev


def tensor_digest(tensors: Iterable[torch.Tensor]) -> str:
    """Content hash of tensors (for run identity of user-supplied weights, masks or data)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes: exact, any dtype
    return h.hexdigest()[:16]


def default_augment(data: DataConfig, dataset: ImageDataset) -> Augment:
    """Crop (pad 4) + flip for 32x32 colour images as in the standard CIFAR recipes; none for digits."""
    colour = dataset.in_channels == 3
    padding = data.crop_padding if data.crop_padding >= 0 else (4 if colour and dataset.image_size == 32 else 0)
    flip = data.flip if data.flip is not None else colour
    return Augment(crop_padding=padding, flip=flip, cutout=data.cutout)


def initial_model(config: RunConfig, dataset: ImageDataset, stream: str = "init") -> nn.Module:
    """The seeded initialisation of a registered model, data-dependent parts included.

    `stream` names an independent random stream: "reinit" gives the fresh weights of the
    random re-initialisation baseline, different from "init" for the same seed.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(stream, config.train.seed))
        model = build_model(
            config.model.name, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
            image_size=dataset.image_size, **config.model.kwargs_dict(),
        )
    init_from_data = getattr(model, "initialize_from_data", None)
    if callable(init_from_data):
        g = torch.Generator().manual_seed(stream_seed(f"{stream}-data", config.train.seed))
        pick = torch.randperm(len(dataset.train_y), generator=g)[:5000]
        mean = torch.tensor(dataset.mean, dtype=torch.float32)
        std = torch.tensor(dataset.std, dtype=torch.float32)
        init_from_data(normalize(dataset.train_x[pick], mean, std))
    return model


_DATASET_DIGESTS: "weakref.WeakKeyDictionary[ImageDataset, str]" = weakref.WeakKeyDictionary()


def dataset_identity(dataset: ImageDataset) -> str:
    """`name@content-hash`: data handed in as an object is identified by what it holds.

    Cached per object, so a study that trains hundreds of runs on one dataset hashes it once.
    """
    if dataset not in _DATASET_DIGESTS:
        digest = tensor_digest([dataset.train_x, dataset.train_y, dataset.test_x, dataset.test_y])
        _DATASET_DIGESTS[dataset] = f"{dataset.name}@{digest}"
    return _DATASET_DIGESTS[dataset]


def _load_data(config: RunConfig, dataset: ImageDataset | None, data_dir, download: bool) -> tuple[RunConfig, ImageDataset]:
    if dataset is None:
        dataset = load_dataset(config.data.dataset, data_dir=data_dir, download=download)
        if config.data.dataset in DATASETS:
            return config, dataset
    return replace(config, data=replace(config.data, dataset=dataset_identity(dataset))), dataset


def _summary(config: RunConfig, model: nn.Module, result) -> dict[str, Any]:
    last = result.history[-1] if result.history else {}
    summary = {
        "run_id": config.run_id,
        "model": config.model.name,
        "dataset": config.data.dataset,
        "epochs": config.train.epochs,
        "iterations": result.iterations,
        "device": config.device,
        "test_accuracy": result.test["accuracy"],
        "test_loss": result.test["loss"],
        "train_accuracy": last.get("train_accuracy"),
        "train_loss": last.get("train_loss"),
        "train_seconds": round(result.train_seconds, 3),
        "parameters": sum(p.numel() for p in model.parameters()),
        "density": density(model),
    }
    if result.validation is not None:
        summary["val_accuracy"] = result.validation["accuracy"]
        summary["val_loss"] = result.validation["loss"]
    return summary


def train_run(
    config: RunConfig,
    *,
    store: RunStore,
    model: nn.Module | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    dataset: ImageDataset | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    start_iteration: int = 0,
    hooks: Sequence[Hook] = (),
    save_at: Iterable[int] = (),
    data_dir: str | Path | None = None,
    download: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
    description: str | None = None,
) -> RunResult:
    """Train (or reuse, or resume) the run `config` describes.

    `model`, when given, is trained instead of the registered `config.model.name`. Starting
    weights that do not come from the config's seed (a user's model, `init_state` such as
    rewind weights) become part of the run's identity, as do `masks`, `start_iteration`
    (continue the schedule from there) and `save_at` (which weight snapshots are kept).
    """
    config.train.validate()
    dev = resolve_device(str(device) if device is not None else config.device)
    config = replace(config, device=dev.type)
    config, dataset = _load_data(config, dataset, data_dir, download)
    if config.data.validation:
        train_set, validation = train_validation_split(dataset, config.data.validation, config.data.split_seed)
    else:
        train_set, validation = dataset, None
    if model is None:
        model = initial_model(config, dataset)
    else:
        config = replace(config, model=ModelConfig(name=type(model).__name__))
        init_state = init_state if init_state is not None else model.state_dict()
    if init_state is not None:
        model.load_state_dict(init_state)
        config = replace(config, init=tensor_digest(init_state[k] for k in sorted(init_state)))
    if masks:
        config = replace(config, masks=tensor_digest(masks[k] for k in sorted(masks)))
    save_at = tuple(sorted(set(save_at)))
    config = replace(config, start=start_iteration, snapshots=save_at)

    record = store.begin(config)
    if record.finished:
        return _reuse(record, model, dev)
    data = DeviceData(train_set.train_x, train_set.train_y, train_set.mean, train_set.std, dev, default_augment(config.data, dataset))
    all_hooks = ([MaskHook(masks)] if masks else []) + list(hooks)
    trainer = Trainer(
        model, data, config.train, validation=validation, test=(dataset.test_x, dataset.test_y),
        hooks=all_hooks, checkpoint_dir=record.folder, save_at=save_at, start_iteration=start_iteration,
        progress=progress, description=description or f"{config.model.name} on {dataset.name}",
    )
    try:
        result = trainer.fit()
    except TicketlabError:
        store.remove(config.run_id)  # diverged or invalid: leave nothing half-written
        raise
    write_tensors(record.folder / "final.safetensors", model.state_dict())
    write_json(record.folder / "history.json", result.history)
    summary = _summary(config, model, result)
    (record.folder / "checkpoint.safetensors").unlink(missing_ok=True)  # finished: nothing to resume
    store.finish(config.run_id, summary)
    return RunResult(config.run_id, model, summary, result.history, record.folder, reused=False)


def _reuse(record: RunRecord, model: nn.Module, dev: torch.device) -> RunResult:
    model.load_state_dict(read_tensors(record.folder / "final.safetensors"))
    history = read_json(record.folder / "history.json")
    return RunResult(record.run_id, model.to(dev), record.summary or {}, history, record.folder, reused=True)


def train(
    model: str | nn.Module = "lenet_300_100",
    dataset: str | ImageDataset = "mnist_subset",
    *,
    store: RunStore | str | Path | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    hooks: Sequence[Hook] = (),
    save_at: Iterable[int] = (),
    data_dir: str | Path | None = None,
    download: bool = True,
    device: str = "cpu",
    progress: bool = True,
    data: DataConfig | None = None,
    **train_options: Any,
) -> RunResult:
    """Train a registered model by name, or your own `nn.Module`, on a dataset by name or object.

    `train_options` are `TrainConfig` fields (epochs, lr, batch_size, ...); fields you leave out
    take the model's recipe where it has one, else the `TrainConfig` defaults.
    """
    name = model if isinstance(model, str) else type(model).__name__
    train_cfg = recipe_config(name if isinstance(model, str) else None, **train_options)
    data_cfg = data or DataConfig()
    if isinstance(dataset, str):
        data_cfg = replace(data_cfg, dataset=dataset)
        dataset_obj = None
    else:
        data_cfg = replace(data_cfg, dataset=dataset.name)
        dataset_obj = dataset
    config = RunConfig(data=data_cfg, model=ModelConfig(name=name), train=train_cfg, device=torch.device(device).type)
    return train_run(
        config, store=store if isinstance(store, RunStore) else RunStore(store),
        model=None if isinstance(model, str) else model, dataset=dataset_obj, masks=masks, hooks=hooks,
        save_at=save_at, data_dir=data_dir, download=download, device=device, progress=progress,
    )


def recipe_config(model_name: str | None, **overrides: Any) -> TrainConfig:
    """TrainConfig from the model's published recipe, then explicit overrides."""
    from ticketlab.models import model_recipe

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TicketlabError(f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    recipe = {k: v for k, v in (model_recipe(model_name) if model_name else {}).items() if k in known}
    given = {k: v for k, v in overrides.items() if v is not None}
    values = {**recipe, **given}
    # a shorter run keeps the recipe's shape: its lr milestones move with the epoch count
    if "milestones" in recipe and "milestones" not in given and "epochs" in given and "epochs" in recipe:
        scale = given["epochs"] / recipe["epochs"]
        values["milestones"] = tuple(round(m * scale, 4) for m in recipe["milestones"])
    if "milestones" in values:
        values["milestones"] = tuple(float(m) for m in values["milestones"])
    return TrainConfig(**values)
