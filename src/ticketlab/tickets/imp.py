"""Iterative magnitude pruning with rewinding: find a ticket and the evidence that it wins.

Level 0 trains the dense network from its saved initialisation and keeps its weights at the
rewind point k. Each level L >= 1 prunes `fraction` of the remaining weights of the network
that finished level L-1 (global or layer-wise magnitude), resets the survivors to their values
at k, and retrains from iteration k with the schedule and data order fast-forwarded
(Frankle et al. 2020, "Linear mode connectivity"). Beside every ticket, the selected baselines train with the same seed.

Every training is an ordinary stored run whose identity includes its starting weights and
masks, so a study is resumable for free: re-running recomputes the (deterministic) masks,
reuses every finished run and resumes the interrupted one.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ticketlab.compact.training import TRAIN_MULTIPLE
from ticketlab.config import (
    REFILL_CRITERIA,
    STRUCTURES,
    DataConfig,
    RunConfig,
    TrainConfig,
    normalise_numbers,
    run_id,
    scaled_train,
    without_unused,
)
from ticketlab.data import ImageDataset, load_dataset
from ticketlab.data.augment import normalize
from ticketlab.data.batches import check_batch_size, steps_per_epoch, stream_seed
from ticketlab.data.noise import noise_file_digest
from ticketlab.data.split import check_held_out
from ticketlab.errors import TicketlabError
from ticketlab.models.common import OwnInit
from ticketlab.sparsity import (
    apply_masks,
    density_report,
    ends,
    magnitude,
    prune_fraction,
    save_masks,
    select_prunable,
)
from ticketlab.store import RunStore, read_tensors, writable, write_json
from ticketlab.store.files import atomic_write
from ticketlab.tickets.baselines import BASELINES, Arm, LevelContext
from ticketlab.tickets.constant_units import constant_units, drop_constant_units
from ticketlab.tickets.earlybird import EARLY_BIRD_WINDOW, EarlyBird
from ticketlab.tickets.prac import from_records, load_prac, prac_indices, predictions
from ticketlab.tickets.rewind import rewind_iteration
from ticketlab.tickets.structured import Structure, parse_nm
from ticketlab.tickets.ticketfile import save_ticket
from ticketlab.tickets.verdict import summarise
from ticketlab.train.optim import lr_factor
from ticketlab.train.records import ExampleRecords
from ticketlab.train.run import (
    RunResult,
    canonical_data,
    canonical_train,
    dataset_identity,
    initial_model,
    model_config,
    recipe_config,
    resolve_device,
    tensor_digest,
    train_run,
    training_part,
)
from ticketlab.train.stacked import check_stackable
from ticketlab.train.stacked_run import Member, train_stacked
from ticketlab.train.trainer import check_stacked_training

SCOPES = ("global", "layerwise")


@dataclass(frozen=True)
class TicketConfig:
    levels: int = 5
    fraction: float = 0.2  # of the remaining weights, per level: density 0.8^L
    output_fraction: float = -1.0  # layer-wise only: the classifier's own rate (LeNet: 0.1); -1 = fraction
    scope: str = "global"
    rewind: str = "0"  # 0, <n>it or <n>ep
    exclude_first: bool = False
    exclude_last: bool = False
    keep_streams: bool = False  # never prune the layers writing a residual stream (select_prunable)
    baselines: tuple[str, ...] = ("reinit", "random")
    seeds: int = 1
    structure: str = "none"  # none, channel (refill), group (regroup) or nm
    refill_rate: float = 0.0  # channel: r of refill+ (0 = the unstructured mask's parameter count)
    refill_criterion: str = "count"  # channel: how channels are ranked (structure.REFILL_CRITERIA)
    refill_multiple: int = 1  # channel: keep the nearest multiple of this many channels per layer (16: AVX-512)
    nm: str = "2:4"  # nm: N of every M weights kept
    data: str = "full"  # full, or prac: search each level on its PrAC set (tickets/prac.py)
    prac_file: str = ""  # a saved PrAC set to use instead of this dense run's (transfer across models)
    prac_digest: str = ""  # prac_file's content hash (find_ticket fills it in): another file there, another study
    early_bird: float = 0.0  # > 0: stop a search run once its next mask moves less than this (You et al. 0.08)
    stack: bool = False  # train each level's arms together in one batched step (train/stacked_run.py)
    compact_training: bool = True  # channel: train tickets and baselines physically compacted (compact/training.py)

    def __post_init__(self) -> None:
        normalise_numbers(self)  # numpy's numbers, as a sweep makes them, hash like Python's
        if isinstance(self.baselines, (tuple, list)):  # one order, one study: the default's arms first, then by name
            first = TicketConfig.baselines
            object.__setattr__(self, "baselines", tuple(sorted(
                self.baselines, key=lambda b: (first.index(b) if b in first else len(first), str(b)))))

    def validate(self) -> None:
        for name in ("levels", "seeds"):  # counted with range(): 2.0 would fail after the dense run has trained
            if type(getattr(self, name)) is not int:
                raise TicketlabError(f"--{name} must be a whole number, got {getattr(self, name)!r}")
        if self.levels < 1:
            raise TicketlabError(f"--levels must be at least 1, got {self.levels}")
        if not 0 < self.fraction < 1:
            raise TicketlabError(f"--fraction must be in (0, 1), got {self.fraction}")
        if self.output_fraction != -1.0:
            if not 0 < self.output_fraction < 1:
                raise TicketlabError(f"--output-fraction must be in (0, 1), got {self.output_fraction}")
            if self.scope != "layerwise":
                raise TicketlabError("--output-fraction needs --scope layerwise (global pruning has one rate)")
            if self.exclude_last:
                raise TicketlabError("--output-fraction is the classifier's rate, and --exclude-last keeps the "
                                     "classifier unpruned; pass one of them")
        if self.scope not in SCOPES:
            raise TicketlabError(f"unknown --scope {self.scope!r}; choose one of: {', '.join(SCOPES)}")
        if self.seeds < 1:
            raise TicketlabError(f"--seeds must be at least 1, got {self.seeds}")
        for name in self.baselines:
            BASELINES.get(name)
        if len(set(self.baselines)) != len(self.baselines):
            raise TicketlabError(f"--baselines names an arm twice ({','.join(self.baselines)}); name each once")
        if self.stack and not self.compact_training:
            raise TicketlabError("--no-compact-training has no effect with --stack: stacked arms always train masked "
                                 "at full size; drop one of them")
        if self.structure not in STRUCTURES:
            raise TicketlabError(f"unknown --structure {self.structure!r}; choose one of: {', '.join(STRUCTURES)}")
        if self.structure != "channel" and (self.refill_rate != 0.0 or self.refill_criterion != "count"):
            raise TicketlabError("--refill-rate and --refill-criterion shape channel tickets; add --structure channel")
        if not 0 <= self.refill_rate < 1:
            raise TicketlabError(f"--refill-rate must be in [0, 1), got {self.refill_rate}")
        if type(self.refill_multiple) is not int or self.refill_multiple < 1:  # before any training, not at pruning
            raise TicketlabError(f"--refill-multiple must be a positive integer (1 keeps the exact count; 16 suits "
                                 f"AVX-512 CPUs, 8 tensor cores), got {self.refill_multiple}")
        if self.structure != "channel" and self.refill_multiple != 1:
            raise TicketlabError("--refill-multiple rounds the channel counts of channel tickets; "
                                 "add --structure channel")
        if self.refill_criterion not in REFILL_CRITERIA:
            raise TicketlabError(f"unknown --refill-criterion {self.refill_criterion!r}; "
                                 f"choose one of: {', '.join(REFILL_CRITERIA)}")
        parse_nm(self.nm)
        if self.data not in ("full", "prac"):
            raise TicketlabError(f"unknown --data {self.data!r}; choose full or prac")
        if self.prac_file and self.data != "prac":
            raise TicketlabError("--prac-file gives a PrAC set; add --data prac to search on it")
        if not 0 <= self.early_bird < 1:
            raise TicketlabError(f"--early-bird is a mask-distance threshold in (0, 1) (published 0.08), "
                                 f"got {self.early_bird}")
        if not self.compact_training and self.structure != "channel":
            raise TicketlabError("--no-compact-training concerns channel tickets only; add --structure channel")
        if self.structure == "nm" and self.levels != 1:
            raise TicketlabError(f"an N:M mask has one fixed density ({self.nm} keeps {self.nm.replace(':', ' of ')}), "
                                 f"so --structure nm takes --levels 1, got {self.levels}")
        if self.structure == "nm" and not self.early_bird:  # early-bird's would-be masks prune by fraction and scope
            default = TicketConfig()
            flags = {"fraction": "--fraction", "scope": "--scope", "output_fraction": "--output-fraction",
                     "exclude_last": "--exclude-last"}
            idle = [flag for name, flag in flags.items() if getattr(self, name) != getattr(default, name)]
            if idle:
                raise TicketlabError(f"{idle[0]} has no effect under --structure nm: the ticket keeps {self.nm} of "
                                     "every layer it fits, whatever the fraction or scope, and the classifier stays "
                                     f"dense; drop {idle[0]}")


@dataclass(frozen=True)
class StudyConfig:
    run: RunConfig
    tickets: TicketConfig = field(default_factory=TicketConfig)
    kind: str = "find"

    @property
    def run_id(self) -> str:
        return run_id(self)


@dataclass
class _Search:
    result: RunResult
    prac_fraction: float | None
    iterations: int  # iterations the search trained (from its start)


@dataclass
class _Chain:
    """One seed's IMP chain: its dense run, and what the next level prunes from."""

    s: int
    run: RunConfig
    tag: str
    dense: RunResult
    rewind_state: dict[str, torch.Tensor]
    dense_final: dict[str, torch.Tensor]
    hard: torch.Tensor | None  # PrAC: the dense run's hard-to-memorise examples
    trained: nn.Module  # the network the next level's magnitudes come from
    weights: dict[str, torch.Tensor]  # the surviving weights so far
    previous: dict[str, torch.Tensor]  # trained.state_dict()
    results: list[dict[str, Any]] = field(default_factory=list)  # per level, level 0 first
    masks: list[dict[str, torch.Tensor]] = field(default_factory=list)  # per level, level 1 first


