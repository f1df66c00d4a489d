"""Typed, frozen run configuration and the run identity derived from it.

A run's id is a hash of its canonical configuration (the design of the field's reference
framework, OpenLTH): identical settings map to the same run, so a finished run is reused and an
interrupted one resumes. Only fields that differ from their defaults enter the hash, so adding a
new option with a default later does not change the id of any existing run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from ticketlab.errors import TicketlabError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "linear")
TTA_MODES = ("none", "flip", "flip_shift")
PRECISIONS = ("fp32", "bf16", "fp16")
LOSSES = ("ce", "sat", "sat-selective")
# ticket structures and refill channel rankings (Chen et al. 2022), here so the CLI lists them without torch
STRUCTURES = ("none", "channel", "group", "nm")
REFILL_CRITERIA = ("count", "l1", "activation", "taylor")
DST_METHODS = ("set", "rigl", "granet")  # dynamic sparse training (train/dynamic.py)


@dataclass(frozen=True)
class DataConfig:
    """What the model sees; where the files live is not part of a run's identity."""

    dataset: str = "mnist_subset"
    validation: int = 0  # training examples held out (stratified, fixed seed) for selection
    split_seed: int = 0
    crop_padding: int = -1  # -1: 4 for 32x32 colour images, 0 otherwise
    flip: bool | None = None  # None: on for colour images, off for grey (digits are not mirror-symmetric)
    cutout: int = 0  # side of the square cut out per image; 0 is off
    noise: str = ""  # label noise of the training labels, e.g. "uniform:0.4" (ticketlab.data.noise)
    noise_seed: int = 0  # the noisy labels stay fixed across training seeds
    noise_file: str = ""  # content digest of `file:` noise's label file
    subset: str = ""  # digest of the training examples used, when not all are (PrAC sets)
    trigger: str = ""  # a keyed trigger set mixed into training: its sizes and key digest (tickets/trigger.py)

    @property
    def draws_noise(self) -> bool:
        """Whether label noise is drawn (with `noise_seed`), rather than absent or read from a label file."""
        return bool(self.noise) and not self.noise.startswith("file:")

    def identity(self) -> DataConfig:
        """What enters the run id: a label file by its content, not by the path it was read from."""
        if self.noise.startswith("file:") and self.noise_file:
            return dataclasses.replace(self, noise="file:" + self.noise.rpartition(":")[2])
        return self

    def __post_init__(self) -> None:
        normalise_numbers(self)
        _check_types(self)
        if self.noise:
            from ticketlab.data.noise import canonical_noise  # the data package imports this module

            object.__setattr__(self, "noise", canonical_noise(self.noise))


