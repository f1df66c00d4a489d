"""A stored training run: configuration in, trained model and summary out.

`train_run` is what `ticketlab train` and `ticketlab.train(...)` call. The run id is the hash of
the configuration (config.py): a finished run is loaded instead of retrained, an interrupted one
resumes from its checkpoint, and a run that fails on a user error is removed, so the store never
holds a half-written run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import numbers
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ticketlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig, check_given, without_unused
from ticketlab.data import DATASETS, ImageDataset, load_dataset
from ticketlab.data.augment import Augment, normalize
from ticketlab.data.batches import DeviceData, check_batch_size, steps_per_epoch, stream_seed
from ticketlab.data.catalog import name_fixes_content
from ticketlab.data.split import stratified_indices
from ticketlab.errors import TicketlabError, first_line
from ticketlab.models import MODELS, build_model, model_augment, model_revision
from ticketlab.sparsity import check_masks, density
from ticketlab.store import (
    CorruptFileError,
    RunRecord,
    RunStore,
    UnwritableFileError,
    read_json,
    read_tensors,
    unreadable,
    write_json,
    write_tensors,
)
from ticketlab.train.evaluate import eval_mode
from ticketlab.train.hooks import Hook, MaskHook
from ticketlab.train.optim import norm_biases
from ticketlab.train.trainer import Trainer, TrainResult, graphs_need_cuda

if TYPE_CHECKING:
    from ticketlab.tickets.trigger import TriggerSet


@dataclass
class RunResult:
    run_id: str
    model: nn.Module
    summary: dict[str, Any]  # the headline numbers; `ticketlab train --json` prints exactly this
    history: list[dict[str, float]]
    folder: Path
    reused: bool  # True when a finished run with this configuration was loaded, not retrained


def resolve_device(device: str, train: TrainConfig | None = None) -> torch.device:
    """The torch device named, checked to exist here and to suit `train`'s CUDA-only options."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise TicketlabError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TicketlabError("--device cuda was asked for but this machine has no usable CUDA GPU; use --device cpu")
    if train is not None and train.cuda_graph and dev.type != "cuda":
        raise graphs_need_cuda(dev)
    if train is not None and train.precision != "fp32" and dev.type != "cuda":  # would change the id, not the numbers
        raise TicketlabError(f"--precision {train.precision} sets the autocast dtype on CUDA, and {dev.type} trains in "
                             "fp32; drop --precision or add --device cuda")
    if dev.type not in ("cpu", "cuda"):
        raise TicketlabError(f"unsupported device {device!r}; use cpu or cuda")
    return dev


def tensor_digest(tensors: Iterable[torch.Tensor] | Mapping[str, torch.Tensor]) -> str:
    """Content hash of tensors (for run identity of user-supplied weights, masks or data); of a mapping,
    names included, so the same tensors under other names (another layer's mask) hash differently."""
    h = hashlib.sha256()
    if isinstance(tensors, Mapping):
        named = sorted(tensors.items())
        h.update(json.dumps([name for name, _ in named]).encode())
        tensors = [t for _, t in named]
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes: exact, any dtype
    return h.hexdigest()[:16]


def default_augment(data: DataConfig, dataset: ImageDataset, model: str | None = None) -> Augment:
    """Crop (pad 4) + flip for 32x32 colour images as in the standard CIFAR recipes, or what the
    model's recipe asks for on colour images (fastnet: airbench's); none for digits. Settings
    given in `data` win."""
    colour = dataset.in_channels == 3
    usual = Augment(crop_padding=4 if colour and dataset.image_size == 32 else 0, flip=colour)
    if colour and model in MODELS:
        usual = replace(usual, **model_augment(model))
    padding = data.crop_padding if data.crop_padding >= 0 else usual.crop_padding
    flip = data.flip if data.flip is not None else usual.flip
    if not 0 <= data.cutout < dataset.image_size:
        size = dataset.image_size
        raise TicketlabError(f"--cutout is the side of the square cut out of each {size}x{size} image, so it must "
                             f"be in [0, {size}); got {data.cutout} (0 is off; CIFAR recipes use 8 to 16)")
    return replace(usual, crop_padding=padding, flip=flip, cutout=data.cutout)