@dataclass
class _Level:
    """A level of one chain, pruned, with the arms still to train."""

    level: int
    masks: dict[str, torch.Tensor]
    density: float
    folder: Path
    what: str
    search: _Search | None
    to_train: dict[str, Arm]
    constant_units_dropped: int = 0
    mask_density: float = 1.0  # of the masks before completion: whole rows, as refill budgets (and papers count)


@dataclass
class StudyResult:
    study_id: str
    summary: dict[str, Any]  # what `ticketlab find --json` prints
    masks: list[dict[str, torch.Tensor]]  # the ticket's masks per level (first seed), level 1 first
    folder: Path


def _user_init(model: nn.Module, key: str, seed: int) -> dict[str, torch.Tensor]:
    """A user's module re-initialised, seeded: by its own `reset_parameters` where the module has one, else
    each submodule's children first and then its own `reset_parameters`, so a block's own init wins over its
    layers' defaults; a zoo net inside it draws its whole init itself (`OwnInit`)."""
    fresh = copy.deepcopy(model)

    def reset(module: nn.Module) -> None:
        if not isinstance(module, OwnInit):
            for child in module.children():
                reset(child)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(key, seed))
        if hasattr(fresh, "reset_parameters"):
            fresh.reset_parameters()
        else:
            reset(fresh)
    return fresh.state_dict()