@dataclass(frozen=True)
class ModelConfig:
    name: str = "lenet_300_100"
    kwargs: tuple[tuple[str, Any], ...] = ()  # sorted (key, value) pairs, so equal settings hash equally
    architecture: str = ""  # a user module's digest (class, layers, source), or a registered model's revision

    @classmethod
    def of(cls, name: str, options: Mapping[str, Any] | None = None) -> ModelConfig:
        """The config of registered model `name` built with `options`, in canonical form (sorted, defaults
        left out: `registry.canonical_options`), with the model's revision."""
        from ticketlab.models.registry import canonical_options, model_revision  # the registry imports this module

        return cls(name, tuple(sorted(canonical_options(name, options or {}).items())), model_revision(name))

    def kwargs_dict(self) -> dict[str, Any]:
        return dict(self.kwargs)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    drop_last: bool = False  # full batches only (airbench); off, every example is seen every epoch
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = ()  # epochs at which "step" multiplies the lr by gamma
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    lr_start: float = 0.0  # warm-up starts from this fraction of the lr
    lr_end: float = 0.0  # cosine and linear schedules end at this fraction of the lr
    bias_lr_scale: float = 1.0  # normalisation-layer biases: lr times this, weight decay divided by it
    lookahead_every: int = 0  # every n steps pull the weights onto their running average (0 is off)
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # 0 disables the weight EMA; evaluation uses the EMA weights when on
    ema_every: int = 5
    tta: str = "none"
    precision: str = "fp32"  # autocast dtype on CUDA; CPU always trains in fp32
    # fp16: 0 scales the loss dynamically (torch's GradScaler, which reads an overflow flag back every step);
    # a power of two scales it by that constant instead, with no host sync (unscaling a power of two is exact)
    loss_scale: float = 0.0
    compile: bool = False
    # CUDA: replay each step's forward and backward from CUDA graphs, so the host issues two launches
    # instead of a few hundred (the fast recipe's step is bound by the host, BENCHMARKS.md)
    cuda_graph: bool = False
    seed: int = 0
    loss: str = "ce"  # ce, sat (self-adaptive training) or sat-selective (with an abstain output)
    sat_alpha: float = 0.9  # SAT's target momentum
    sat_start: int = 60  # SAT's first epoch (0-based); plain cross-entropy before it

    def __post_init__(self) -> None:
        normalise_numbers(self)
        _check_types(self)  # before anything compares them: a string lr would fail there as a TypeError
        if all(type(m) is float for m in self.milestones):
            object.__setattr__(self, "milestones", tuple(sorted(self.milestones)))  # one schedule, one id

    def validate(self) -> None:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("tta", self.tta, TTA_MODES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("loss", self.loss, LOSSES)
        if self.loss != "ce":
            if not 0 <= self.sat_alpha < 1:
                raise TicketlabError(f"--sat-alpha must be in [0, 1), got {self.sat_alpha}")
            if not 0 <= self.sat_start < self.epochs:
                raise TicketlabError(
                    f"--sat-start {self.sat_start} is not inside training ({self.epochs} epochs), so self-adaptive "
                    f"training would never start; pass --sat-start below --epochs (published: 60 of 200)"
                )
        if self.epochs < 1:
            raise TicketlabError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise TicketlabError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise TicketlabError(f"--lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise TicketlabError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise TicketlabError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.loss_scale != 0 and not (self.loss_scale > 0 and math.frexp(self.loss_scale)[0] == 0.5):
            raise TicketlabError(f"--loss-scale must be 0 (dynamic) or a power of two such as 1024, got "
                                 f"{self.loss_scale:g}: unscaling by a power of two is exact")
        if self.loss_scale != 0 and not 2.0**-24 <= self.loss_scale <= 2.0**24:  # past fp16's range either way
            raise TicketlabError(f"--loss-scale must be from 2^-24 to 2^24 (fp16's range; 1024 is usual), got "
                                 f"{self.loss_scale:g}")
        if self.cuda_graph and self.compile:
            raise TicketlabError("--cuda-graph and --compile both remove the host's per-operation work; pass one "
                                 "(torch.compile's mode 'reduce-overhead' makes CUDA graphs of its own)")
        if not 0 <= self.label_smoothing < 1:
            raise TicketlabError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.ema_decay < 1:
            raise TicketlabError(f"--ema must be in [0, 1), got {self.ema_decay}")
        if self.ema_every < 1:
            raise TicketlabError(f"ema_every must be at least 1, got {self.ema_every}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise TicketlabError(
                f"--warmup must be in [0, epochs={self.epochs}), got {self.warmup_epochs}"
            )
        for flag, value in (("--lr-start", self.lr_start), ("--lr-end", self.lr_end)):
            if not 0 <= value <= 1:
                raise TicketlabError(f"{flag} is a fraction of --lr in [0, 1], got {value}")
        if not self.bias_lr_scale > 0:
            raise TicketlabError(f"--bias-lr-scale must be positive, got {self.bias_lr_scale}")
        if self.lookahead_every < 0:
            raise TicketlabError(f"--lookahead must be >= 0 steps (0 is off), got {self.lookahead_every}")
        if not self.gamma > 0:
            raise TicketlabError(f"--gamma multiplies the lr at each milestone and must be positive, got {self.gamma}")
        if self.schedule == "step" and not self.milestones:
            raise TicketlabError("--schedule step needs --milestones, e.g. --milestones 80,120")
        bad = [m for m in self.milestones if not 0 < m < self.epochs]
        if bad:
            raise TicketlabError(f"--milestones must lie inside (0, epochs={self.epochs}); got {bad}")


# the command-line flags whose names are not the field's
_FLAGS = {"warmup_epochs": "--warmup", "lookahead_every": "--lookahead", "ema_decay": "--ema"}


def _flag(name: str) -> str:
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def normalise_numbers(config: Any) -> None:
    """One form for equal settings written differently (1, 1.0 and numpy's 1.0; 1 and True), so they
    hash alike; values of the wrong kind are left for `_check_types` to name."""
    def number(value: Any, kind: type) -> Any:
        fits = numbers.Integral if kind is int else numbers.Real
        return kind(value) if isinstance(value, fits) and not isinstance(value, bool) else value

    for f in fields(config):
        value = getattr(config, f.name)
        if f.type in ("int", "float"):
            value = number(value, int if f.type == "int" else float)
        elif f.type == "bool" and isinstance(value, int) and value in (0, 1):
            value = bool(value)
        elif f.type == "tuple[float, ...]" and isinstance(value, (list, tuple)):
            value = tuple(number(v, float) for v in value)
        object.__setattr__(config, f.name, value)


def _check_types(config: Any) -> None:
    """Whole numbers where counts go and finite numbers elsewhere: a NaN or 2.5 epochs would otherwise
    surface later as divergence or a type error far from its cause."""
    for f in fields(config):
        value, flag = getattr(config, f.name), _flag(f.name)
        if f.type == "int" and type(value) is not int:
            raise TicketlabError(f"{flag} must be a whole number, got {value!r}")
        if f.type == "bool" and type(value) is not bool:
            raise TicketlabError(f"{flag} must be true or false, got {value!r}")
        if f.type == "tuple[float, ...]" and not isinstance(value, tuple):
            raise TicketlabError(f"{flag} must be a list of numbers, got {value!r}")
        for v in value if f.type == "tuple[float, ...]" else (value,) if f.type == "float" else ():
            if type(v) is not float or not math.isfinite(v):
                raise TicketlabError(f"{flag} must be a finite number, got {value!r}")


# Options that act only under another setting: given explicitly without it, they would be ignored.
_ONLY_WITH: dict[str, tuple[Any, str]] = {
    "milestones": (lambda c: c.schedule == "step", "--schedule step"),
    "gamma": (lambda c: c.schedule == "step", "--schedule step"),
    "lr_end": (lambda c: c.schedule in ("cosine", "linear"), "--schedule cosine or linear"),
    "lr_start": (lambda c: c.warmup_epochs > 0, "--warmup"),
    "momentum": (lambda c: c.optimizer == "sgd", "--optimizer sgd"),
    "nesterov": (lambda c: c.optimizer == "sgd" and c.momentum > 0, "--optimizer sgd with --momentum above 0"),
    "ema_every": (lambda c: c.ema_decay > 0, "--ema"),
    "loss_scale": (lambda c: c.precision == "fp16", "--precision fp16"),  # fp32 and bf16 need no scaling
    "sat_alpha": (lambda c: c.loss != "ce", "--loss sat or sat-selective"),
    "sat_start": (lambda c: c.loss != "ce", "--loss sat or sat-selective"),
    "label_smoothing": (lambda c: c.loss == "ce", "--loss ce"),  # SAT's targets are its own soft labels
}


def scaled_train(cfg: TrainConfig, fraction: float) -> TrainConfig:
    """Epochs, milestones, warm-up and SAT's start scaled by `fraction` (at least one epoch), so the schedule
    keeps its shape: a PrAC search on part of the data runs shorter, a scratch baseline's budget longer."""
    epochs = max(1, round(cfg.epochs * fraction))
    scale = epochs / cfg.epochs
    milestones = tuple(m for m in (round(m * scale, 4) for m in cfg.milestones) if 0 < m < epochs)
    schedule = cfg.schedule if milestones or cfg.schedule != "step" else "constant"
    sat_start = min(round(cfg.sat_start * scale), epochs - 1) if cfg.loss != "ce" else cfg.sat_start
    return dataclasses.replace(cfg, epochs=epochs, milestones=milestones, schedule=schedule,
                               warmup_epochs=min(cfg.warmup_epochs * scale, epochs * 0.5), sat_start=sat_start)


def check_given(config: TrainConfig, given: set[str]) -> None:
    """Refuse options the user set that this configuration would silently ignore."""
    for name in sorted(given & set(_ONLY_WITH)):
        applies, needs = _ONLY_WITH[name]
        if not applies(config):
            flag = "--" + name.replace("_", "-")
            raise TicketlabError(f"{flag} has no effect without {needs}; drop it or add {needs}")


def without_unused(config: TrainConfig) -> TrainConfig:
    """`config` with the settings that do not act under it (a recipe's label smoothing under --loss sat, its
    milestones under --schedule cosine) back at their defaults, so a stored config says what trained and equal
    trainings share one id; `check_given` refuses the user's own first. A schedule that never moves the lr
    (a warm-up from 1, a decay to 1, steps of gamma 1) is the constant one: the same factor, exactly 1.0, at
    every step."""
    if config.warmup_epochs > 0 and config.lr_start == 1.0:
        config = dataclasses.replace(config, warmup_epochs=0.0)
    if (config.schedule in ("cosine", "linear") and config.lr_end == 1.0) or (
            config.schedule == "step" and config.gamma == 1.0):
        config = dataclasses.replace(config, schedule="constant")
    defaults = TrainConfig()
    unused = {name: getattr(defaults, name) for name, (applies, _) in _ONLY_WITH.items() if not applies(config)}
    return dataclasses.replace(config, **unused)


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a training run's numbers.

    `init` and `masks` are digests of tensors handed in through the Python API (starting
    weights, pruning masks), so two runs from different starting points never share an id.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    device: str = "cpu"  # the device type; numbers are reproducible per device, not across
    init: str = ""
    masks: str = ""
    start: int = 0  # first iteration trained: k > 0 continues a schedule from a rewind point
    snapshots: tuple[int, ...] = ()  # iterations whose weights are kept (rewinding needs them)
    hooks: str = ""  # canonical description of hooks that change the numbers (early-bird stopping)
    kind: str = "train"
    # Trained in one batched step with other networks (train/stacked.py): the same numbers as
    # training alone up to float rounding, so not claimed to be the same run.
    stacked: bool = False
    members: tuple[str, ...] = ()  # a stacked group run: the ids of the runs it trains together
    # Trained as the physically compacted network, widths padded to this multiple (compact/training.py):
    # the masked run's numbers up to float rounding, so not claimed to be the same run. 0: not compacted.
    compacted: int = 0

    @property
    def run_id(self) -> str:
        return run_id(self)


def _choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TicketlabError(f"unknown {flag} {value!r}; choose one of: {', '.join(choices)}")


def _default(f: dataclasses.Field) -> Any:
    """A field's default value, or MISSING for a required field (which always enters the hash)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _canonical(value: Any) -> Any:
    if isinstance(value, DataConfig):
        value = value.identity()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in fields(value):
            v = getattr(value, f.name)
            default = _default(f)
            if v == default and not dataclasses.is_dataclass(v):
                continue
            c = _canonical(v)
            if c != {}:
                out[f.name] = c
        return out
    if isinstance(value, (tuple, list)):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        # repr round-trips exactly, so 0.1 and 1e-1 hash the same and no precision is lost (numpy's floats
        # are floats whose repr names their type)
        return float(repr(float(value)))
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """The full configuration as JSON-ready data (all fields, for storing and showing)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def canonical_json(config: Any) -> str:
    """Only non-default fields, sorted: the text the run id is a hash of."""
    try:
        return json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as error:  # a model option that is an object, not plain data
        raise TicketlabError(f"a setting cannot be part of a run's identity ({error}); give options as plain "
                             "numbers, strings, booleans or lists of them") from None


def run_id(config: Any) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples frozen configs hold (hashable, comparable)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from `to_dict` output; unknown keys are an error."""
    kwargs = {}
    names = {f.name: f for f in fields(cls)}
    for key, value in data.items():
        if key not in names:
            raise TicketlabError(f"unknown setting {key!r} for {cls.__name__}; known: {', '.join(names)}")
        f = names[key]
        if isinstance(f.type, type) and dataclasses.is_dataclass(f.type):
            value = from_dict(f.type, value)
        elif dataclasses.is_dataclass(_default(f)):
            value = from_dict(type(_default(f)), value)
        elif isinstance(value, list):
            value = _tuples(value)
        kwargs[key] = value
    return cls(**kwargs)