def initial_model(config: RunConfig, dataset: ImageDataset, stream: str = "init", extra_outputs: int = 0) -> nn.Module:
    """The seeded initialisation of a registered model, data-dependent parts included.

    `stream` names an independent random stream: "reinit" gives the fresh weights of the
    random re-initialisation baseline, different from "init" for the same seed.
    """
    _, height, width = dataset.image_shape
    if height != width:
        raise TicketlabError(
            f"the registered models take square images, and {dataset.name}'s are {height}x{width}; pad or crop them "
            "to squares, or train your own nn.Module on them (ticketlab.train(module, dataset))"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(stream, config.train.seed))
        model = build_model(
            config.model.name, num_classes=dataset.num_classes + extra_outputs, in_channels=dataset.in_channels,
            image_size=dataset.image_size, **config.model.kwargs_dict(),
        )
    init_from_data = getattr(model, "initialize_from_data", None)
    if callable(init_from_data):
        # fitted on the examples training sees, normalised as training normalises them: never the held-out ones
        train_set = training_part(config, dataset) if config.data.validation else dataset
        g = torch.Generator().manual_seed(stream_seed(f"{stream}-data", config.train.seed))
        pick = torch.randperm(len(train_set.train_y), generator=g)[:5000]
        # on the GPU a run trains on, these statistics take a millisecond instead of a tenth of a second
        device = torch.device("cuda" if config.device == "cuda" and torch.cuda.is_available() else "cpu")
        mean = torch.tensor(train_set.mean, dtype=torch.float32, device=device)
        std = torch.tensor(train_set.std, dtype=torch.float32, device=device)
        init_from_data(normalize(train_set.train_x[pick].to(device), mean, std))
    return model


def architecture_digest(model: nn.Module) -> str:
    """A user module's architecture: its class, its layers with their settings (repr) and, where Python
    has it, its class's source, so a changed activation, stride or dropout rate is another run."""
    cls = type(model)
    parts = [f"{cls.__module__}.{cls.__qualname__}", repr(model)]
    try:
        parts.append(inspect.getsource(cls))
    except (OSError, TypeError):  # defined in an interactive session
        pass
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


_DATASET_DIGESTS: "weakref.WeakKeyDictionary[ImageDataset, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def dataset_identity(dataset: ImageDataset) -> str:
    """`name@content-hash`: data handed in as an object is identified by what it holds.

    Cached per object, so a study that trains hundreds of runs on one dataset hashes it once, and hashed
    again when a tensor was replaced or edited in place (torch counts in-place writes in `_version`).
    """
    tensors = (dataset.train_x, dataset.train_y, dataset.test_x, dataset.test_y)
    state = (*((id(t), t._version) for t in tensors), dataset.classes)
    cached = _DATASET_DIGESTS.get(dataset)
    if cached is None or cached[0] != state:
        # the classes too: their number sets the model's outputs and the range noisy labels are drawn from
        digest = hashlib.sha256((tensor_digest(list(tensors)) + json.dumps(list(dataset.classes))).encode())
        cached = (state, f"{dataset.name}@{digest.hexdigest()[:16]}")
        _DATASET_DIGESTS[dataset] = cached
    return cached[1]


def _load_data(
    config: RunConfig, dataset: ImageDataset | None, data_dir, download: bool, progress: bool = True
) -> tuple[RunConfig, ImageDataset]:
    if config.data.noise:
        from ticketlab.data.noise import noise_file_digest

        config = replace(config, data=replace(config.data, noise_file=noise_file_digest(config.data.noise)))
    if dataset is None:
        dataset = load_dataset(config.data.dataset, data_dir=data_dir, download=download, progress=progress)
        if config.data.dataset in DATASETS and name_fixes_content(config.data.dataset):
            return replace(config, data=canonical_data(config.data, dataset, config.model.name)), dataset
    data = replace(config.data, dataset=dataset_identity(dataset))
    return replace(config, data=canonical_data(data, dataset, config.model.name)), dataset