def _init_mismatch(model: nn.Module) -> list[str]:
    """Parameters of a user's module whose re-drawn values come from another distribution than its own: another
    spread (by more than 1.5x), another constant (a zero-initialised BatchNorm scale re-drawn as ones), random
    where they were constant, or not re-drawn at all (no `reset_parameters` reaches them, so every seed and
    the fresh-init arms share seed 0's values). Then other seeds and those arms would not start as seed 0 did."""
    fresh = _user_init(model, "init", 1)
    odd = []
    for name, p in model.named_parameters():
        own, drawn = p.detach().float(), fresh[name].float()
        spread = (own.std().item(), drawn.std().item()) if own.numel() > 1 else (0.0, 0.0)
        if torch.equal(own, drawn):
            if spread[0] > 0:  # random values drawn again the same: never re-drawn
                odd.append(name)
        elif spread[0] > 0 and spread[1] > 0:  # the spread of a few values (a 10-class bias) says little
            if own.numel() >= 64 and not 2 / 3 <= spread[1] / spread[0] <= 3 / 2:
                odd.append(name)
        elif not torch.allclose(own, drawn, rtol=0.0, atol=1e-6):  # a constant on one side
            odd.append(name)
    return odd


def _arm_run(run: RunConfig, arm: Arm, steps: int) -> RunConfig:
    """The run an arm trains: the study's, its schedule scaled to the arm's own length, or (`final_lr`)
    a constant learning rate at the schedule's last value (`steps` per epoch)."""
    train = run.train
    if arm.final_lr:
        last = lr_factor(train, steps * train.epochs - 1, steps)
        train = without_unused(replace(train, lr=train.lr * last, schedule="constant", warmup_epochs=0.0))
    if arm.epochs is not None and arm.epochs != train.epochs:
        train = scaled_train(train, arm.epochs / train.epochs)
    return run if train == run.train else replace(run, train=train)