def canonical_data(data: DataConfig, dataset: ImageDataset, model: str | None) -> DataConfig:
    """`data` with the settings that change nothing here at their defaults, so equal trainings share an id:
    augmentation spelled as what it resolves to anyway, a noise seed where nothing is drawn (no noise, or a
    label file's), noise at rate 0, a split seed without a split."""
    from ticketlab.data.noise import parse_noise

    usual = default_augment(replace(data, crop_padding=-1, flip=None), dataset, model)
    if data.draws_noise and parse_noise(data.noise).rate == 0:
        data = replace(data, noise="")
    return replace(data, crop_padding=-1 if data.crop_padding == usual.crop_padding else data.crop_padding,
                   flip=None if data.flip == usual.flip else data.flip,
                   noise_seed=data.noise_seed if data.draws_noise else 0,
                   split_seed=data.split_seed if data.validation else 0)


def canonical_train(train: TrainConfig, examples: int) -> TrainConfig:
    """`train` with what does nothing on `examples` training examples turned off, so equal trainings share an
    id: --drop-last where the batch divides them, a warm-up shorter than half a step, a lookahead that never
    syncs before the last step (a sync there averages the weights with themselves)."""
    steps = steps_per_epoch(examples, train.batch_size, train.drop_last)
    if train.drop_last and examples % train.batch_size == 0:
        train = replace(train, drop_last=False)
    if train.warmup_epochs > 0 and round(train.warmup_epochs * steps) == 0:
        train = replace(train, warmup_epochs=0.0)
    if train.lookahead_every >= steps * train.epochs:
        train = replace(train, lookahead_every=0)
    return without_unused(train)


@dataclass
class _Data:
    """The training data a run sees: noisy labels applied, validation held out, subset taken."""

    train_set: ImageDataset
    validation: tuple[torch.Tensor, torch.Tensor] | None
    clean_train_y: torch.Tensor | None  # the true labels of train_set, when noise was added
    noise_rate: float | None


def _prepare(config: RunConfig, dataset: ImageDataset, subset: torch.Tensor | None,
             trigger: TriggerSet | None = None) -> _Data:
    """The training examples, validation split and noise of `_split`; a trigger set joins the training
    examples last: never held out, never noisy."""
    data = _split(config, dataset, subset)
    if trigger is None:
        return data
    from ticketlab.tickets.trigger import mixed_in

    train_set = mixed_in(data.train_set, trigger)
    clean = data.clean_train_y
    if clean is not None:
        clean = torch.cat([clean, train_set.train_y[len(clean):]])
    return _Data(train_set, data.validation, clean, data.noise_rate)


def _split(config: RunConfig, dataset: ImageDataset, subset: torch.Tensor | None) -> _Data:
    """Noise is drawn over the whole training set before the split, with its own fixed seed, so
    every training seed and method sees the same noisy labels; the validation labels are noisy
    too (a user holding noisy data has no clean ones), the test labels never are."""
    clean, rate = None, None
    if config.data.noise:
        from ticketlab.data.noise import add_label_noise, noise_rate, parse_noise

        noisy = add_label_noise(dataset.train_y, dataset.num_classes, parse_noise(config.data.noise),
                                config.data.noise_seed, classes=dataset.classes)
        clean, rate = dataset.train_y, noise_rate(dataset.train_y, noisy)
        dataset = dataclasses.replace(dataset, train_y=noisy)
    validation = None
    if config.data.validation:
        keep, held = stratified_indices(dataset.train_y, config.data.validation, config.data.split_seed)
        validation = (dataset.train_x[held].contiguous(), dataset.train_y[held].contiguous())
    else:
        keep = torch.arange(len(dataset.train_y))
    if subset is None and not config.data.validation:
        return _Data(dataset, None, clean, rate)
    if subset is not None:
        if subset.numel() == 0 or int(subset.min()) < 0 or int(subset.max()) >= len(keep):
            raise TicketlabError(f"the training subset must index the {len(keep)} training examples "
                                 "(after the validation split); got an empty or out-of-range index set")
        keep = keep[subset]
    train_set = ImageDataset.create(name=dataset.name, train_x=dataset.train_x[keep], train_y=dataset.train_y[keep],
                                    test_x=dataset.test_x, test_y=dataset.test_y, classes=dataset.classes)
    return _Data(train_set, validation, clean[keep] if clean is not None else None, rate)


def _with_trigger(config: RunConfig, trigger: TriggerSet | None, dataset: ImageDataset, records: bool) -> RunConfig:
    """`config` naming `trigger` by its identity, checked against what the config already names: a stored
    config holds the key's digest only, so resuming needs the key again."""
    if trigger is None:
        if config.data.trigger:
            raise TicketlabError(f"this run mixes a keyed trigger set into training ({config.data.trigger}); "
                                 "give its key again (trigger=TriggerSet(key, size, copies), --trigger-key-file)")
        return config
    if config.data.trigger and config.data.trigger != trigger.identity():
        raise TicketlabError(f"the config names trigger set {config.data.trigger}, the key given makes "
                             f"{trigger.identity()}; give the key (and sizes) the run was started with")
    if config.train.loss != "ce":
        # SAT overrules the labels a network disagrees with, the keyed ones too, and writes its corrected
        # labels (the keyed ones among them) beside the weights
        raise TicketlabError(f"a trigger set's labels are meant to disagree with the images; --loss "
                             f"{config.train.loss} would correct them away. Mark a run trained with --loss ce")
    if records:
        raise TicketlabError("per-example records index the task's examples, and a trigger set adds its own; "
                             "record the run without it")
    from ticketlab.tickets.trigger import check_provable

    check_provable(trigger, dataset.num_classes)
    return replace(config, data=replace(config.data, trigger=trigger.identity()))


def training_part(config: RunConfig, dataset: ImageDataset) -> ImageDataset:
    """The task's examples a run of `config` trains on: its label noise applied, its validation examples held
    out (with the mean and std of what is left); a trigger set's are not among them. What looks at data
    before training (a data-dependent initialisation, pruning at initialisation) looks at these only."""
    return _prepare(config, dataset, None).train_set


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
    if result.stopped_early:
        summary["stopped_early"] = result.stopped_early
        summary["stopped_epoch"] = len(result.history)
    return summary


def _identify(
    config: RunConfig, dataset: ImageDataset, model: nn.Module | None, init_state: dict[str, torch.Tensor] | None,
    masks: dict[str, torch.Tensor] | None, start_iteration: int, save_at: Iterable[int], extra_outputs: int = 0,
) -> tuple[RunConfig, nn.Module]:
    """The run's full identity, and its model at its starting weights."""
    if model is None:
        model = initial_model(config, dataset, extra_outputs=extra_outputs)
        # a config written by hand names the model without its revision
        config = replace(config, model=replace(config.model, architecture=model_revision(config.model.name)))
    else:
        if getattr(model, "needs_data_init", False):  # a zoo fastnet built by hand: its first layer is still random
            raise TicketlabError(
                f"this {type(model).__name__}'s first layer is fitted to data and is not yet: call "
                "model.initialize_from_data(images) with a few thousand normalised training images first, or train "
                "it by name (ticketlab.train('fastnet', ...)), which fits it on the training set"
            )
        config = replace(config, model=ModelConfig(name=type(model).__name__, architecture=architecture_digest(model)))
        init_state = init_state if init_state is not None else model.state_dict()
        _check_output(model, dataset, dataset.num_classes + extra_outputs)
    if config.train.bias_lr_scale != 1.0 and not norm_biases(model):  # would change the id, not the numbers
        raise TicketlabError(f"--bias-lr-scale scales the lr of normalisation-layer biases, and {config.model.name} "
                             "has none; drop --bias-lr-scale")
    if init_state is not None:
        try:
            model.load_state_dict(init_state)
        except RuntimeError as error:
            raise TicketlabError(f"the starting weights do not fit {type(model).__name__}: "
                                 f"{str(error).splitlines()[-1].strip()}; give weights of this architecture") from None
        config = replace(config, init=tensor_digest(init_state))
    if masks:
        config = replace(config, masks=mask_digest(masks))
    return replace(config, start=start_iteration, snapshots=_iterations(save_at)), model


def mask_digest(masks: Mapping[str, torch.Tensor]) -> str:
    """Masks by what they keep, so a float, bool or double mask of one pattern is one run (values other
    than 0 and 1 are refused before training)."""
    return tensor_digest({n: m.bool() for n, m in masks.items()})