class _Study:
    """One study's fixed inputs, so each step below is a short method."""

    def __init__(self, config: StudyConfig, store: RunStore, dataset: ImageDataset, user_model: nn.Module | None,
                 device: str, progress: bool) -> None:
        self.config, self.store, self.dataset = config, store, dataset
        self.user_model, self.device, self.progress = user_model, device, progress
        self.t = config.tickets
        probe = self._model(config.run)
        self.probe = probe  # its Conv2d/Linear weights are what densities are quoted over
        self.names = list(select_prunable(probe, exclude_first=self.t.exclude_first, exclude_last=self.t.exclude_last,
                                          keep_streams=self.t.keep_streams))
        n_train = len(dataset.train_y) - config.run.data.validation  # study_config checked the batch size fits
        steps = steps_per_epoch(n_train, config.run.train.batch_size, config.run.train.drop_last)
        self.k = rewind_iteration(self.t.rewind, steps, steps * config.run.train.epochs)
        self.seconds = 0.0
        self.structure = Structure(self.t.structure, probe, self.names, refill_rate=self.t.refill_rate,
                                   refill_criterion=self.t.refill_criterion, nm=self.t.nm,
                                   refill_multiple=self.t.refill_multiple)
        weights = sum(p.numel() for n, p in probe.named_parameters() if n in self.names)
        if self.t.structure != "nm" and weights * (1 - self.t.fraction) ** self.t.levels < 1:  # before any training
            raise TicketlabError(f"{self.t.levels} levels pruning {self.t.fraction:g} each leave less than one of the "
                                 f"{weights} prunable weights; lower --levels or --fraction")
        if self.t.structure == "nm":  # a pattern that fits no layer is refused before the dense run trains
            self.structure.nm_masks({n: p.detach() for n, p in probe.named_parameters() if n in self.names})
        self.input_shape = dataset.image_shape
        if self.t.stack:  # dropout or tied weights are refused before the dense runs train
            check_stackable(probe, self.input_shape)
        self.prac = self.t.data == "prac"
        self._dense_predictions: tuple[RunResult, torch.Tensor] | None = None
        self.n_train = n_train
        self.steps = steps
        # a saved PrAC set is checked before anything trains, so a wrong file costs nothing
        self.saved_hard = None
        if self.t.prac_file:
            data = config.run.data
            expected = {"dataset": dataset_identity(dataset), "validation": data.validation,
                        "split_seed": data.split_seed, "noise": data.noise, "noise_seed": data.noise_seed}
            self.saved_hard = load_prac(self.t.prac_file, n_train, expected).hard
        # masked arms train as the compacted network: the same numbers up to float rounding, faster
        self.compacted = TRAIN_MULTIPLE if self.structure.compactable and self.t.compact_training else 0

    @functools.cached_property
    def train_set(self) -> ImageDataset:
        """The examples the study's runs train on, in their order and with their labels (label noise
        applied before the validation split, as the runs do): PrAC indices and score batches index them."""
        return training_part(self.config.run, self.dataset)

    def _score_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """256 training examples (never validation or test) for activation-based channel criteria, drawn with a
        fixed seed: the first ones of a split sorted by class would all be one class."""
        ds = self.train_set
        mean = torch.tensor(ds.mean, dtype=torch.float32)
        std = torch.tensor(ds.std, dtype=torch.float32)
        chosen = torch.randperm(len(ds.train_y), generator=torch.Generator().manual_seed(0))[:256].sort().values
        return normalize(ds.train_x[chosen], mean, std), ds.train_y[chosen].long()

    def _structured(self, masks: dict[str, torch.Tensor], trained: nn.Module,
                    live: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.structure.active:
            return masks
        batch = self._score_batch() if self.structure.needs_batch() else None
        return self.structure.apply(masks, trained.cpu(), batch, live)

    def _live_structured(self, live: dict[str, torch.Tensor]) -> Callable[[dict, nn.Module], dict]:
        """`_structured` for a model still training (early-bird), from the level's masks `live`: scored on a CPU
        copy, the model left alone."""
        def structured(masks: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
            masks = {n: m.cpu() for n, m in masks.items()}
            probe = copy.deepcopy(model).cpu() if self.structure.needs_model() else None
            batch = self._score_batch() if self.structure.needs_batch() else None
            return self.structure.apply(masks, probe, batch, live)
        return structured

    def _model(self, run: RunConfig) -> nn.Module:
        return copy.deepcopy(self.user_model) if self.user_model is not None else initial_model(run, self.dataset)

    @functools.cached_property
    def _layer_fractions(self) -> dict[str, float] | None:
        if self.t.output_fraction == -1.0:
            return None
        _, classifier = ends(self.probe)  # traced once per study, not at every level
        return {n: self.t.output_fraction if n == classifier else self.t.fraction for n in self.names}

    def train(self, run: RunConfig, what: str, **kwargs: Any) -> RunResult:
        result = train_run(run, store=self.store, model=self._model(run) if self.user_model is not None else None,
                           dataset=self.dataset, device=self.device, progress=self.progress, description=what, **kwargs)
        self.seconds += result.summary["train_seconds"]
        return result

    def begin(self, s: int) -> _Chain:
        """Seed s's chain: its dense run (level 0), with the weights its tickets rewind to."""
        run = replace(self.config.run, train=replace(self.config.run.train, seed=self.config.run.train.seed + s))
        tag = f"seed {run.train.seed} ({s + 1}/{self.t.seeds})"
        if self.user_model is not None:
            init = self.user_model.state_dict() if s == 0 else _user_init(self.user_model, "init", run.train.seed)
        else:
            init = None
        dense = self.train(run, f"{tag} dense", init_state=init, save_at=(self.k,), records=self.prac)
        dense_final = dense.model.state_dict()
        chain = _Chain(s, run, tag, dense, read_tensors(dense.folder / "weights" / f"it_{self.k}.safetensors"),
                       dense_final, self._hard_examples(dense) if self.prac else None, dense.model,
                       {n: torch.ones_like(dense_final[n], dtype=torch.bool) for n in self.names}, dense_final)
        chain.results.append(self._record(0, 1.0, {"ticket": dense}))
        _log(f"{tag} level 0 (dense): test {dense.summary['test_accuracy']:.2%}")
        return chain

    def _fresh_init(self, run: RunConfig) -> dict[str, torch.Tensor]:
        if self.user_model is not None:
            return _user_init(self.user_model, "reinit", run.train.seed)
        return initial_model(run, self.dataset, stream="reinit").state_dict()

    def prune(self, chain: _Chain, level: int) -> _Level:
        """The level's masks (saved), its search run if any, and the arms left to train."""
        previous = {n: chain.previous[n] for n in self.names}
        if self.structure.kind == "nm":
            weights = self.structure.nm_masks(previous)
        else:
            weights = prune_fraction(magnitude(previous), chain.weights, self.t.fraction, self.t.scope,
                                     self._layer_fractions)
            weights = self._structured(weights, chain.trained, chain.weights)
        weights, dropped = self._without_constant_units(weights, chain.rewind_state, chain.trained)
        if not any(bool(w.any()) for w in weights.values()):  # nothing left to train, rank or compare
            raise TicketlabError(f"level {level} keeps none of the prunable weights ({self.t.fraction:g} of them "
                                 f"pruned per level); lower --levels (now {self.t.levels}) or --fraction")
        masks = self.structure.complete(weights)  # + the BN/bias entries of removed channels, and dead weights
        # the next level prunes its fraction of what this one keeps alive
        chain.weights = {n: masks[n] for n in weights}
        # what the ticket keeps: a channel ticket's completed masks also drop the weights that read removed
        # channels, which `weights` (whole rows, refill's budget) still holds
        report = self._density_report(masks)
        folder = self.store.folder(self.config.run_id) / f"seed_{chain.run.train.seed}" / f"level_{level}"
        save_masks(folder / "masks.safetensors", masks)
        write_json(folder / "density.json", report)
        density = report["total"]["density"]
        what = f"{chain.tag} level {level}/{self.t.levels} ({density:.1%} left)"
        search = self._search(chain.run, what, chain.rewind_state, masks, chain.weights, chain.trained, chain.dense,
                              chain.hard)
        to_train = {} if search is not None and not self.prac else {"ticket": Arm(chain.rewind_state, masks, self.k)}
        full = self.steps * self.config.run.train.epochs  # the dense run; each level retrains from the rewind point
        spent = -(-(full + level * (full - self.k)) // self.steps)  # in whole epochs, rounded up
        ctx = LevelContext(chain.run.train.seed, level, self.t.scope, weights, chain.rewind_state, self.k,
                           chain.dense_final, chain.previous, lambda: self._fresh_init(chain.run), spent)
        for name in self.t.baselines:
            arm = BASELINES.get(name)(ctx)
            # a baseline that draws its own mask gets the ticket's structure and budget too: random channels, ...
            arm_weights = weights
            if arm.masks is not weights:
                arm_weights = self.structure.like(arm.masks, weights, arm.scores, ctx.generator(f"{name}-structure"))
            arm_weights, _ = self._without_constant_units(arm_weights, arm.init_state, chain.trained)
            arm_masks = masks if arm_weights is weights else self.structure.complete(arm_weights)
            to_train[name] = replace(arm, masks=arm_masks, scores=None)
        if dropped:
            _log(f"{what}: dropped {dropped} kept filters that are constant at the rewind point "
                 "(BatchNorm cannot normalise them; see ticketlab.tickets.constant_units)")
        mask_density = self._density(weights)
        return _Level(level, masks, density, folder, what, search, to_train, dropped, mask_density)

    def _without_constant_units(self, weights: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                                model: nn.Module) -> tuple[dict[str, torch.Tensor], int]:
        """`weights` less the kept filters that start constant from `state` (and how many)."""
        constant = constant_units(model, self.structure.complete(weights), state, self._score_batch()[0])
        return drop_constant_units(weights, constant), sum(int(rows.sum()) for rows in constant.values())

    def train_arms(self, levels: list[tuple[_Chain, _Level]]) -> list[dict[str, RunResult]]:
        """The arms of one level of each chain: one by one, or (`stack`) all those that start at
        one iteration, of every chain, in one batched step."""
        if not self.t.stack:
            return [{name: self.train(_arm_run(chain.run, arm, self.steps), f"{lv.what} {name}",
                                      init_state=arm.init_state, masks=arm.masks, start_iteration=arm.start,
                                      compacted=self.compacted)
                     for name, arm in lv.to_train.items()}
                    for chain, lv in levels]
        out: list[dict[str, RunResult]] = [{} for _ in levels]
        entries = [(i, name, arm) for i, (_, lv) in enumerate(levels) for name, arm in lv.to_train.items()]
        for start, epochs, final_lr in dict.fromkeys((arm.start, arm.epochs, arm.final_lr) for _, _, arm in entries):
            group = [(i, name, arm) for i, name, arm in entries
                     if (arm.start, arm.epochs, arm.final_lr) == (start, epochs, final_lr)]
            names = sorted({name for _, name, _ in group})
            what = levels[0][1].what if len(levels) == 1 else f"level {levels[0][1].level}/{self.t.levels}"
            members = [Member(arm.init_state, arm.masks, seed=levels[i][0].run.train.seed) for i, _, arm in group]
            results = train_stacked(_arm_run(self.config.run, group[0][2], self.steps), members, store=self.store,
                                    model=self.user_model, dataset=self.dataset, start_iteration=start,
                                    device=self.device, progress=self.progress,
                                    description=f"{what} {'+'.join(names)} x {len(levels)} seed(s) stacked")
            for (i, name, _), result in zip(group, results):
                self.seconds += result.summary["train_seconds"]
                out[i][name] = result
        return [{name: out[i][name] for name in lv.to_train} for i, (_, lv) in enumerate(levels)]

    def finish(self, chain: _Chain, lv: _Level, trained_arms: dict[str, RunResult]) -> None:
        """Record the level, measure the ticket's speed (first seed), and move the chain on."""
        arms = {"ticket": lv.search.result} if "ticket" not in lv.to_train else {}
        arms.update(trained_arms)
        speed = None
        if self.structure.active and chain.s == 0:
            speed = self._ship(lv.folder, arms["ticket"].model, lv.masks, lv.density)
        chain.results.append(self._record(lv.level, lv.density, arms, speed, lv.search, lv.constant_units_dropped))
        densities = {name: self._density(arm.masks) for name, arm in lv.to_train.items()}
        chain.results[-1]["arm_density"] = densities
        if lv.mask_density != lv.density:
            chain.results[-1]["mask_density"] = lv.mask_density
        apart = {name: d for name, d in densities.items() if abs(d - lv.density) > 0.01 * lv.density}
        if apart:  # e.g. a one-shot group arm: regroup keeps another share of a mask it did not grow
            _log(f"{lv.what}: " + ", ".join(f"{k} keeps {d:.1%}" for k, d in apart.items())
                 + f" of the weights, not the ticket's {lv.density:.1%}; compare them with that in mind")
        _log(f"{lv.what}: " + ", ".join(f"{k} {v.summary['test_accuracy']:.2%}" for k, v in arms.items())
             + (f", compacted/dense CPU throughput {speed['speedup_cpu']:.2f}x"
                if speed and speed.get("speedup_cpu") else "")
             + (f", GPU {speed['speedup_gpu']:.2f}x" if speed and speed.get("speedup_gpu") else ""))
        chain.trained = lv.search.result.model if lv.search is not None else arms["ticket"].model
        chain.previous = chain.trained.state_dict()
        chain.masks.append(lv.masks)

    def _ship(self, folder: Path, model: nn.Module, masks: dict[str, torch.Tensor], density: float) -> dict[str, Any]:
        """Save the level's ticket as a file `ticketlab bench` reads, and measure its speed."""
        model = copy.deepcopy(model).cpu()
        run = self.config.run
        user = self.user_model is not None  # no registered name rebuilds it: its traced graph is stored instead
        unsaved = None
        try:
            save_ticket(folder / "ticket.safetensors", model, masks, model_name=None if user else run.model.name,
                        model_options={} if user else run.model.kwargs_dict(), num_classes=self.dataset.num_classes,
                        in_channels=self.dataset.in_channels, image_size=self.dataset.image_shape[1],
                        image_width=self.dataset.image_shape[2],
                        extra={"structure": self.t.structure, "density": density, "study": self.config.run_id})
        except TicketlabError as error:
            if not user:
                raise
            unsaved = f"no ticket file: {error}"
        speed = self.structure.speed(model, masks, self.input_shape, device=self.device)
        if unsaved:
            speed["ticket_note"] = unsaved
        write_json(folder / "speed.json", speed)
        return speed

    def _hard_examples(self, dense: RunResult) -> torch.Tensor:
        """The PrAC set's hard-to-memorise part: from a saved set, or this dense run's records."""
        if self.saved_hard is not None:
            return self.saved_hard
        records = ExampleRecords.load(dense.folder / "records.safetensors")
        return from_records(records.correct, records.seen, {}).hard

    def _search(self, run: RunConfig, what: str, rewind_state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                weights: dict[str, torch.Tensor], trained: nn.Module, dense: RunResult,
                hard: torch.Tensor | None) -> _Search | None:
        """The run whose weights the next level prunes, when it is not simply the ticket's:
        a PrAC-set run (scaled schedule, from the rewind weights) and/or one with early-bird stopping."""
        if not self.prac and not self.t.early_bird:
            return None
        hooks = []
        if self.t.early_bird:
            hooks.append(EarlyBird(self.names, self.t.fraction, current=weights, scope=self.t.scope,
                                   threshold=self.t.early_bird, layer_fractions=self._layer_fractions,
                                   structure=self._live_structured(weights) if self.structure.active else None))
            # the run's identity: which stop rule, and which masks it watches settle (the pruning step's
            # settings; the level's current masks enter it as the run's masks)
            t = self.t
            watched = f":{t.structure}:{t.refill_rate}:{t.refill_criterion}:{t.nm}" if self.structure.active else ""
            if t.refill_multiple != 1:  # only when set, so the ids of earlier runs stay the same
                watched += f":{t.refill_multiple}"
            run = replace(run, hooks=f"early_bird:{t.early_bird}:{EARLY_BIRD_WINDOW}:{t.fraction}:{t.scope}:"
                                     f"{t.output_fraction}{watched}")
        if not self.prac:
            result = self.train(run, f"{what} ticket (early-bird)", init_state=rewind_state, masks=masks,
                                start_iteration=self.k, hooks=hooks)
            return _Search(result, None, result.summary["iterations"] - self.k)
        x, mean, std = self.train_set.train_x, self.train_set.mean, self.train_set.std
        pruned = copy.deepcopy(trained).cpu()
        with torch.no_grad():
            apply_masks(pruned, masks)
        if self._dense_predictions is None or self._dense_predictions[0] is not dense:
            self._dense_predictions = (dense, predictions(copy.deepcopy(dense.model).cpu(), x, mean, std))
        changed = self._dense_predictions[1] != predictions(pruned, x, mean, std)
        subset = prac_indices(hard, changed)
        fraction = len(subset) / self.n_train
        prac_run = replace(run, train=scaled_train(run.train, fraction))
        # the rewind weights start the scaled schedule where the rewind point lies in the full one, as a level does
        t = prac_run.train
        prac_total = steps_per_epoch(len(subset), t.batch_size, t.drop_last) * t.epochs
        start = self.k * prac_total // (self.steps * run.train.epochs)
        result = self.train(prac_run, f"{what} PrAC search ({fraction:.0%} of the data)", init_state=rewind_state,
                            masks=masks, subset=subset, hooks=hooks, compacted=0 if hooks else self.compacted,
                            start_iteration=start)
        return _Search(result, fraction, result.summary["iterations"] - start)

    def _density_report(self, masks: dict[str, torch.Tensor]) -> dict[str, dict]:
        """Kept weights over all Conv2d/Linear weights, as papers quote density: layers left out of pruning
        (--exclude-first/last) count as dense; a channel arm's BatchNorm entries do not count."""
        return density_report({n: masks[n] for n in self.names}, self.probe)

    def _density(self, masks: dict[str, torch.Tensor]) -> float:
        return self._density_report(masks)["total"]["density"]

    def _record(self, level: int, density: float, arms: dict[str, RunResult], speed: dict[str, Any] | None = None,
                search: _Search | None = None, constant_units_dropped: int = 0) -> dict[str, Any]:
        record = {"level": level, "density": density,
                  "test": {k: v.summary["test_accuracy"] for k, v in arms.items()},
                  "validation": {k: v.summary.get("val_accuracy") for k, v in arms.items()},
                  "runs": {k: v.run_id for k, v in arms.items()},
                  "seconds": {k: v.summary["train_seconds"] for k, v in arms.items()},
                  "full_iterations": self.steps * self.config.run.train.epochs - self.k}
        if speed is not None:
            record["speed"] = speed
        if constant_units_dropped:
            record["constant_units_dropped"] = constant_units_dropped
        if search is not None:
            record["search"] = {"iterations": search.iterations, "run": search.result.run_id,
                                "prac_fraction": search.prac_fraction,
                                "stopped_epoch": search.result.summary.get("stopped_epoch")}
        return record


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_validation(n_train: int) -> int:
    """A ticket study selects (the sparsest winning level), so it judges on held-out training data."""
    return max(1, n_train // 10)


def _chains(study: _Study, tickets: TicketConfig) -> list[_Chain]:
    """Every seed's IMP chain, trained: seed by seed, or with `stack` all seeds level by level, so a
    level's arms of every seed train together."""
    chains: list[_Chain] = []
    for seeds in [list(range(tickets.seeds))] if tickets.stack else [[s] for s in range(tickets.seeds)]:
        group = [study.begin(s) for s in seeds]
        for level in range(1, tickets.levels + 1):
            pruned = [(chain, study.prune(chain, level)) for chain in group]
            for (chain, lv), arms in zip(pruned, study.train_arms(pruned)):
                study.finish(chain, lv, arms)
        chains += group
    return chains


def study_config(model: str | nn.Module, ds: ImageDataset, tickets: TicketConfig, data_cfg: DataConfig, device: str,
                 model_options: Mapping[str, Any] | None, train_options: Mapping[str, Any]) -> StudyConfig:
    """The study's identity: its runs' base configuration and the ticket settings, with what they read by
    content (a user module's layers and weights, a label file, a PrAC file) rather than by name or path."""
    if data_cfg.validation == 0:
        data_cfg = replace(data_cfg, validation=default_validation(len(ds.train_y)))
    check_held_out(data_cfg.validation, len(ds.train_y))  # before anything is sized by the rest
    train_cfg: TrainConfig = recipe_config(model if isinstance(model, str) else None, **train_options)
    resolve_device(device, train_cfg)
    if data_cfg.noise:
        data_cfg = replace(data_cfg, noise_file=noise_file_digest(data_cfg.noise))
    if tickets.prac_file and Path(tickets.prac_file).is_file():  # a missing file is reported by the study
        tickets = replace(tickets, prac_digest=hashlib.sha256(Path(tickets.prac_file).read_bytes()).hexdigest()[:16])
    model_cfg = model_config(model, model_options)
    run = RunConfig(data=canonical_data(replace(data_cfg, dataset=dataset_identity(ds)), ds, model_cfg.name),
                    model=model_cfg, train=train_cfg, device=torch.device(device).type)
    if not isinstance(model, str):
        run = replace(run, init=tensor_digest(model.state_dict()))
    run.train.validate()
    # the rewind point by the iteration it names, so `1ep` and `3it` of a 3-step epoch are one study
    n_train = len(ds.train_y) - data_cfg.validation
    check_batch_size(train_cfg.batch_size, n_train)
    if tickets.data == "full":  # a PrAC search trains on fewer examples, where --drop-last may act
        run = replace(run, train=canonical_train(train_cfg, n_train))
    steps = steps_per_epoch(n_train, train_cfg.batch_size, train_cfg.drop_last)
    tickets = replace(tickets, rewind=f"{rewind_iteration(tickets.rewind, steps, steps * train_cfg.epochs)}it")
    if tickets.early_bird and train_cfg.epochs < EARLY_BIRD_WINDOW + 2:  # distances from epoch 2, then 5 of them
        raise TicketlabError(f"--early-bird stops a search once {EARLY_BIRD_WINDOW} epochs' mask distances are below "
                             f"the threshold, so it can end a run early from {EARLY_BIRD_WINDOW + 2} epochs on; "
                             f"this one trains {train_cfg.epochs}: drop --early-bird or train longer")
    if tickets.stack:
        check_stacked_training(run.train)
    return StudyConfig(run=run, tickets=tickets)


def find_ticket(
    model: str | nn.Module,
    dataset: str | ImageDataset,
    *,
    tickets: TicketConfig | None = None,
    data: DataConfig | None = None,
    store: RunStore | str | Path | None = None,
    data_dir: str | Path | None = None,
    download: bool = True,
    device: str = "cpu",
    progress: bool = True,
    plot: str | Path | None = None,
    model_options: Mapping[str, Any] | None = None,
    **train_options: Any,
) -> StudyResult:
    """Find the sparsest winning ticket of `model` on `dataset` by IMP with rewinding.

    `model` is a registered name or your own `nn.Module` (other seeds and the fresh-init arms re-initialise
    it with its `reset_parameters`, else its modules'; a warning says when that draws another spread than
    the module's own weights); `model_options` are a registered model's own options (e.g.
    fastnet's `widths`). `train_options` are `TrainConfig` fields. Returns the ticket's
    masks per level and the study summary; the verdict is judged on a validation split held out
    of the training set (`data.validation`, default 10%), never on the test set. `summary["warnings"]`
    flags a result not to trust, such as tickets far above an under-trained dense network.
    """
    tickets = tickets or TicketConfig()
    tickets.validate()
    if plot:
        writable(plot, ".png", "--plot")  # before the study trains, not after
    store = store if isinstance(store, RunStore) else RunStore(store)
    ds = dataset if isinstance(dataset, ImageDataset) else load_dataset(dataset, data_dir=data_dir, download=download,
                                                                        progress=progress)
    config = study_config(model, ds, tickets, data or DataConfig(), device, model_options, train_options)
    name = config.run.model.name
    study = _Study(config, store, ds, None if isinstance(model, str) else model, device, progress)
    odd = _init_mismatch(model) if not isinstance(model, str) and (
        tickets.seeds > 1 or {"reinit", "scratch"} & set(tickets.baselines)) else []
    odd_init = (f"your module's re-initialised weights (other seeds, reinit, scratch) are drawn otherwise than its "
                f"own in {', '.join(odd[:3])}{' and more' if len(odd) > 3 else ''}: its init is not what "
                "reset_parameters draws (or none reaches them), so those runs start from another distribution; "
                "define reset_parameters on the module (or the block holding them) to draw its own init") if odd else ""
    if odd_init and progress:  # said before hours of training, and again in the summary
        _log(f"warning: {odd_init}")

    record = store.begin(config)
    try:
        chains = _chains(study, tickets)
    except TicketlabError:
        # no half-written study; its finished runs stay and are reused. Ctrl-C is no TicketlabError:
        # the study stays incomplete and resumes
        if not record.finished:
            store.remove(config.run_id)
        raise
    per_seed = [chain.results for chain in chains]
    masks = chains[0].masks
    summary = summarise(per_seed, tickets.baselines, "validation")
    if odd_init:
        summary["warnings"].append(odd_init)
    summary.update(study_id=config.run_id, model=name, dataset=ds.name, seeds=tickets.seeds,
                   fraction=tickets.fraction, scope=tickets.scope, rewind_iteration=study.k,
                   structure=tickets.structure, stacked=tickets.stack, train_seconds=round(study.seconds, 3))
    from ticketlab.report.plots import plot_study, plot_tradeoff

    png = plot_study(summary, record.folder / "accuracy.png")
    summary["plot"] = str(Path(plot) if plot else png)
    if any(row.get("speedup_cpu") for row in summary["levels"]):
        summary["speed_plot"] = str(plot_tradeoff(summary, record.folder / "speed.png"))
    write_json(record.folder / "per_seed.json", per_seed)
    store.finish(config.run_id, summary)
    if plot:  # after the study is stored: a full disk here costs a rerun that reuses every run, not the study
        atomic_write(Path(plot), lambda tmp: shutil.copyfile(png, tmp))
    return StudyResult(config.run_id, summary, masks, record.folder)