def _iterations(save_at: int | Iterable[int]) -> tuple[int, ...]:
    """`save_at` as sorted, distinct whole iteration numbers: 2, 2.0 and [2] keep one snapshot, one run."""
    try:
        values = [float(v) for v in ([save_at] if isinstance(save_at, numbers.Real) else save_at)]
    except (TypeError, ValueError):
        values = [math.nan]
    if not all(math.isfinite(v) and v.is_integer() and v >= 0 for v in values):
        raise TicketlabError(f"save_at takes whole iteration numbers (e.g. [0, 500]), got {save_at!r}")
    return tuple(sorted({int(v) for v in values}))


@torch.no_grad()
def _check_output(model: nn.Module, dataset: ImageDataset, classes: int) -> None:
    """A user's forward must return one [N, >= classes] tensor of scores: anything else would fail deep in the
    loss, or on a GPU as a device-side assert that ends the process."""
    like = next(iter(model.parameters()), torch.empty(0))
    x = torch.zeros(2, *dataset.image_shape, device=like.device, dtype=like.dtype if like.is_floating_point()
                    else torch.float32)
    with eval_mode(model):
        try:
            out = model(x)
        except Exception as error:  # the user's forward, whatever it raises
            first = first_line(error)
            raise TicketlabError(f"{type(model).__name__} fails on a batch of {dataset.name} images of shape "
                                 f"{tuple(dataset.image_shape)} ({type(error).__name__}: {first}); build it for "
                                 "that input") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2 or out.shape[1] < classes:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        abstain = ", plus the abstain output" if classes > dataset.num_classes else ""
        raise TicketlabError(f"{type(model).__name__} returns {got} for a batch of 2; ticketlab trains a forward that "
                             f"returns one tensor of scores of shape [batch, {classes}] ({dataset.name} has "
                             f"{dataset.num_classes} classes{abstain})")


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
    subset: torch.Tensor | None = None,
    records: bool = False,
    compacted: int = 0,
    trigger: TriggerSet | None = None,
) -> RunResult:
    """Train (or reuse, or resume) the run `config` describes.

    `model`, when given, is trained instead of the registered `config.model.name`. Starting
    weights that do not come from the config's seed (a user's model, `init_state` such as
    rewind weights) become part of the run's identity, as do `masks`, `start_iteration`
    (continue the schedule from there) and `save_at` (which weight snapshots are kept).
    `subset` (indices into the training examples left after the validation split, e.g. a PrAC
    set) trains on those only. Hooks enter the run's identity by their `identity()`, unless
    `config.hooks` already describes them. `records` keeps per-example records (train/records.py) in the run folder.
    `compacted` (a channel multiple, e.g. 8) trains channel-structured `masks` as the physically
    compacted network (compact/training.py): the numbers of masked training with the completed masks
    (`complete_channel_masks`: a dropped channel's bias, BN entries and readers masked too) up to float
    rounding, at the smaller network's cost; hooks then see the compacted network. `trigger` mixes a
    keyed trigger set into the training examples (tickets/trigger.py); the run's id holds a digest of
    its key, so resuming it needs the key again.
    """
    config.train.validate()
    dev = resolve_device(str(device) if device is not None else config.device, config.train)
    config = replace(config, device=dev.type)
    config, dataset = _load_data(config, dataset, data_dir, download, progress)
    if subset is not None:
        subset = torch.as_tensor(subset)
        if subset.dtype == torch.bool or subset.is_floating_point() or subset.is_complex():
            # a boolean selection cast to integers would index examples 0 and 1 over and over
            raise TicketlabError(f"the training subset holds example indices (integers), got {subset.dtype}; pass "
                                 "mask.nonzero().flatten() for a boolean selection")
        subset = subset.long().flatten()
        config = replace(config, data=replace(config.data, subset=tensor_digest([subset])))
    config = _with_trigger(config, trigger, dataset, records)
    data = _prepare(config, dataset, subset, trigger)
    train_set, validation = data.train_set, data.validation
    config = replace(config, train=canonical_train(config.train, len(train_set.train_y)))
    if records:
        if config.train.drop_last:
            raise TicketlabError("per-example records need every example in every epoch; pass --no-drop-last")
        config = replace(config, kind="records" if config.kind == "train" else config.kind)
    extra_outputs = 1 if config.train.loss == "sat-selective" else 0
    config, model = _identify(config, dataset, model, init_state, masks, start_iteration, save_at, extra_outputs)
    check_batch_size(config.train.batch_size, len(train_set.train_y))  # before the store holds the run
    if masks:
        check_masks(model, masks)
    if hooks and not config.hooks:
        config = replace(config, hooks=";".join(filter(None, (hook.identity() for hook in hooks))))
    save_at = config.snapshots
    shrunk = None
    if compacted:
        if not masks or save_at:
            raise TicketlabError("compacted training needs channel masks and keeps no weight snapshots; "
                                 "train with masks only, or without compaction")
        from ticketlab.compact.channels import complete_channel_masks
        from ticketlab.compact.training import compacted_for_training

        # what the small network trains: a dropped channel's bias and BN entries, and the weights reading it,
        # are masked too (compaction removes them); the run is the masked run of these masks, and says so
        masks = complete_channel_masks(model, masks)
        shrunk = compacted_for_training(model, masks, compacted)
        config = replace(config, masks=mask_digest(masks), compacted=compacted)

    augment = default_augment(config.data, dataset, config.model.name)
    with store.claim(config) as record:
        if record.finished:
            return _reuse(record, model, dev)
        device_data = DeviceData(train_set.train_x, train_set.train_y, train_set.mean, train_set.std, dev, augment)
        from ticketlab.robust.outcome import sat_hook, sat_outcome  # robust's hooks subclass train's: import late

        loss_hook = sat_hook(config.train, data.train_set)
        recorder = None
        if records:
            from ticketlab.train.records import ExampleRecords

            classes = train_set.num_classes + extra_outputs
            recorder = ExampleRecords(len(train_set.train_y), classes, config.train.epochs)
        net, net_masks = (shrunk.small, shrunk.masks) if shrunk else (model, masks)
        all_hooks = ([MaskHook(net_masks)] if net_masks else []) + list(hooks) + [h for h in (loss_hook, recorder) if h]
        result = _fit(
            store, config, record, net, device_data, weights=shrunk.trained_state if shrunk else None,
            validation=validation, test=(dataset.test_x, dataset.test_y),
            hooks=all_hooks, loss_fn=loss_hook.loss if loss_hook else None, save_at=save_at,
            start_iteration=start_iteration, output_classes=dataset.num_classes if extra_outputs else None,
            progress=progress, description=description or f"{config.model.name} on {dataset.name}",
        )
        try:  # what follows training can still find a user error: then no half-written run either
            if shrunk is not None:
                model.load_state_dict(shrunk.trained_state())
                model.to(dev)
            if recorder is not None:
                recorder.save(record.folder / "records.safetensors")
            summary = _summary(config, model, result)
            if shrunk is not None:
                summary["trained_parameters"] = sum(p.numel() for p in net.parameters())
            if data.noise_rate is not None:
                summary["noise_rate"] = round(data.noise_rate, 6)
            if trigger is not None:
                from ticketlab.tickets.trigger import check

                summary["trigger_accuracy"] = check(model, trigger, train_set)["accuracy"]
            if loss_hook is not None:
                summary.update(sat_outcome(loss_hook, model, dataset, train_set, data.clean_train_y, record.folder,
                                           seed=config.train.seed, tta=config.train.tta))
        except (CorruptFileError, UnwritableFileError):  # a full disk keeps the trained run, as in _fit
            raise
        except TicketlabError:
            store.remove(config.run_id)
            raise
        store.finish(config.run_id, summary)
        (record.folder / "checkpoint.safetensors").unlink(missing_ok=True)  # finished: nothing to resume
        return RunResult(config.run_id, model, summary, result.history, record.folder, reused=False)


def _fit(store: RunStore, config: RunConfig, record: RunRecord, model: nn.Module, data: DeviceData, *,
         weights: Callable[[], dict[str, torch.Tensor]] | None = None, **options: Any) -> TrainResult:
    """Train a begun run to its end and write its weights (`weights()`, default the model's state)
    and history. A user error (an impossible setting the trainer finds, divergence) removes the
    run: nothing is left half-written. An unreadable checkpoint keeps it: the message tells the
    user how to discard it."""
    try:
        result = Trainer(model, data, config.train, checkpoint_dir=record.folder, **options).fit()
    except (CorruptFileError, UnwritableFileError):
        raise
    except TicketlabError:
        store.remove(config.run_id)
        raise
    write_tensors(record.folder / "final.safetensors", weights() if weights else model.state_dict())
    write_json(record.folder / "history.json", result.history)
    return result


def _reuse(record: RunRecord, model: nn.Module, dev: torch.device) -> RunResult:
    path = record.folder / "final.safetensors"
    try:
        model.load_state_dict(read_tensors(path))
    except RuntimeError as error:  # written for another version of the model's code, or edited
        raise unreadable(path, error) from None
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
    compacted: int = 0,
    model_options: Mapping[str, Any] | None = None,
    trigger: TriggerSet | None = None,
    **train_options: Any,
) -> RunResult:
    """Train a registered model by name, or your own `nn.Module`, on a dataset by name or object.

    `model_options` are the registered model's own options (e.g. fastnet's `widths`).
    `train_options` are `TrainConfig` fields (epochs, lr, batch_size, ...); fields you leave out
    take the model's recipe where it has one, else the `TrainConfig` defaults. `compacted=8`
    trains channel-structured `masks` as the compacted network (see `train_run`). `trigger` mixes a
    keyed trigger set into training, a black-box ownership mark (tickets/trigger.py).
    """
    name = model if isinstance(model, str) else type(model).__name__
    model_cfg = model_config(model, model_options)
    train_cfg = recipe_config(name if isinstance(model, str) else None, **train_options)
    data_cfg = data or DataConfig()
    if isinstance(dataset, str):
        data_cfg = replace(data_cfg, dataset=dataset)
        dataset_obj = None
    else:
        data_cfg = replace(data_cfg, dataset=dataset.name)
        dataset_obj = dataset
    config = RunConfig(data=data_cfg, model=model_cfg, train=train_cfg, device=resolve_device(device).type)
    return train_run(
        config, store=store if isinstance(store, RunStore) else RunStore(store),
        model=None if isinstance(model, str) else model, dataset=dataset_obj, masks=masks, hooks=hooks,
        save_at=save_at, data_dir=data_dir, download=download, device=device, progress=progress,
        compacted=compacted, trigger=trigger,
    )


def model_config(model: str | nn.Module, options: Mapping[str, Any] | None) -> ModelConfig:
    """The model part of a run's identity; options belong to registered models only (your own
    module is already built)."""
    if not isinstance(model, str):
        if options:
            raise TicketlabError(f"model_options apply to registered models; pass your {type(model).__name__} "
                                 f"built with the options you want instead")
        return ModelConfig(name=type(model).__name__, architecture=architecture_digest(model))
    return ModelConfig.of(model, options)


def recipe_config(model_name: str | None, **overrides: Any) -> TrainConfig:
    """TrainConfig from the model's published recipe, then explicit overrides."""
    from ticketlab.models import model_recipe

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TicketlabError(f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    recipe = {k: v for k, v in (model_recipe(model_name) if model_name else {}).items() if k in known}
    given = {k: v for k, v in overrides.items() if v is not None}
    if "epochs" in given:  # scaled below, before the config checks types; numpy's integers are whole numbers too
        if not isinstance(given["epochs"], numbers.Integral) or isinstance(given["epochs"], bool):
            raise TicketlabError(f"--epochs must be a whole number, got {given['epochs']!r}")
        given["epochs"] = int(given["epochs"])
    if "milestones" in given and not (isinstance(given["milestones"], (list, tuple)) and all(
            isinstance(m, numbers.Real) and not isinstance(m, bool) for m in given["milestones"])):
        raise TicketlabError(f"--milestones must be a list of epochs such as 80,120, got {given['milestones']!r}")
    values = {**recipe, **given}
    # a shorter run keeps the recipe's shape: its lr milestones and warm-up move with the epoch count
    if "epochs" in given and "epochs" in recipe:
        scale = given["epochs"] / recipe["epochs"]
        if "milestones" in recipe and "milestones" not in given:
            values["milestones"] = tuple(round(m * scale, 4) for m in recipe["milestones"])
        if "warmup_epochs" in recipe and "warmup_epochs" not in given:
            values["warmup_epochs"] = round(recipe["warmup_epochs"] * scale, 4)
    if "milestones" in values:
        values["milestones"] = tuple(float(m) for m in values["milestones"])
    config = TrainConfig(**values)
    check_given(config, set(given))
    return without_unused(config)
