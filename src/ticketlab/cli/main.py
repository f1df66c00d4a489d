"""The `ticketlab` command: a thin layer that builds configs and calls the Python API."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ticketlab.cli import ship, signature
from ticketlab.cli.table import key_values, print_json, table
from ticketlab.config import (
    DST_METHODS,
    LOSSES,
    OPTIMIZERS,
    PRECISIONS,
    REFILL_CRITERIA,
    SCHEDULES,
    STRUCTURES,
    TTA_MODES,
    DataConfig,
    ModelConfig,
    RunConfig,
)
from ticketlab.errors import TicketlabError, state_mismatch
from ticketlab.report.text import percent

if TYPE_CHECKING:
    from ticketlab.tickets.trigger import TriggerSet


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming the fix, like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise TicketlabError(f"{message} (see `{self.prog} --help`)")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _model_arg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for candidate in (value, f"[{value}]"):  # JSON, or a bare comma list: widths=64,128
        try:
            parsed = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        return key, tuple(parsed) if isinstance(parsed, list) else parsed
    return key, value


def add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="registered name (see `ticketlab datasets`) or a .npz file (default mnist_subset)")
    g.add_argument("--data-dir", help="folder holding datasets (else $TICKETLAB_DATA, else the user cache)")
    g.add_argument("--no-download", action="store_true", help="never download; fail if the files are absent")
    g.add_argument("--validation", type=int, default=0, help="training examples held out for validation (stratified)")
    g.add_argument("--cutout", type=int, default=0, help="cutout square size in pixels (0: off)")
    g.add_argument("--noise", default="", help="training-label noise: uniform:R, flip:R, asymmetric:R or "
                   "file:PATH.npz:KEY (CIFAR-10N layout); test labels stay clean")
    g.add_argument("--noise-seed", type=int, help="seed of the noisy labels (fixed across --seed; 0)")


def add_train_options(p: argparse.ArgumentParser) -> None:
    """Training flags; those left unset take the model's recipe (`ticketlab models`)."""
    g = p.add_argument_group("training (unset flags take the model's recipe)")
    g.add_argument("--model", help=f"registered model (see `ticketlab models`; default {DEFAULT_MODEL})")
    g.add_argument("--model-arg", type=_model_arg, action="append", default=[], metavar="KEY=VALUE",
                   help="architecture option, e.g. widths=[64,128,128]; repeatable")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=None,
                   help="train on full batches only (the last, smaller batch of each epoch is skipped)")
    g.add_argument("--lr", type=float)
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--momentum", type=float)
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", choices=SCHEDULES)
    g.add_argument("--milestones", type=_floats, help="epochs where the step schedule multiplies lr by --gamma")
    g.add_argument("--gamma", type=float)
    g.add_argument("--warmup", type=float, dest="warmup_epochs", help="linear lr warm-up, in epochs")
    g.add_argument("--lr-start", type=float, help="warm-up starts at this fraction of --lr")
    g.add_argument("--lr-end", type=float, help="cosine/linear decay ends at this fraction of --lr")
    g.add_argument("--bias-lr-scale", type=float, help="lr multiplier of BatchNorm biases (weight decay per step kept)")
    g.add_argument("--lookahead", type=int, dest="lookahead_every",
                   help="pull the weights onto their running average every N steps (0: off)")
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--ema", type=float, dest="ema_decay", help="weight EMA decay (0: off)")
    g.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation")
    g.add_argument("--precision", choices=PRECISIONS, help="autocast dtype on CUDA (CPU trains in fp32)")
    g.add_argument("--loss-scale", type=float,
                   help="a fixed power-of-two loss scale (fp16 without the dynamic scaler's per-step sync; 0: dynamic)")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    g.add_argument("--cuda-graph", action="store_true", default=None,
                   help="CUDA: replay each step's forward and backward from CUDA graphs (less host work a step)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--loss", choices=LOSSES, help="ce, sat (self-adaptive training) or sat-selective (abstain output)")
    g.add_argument("--sat-alpha", type=float, help="SAT target momentum (published 0.9)")
    g.add_argument("--sat-start", type=int, help="first SAT epoch, 0-based (published 60 of 200)")
    g.add_argument("--device", default="cpu", help="cpu or cuda")


def add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="run store folder (else $TICKETLAB_STORE, else ./ticketlab-runs)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (the rest goes to stderr)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


DEFAULT_MODEL = "lenet_300_100"
KEEP_STREAMS_HELP = ("never prune the layers that write a residual stream (stem, shortcuts, each block's last conv): "
                     "channel tickets narrow only the layers inside blocks")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """What every command that trains or builds a model takes."""
    add_train_options(p)
    add_data_options(p)
    add_output_options(p)


_TRAIN_FIELDS = (
    "epochs", "batch_size", "drop_last", "lr", "optimizer", "momentum", "nesterov", "weight_decay", "schedule",
    "milestones", "gamma", "warmup_epochs", "lr_start", "lr_end", "bias_lr_scale", "lookahead_every",
    "label_smoothing", "ema_decay", "tta", "precision", "loss_scale", "compile", "cuda_graph", "seed",
    "loss", "sat_alpha", "sat_start",
)


def run_config(args: argparse.Namespace) -> RunConfig:
    from ticketlab.train import recipe_config

    model = args.model or DEFAULT_MODEL
    train_cfg = recipe_config(model, **{f: getattr(args, f) for f in _TRAIN_FIELDS})
    if args.noise_seed is not None and not args.noise:
        raise TicketlabError("--noise-seed seeds the label noise of --noise; add --noise or drop --noise-seed")
    data_cfg = DataConfig(dataset=args.dataset or DataConfig.dataset, validation=args.validation, cutout=args.cutout,
                          noise=args.noise, noise_seed=args.noise_seed or 0)
    if args.noise_seed is not None and not data_cfg.draws_noise:
        raise TicketlabError("--noise-seed seeds drawn label noise, and --noise file: reads its labels; "
                             "drop --noise-seed")
    model_cfg = ModelConfig.of(model, dict(args.model_arg))
    return RunConfig(data=data_cfg, model=model_cfg, train=train_cfg, device=args.device.split(":")[0])


def cmd_train(args: argparse.Namespace) -> int:
    from ticketlab.sparsity import load_masks
    from ticketlab.store import RunStore
    from ticketlab.train import train_run

    config = run_config(args)
    if args.compact and not args.masks:
        raise TicketlabError("--compact trains channel-structured --masks as the smaller network; add --masks FILE")
    if args.compact and args.stack:
        raise TicketlabError("--compact and --stack do not combine: stacked networks share one shape; drop one")
    if args.stack and args.seeds == 1:
        raise TicketlabError("--stack trains the networks of several --seeds together; with one seed it trains the "
                             "plain run, so add --seeds N or drop --stack")
    dst = _dst(args, config)
    trigger = _trigger(args)
    if args.seeds != 1:
        return _train_seeds(args, config, dst, trigger)
    result = train_run(
        config, store=RunStore(args.store), dataset=dst.dataset if dst else None, data_dir=args.data_dir,
        download=not args.no_download, device=args.device, progress=not args.quiet,
        masks=load_masks(args.masks) if args.masks else None, compacted=_compacted(args),
        hooks=dst.hooks(config.train.seed) if dst else (), trigger=trigger,
    )
    s = result.summary
    if result.reused:
        print(f"run {result.run_id} already finished with these settings; "
              f"reusing it (`ticketlab runs rm {result.run_id}` to retrain)")
    shown = {k: s.get(k) for k in ("run_id", "model", "dataset", "epochs", "iterations", "train_seconds",
                                    "train_accuracy", "val_accuracy", "test_accuracy", "parameters",
                                    "trained_parameters", "density",
                                    "noise_rate", "relabelled_fraction", "corrected_fraction", "label_accuracy_after",
                                    "labels_file", "trigger_accuracy", "stopped_epoch") if k in s}
    print(key_values(shown))
    if dst:
        print(f"masks: {result.folder / 'masks.safetensors'}  (the topology {args.dst} trained to)")
    if "coverage" in s:
        print("selective classification on the test set (thresholds chosen on a held-out half of it, "
              "errors reported on the other half):")
        print(table(("target coverage", "coverage", "selective error"),
                    [(f"{100 * r['target_coverage']:.0f}%", f"{100 * r['coverage']:.1f}%",
                      f"{100 * r['selective_error']:.2f}%") for r in s["coverage"]]))
        print(f"plot: {s['coverage_plot']}")
    if args.json:
        print_json(args, s)
    return 0


def _trigger(args: argparse.Namespace) -> TriggerSet | None:
    """`train --trigger-key[-file]`: the keyed trigger set mixed into training, or None."""
    from ticketlab.tickets.trigger import TriggerSet

    if args.trigger_key is None and args.trigger_key_file is None:
        if args.trigger_size is not None or args.trigger_copies is not None:
            raise TicketlabError("--trigger-size and --trigger-copies shape a trigger set; add --trigger-key-file "
                                 "(or --trigger-key), or drop them")
        return None
    if args.stack:
        raise TicketlabError("a trigger set is mixed into one run at a time; drop --stack")
    key = signature.read_key(args.trigger_key, args.trigger_key_file, "--trigger-key")
    given = {k: v for k, v in (("size", args.trigger_size), ("copies", args.trigger_copies)) if v is not None}
    return TriggerSet(key, **given)  # the rest: TriggerSet's defaults


_DST_FLAGS = {"density": "--density", "start_density": "--start-density", "budget": "--budget",
              "update_every": "--update-every", "update_fraction": "--update-fraction", "update_end": "--update-end"}


@dataclass
class _Dst:
    """`train --dst`: the data, the model's starting masks per seed, and the hook that moves them."""

    args: argparse.Namespace
    config: RunConfig
    dataset: Any

    def hooks(self, seed: int) -> list[Any]:
        from ticketlab.train.dynamic import DynamicSparsity, initial_masks
        from ticketlab.train.run import initial_model

        a = self.args
        config = replace(self.config, train=replace(self.config.train, seed=seed))
        start = a.density if a.dst != "granet" else (1.0 if a.start_density is None else a.start_density)
        masks = initial_masks(initial_model(config, self.dataset), start, a.budget or "erk", seed=seed)
        given = {k: v for k, v in (("every", a.update_every), ("alpha", a.update_fraction), ("end", a.update_end))
                 if v is not None}  # the rest: the method's published settings
        return [DynamicSparsity(a.dst, masks, final_density=a.density if a.dst == "granet" else None, seed=seed,
                                **given)]


def _dst(args: argparse.Namespace, config: RunConfig) -> _Dst | None:
    """Dynamic sparse training's settings checked, and its data loaded (the starting masks need the model)."""
    from ticketlab.data import load_dataset
    from ticketlab.sparsity import check_density

    given = [flag for name, flag in _DST_FLAGS.items() if getattr(args, name) is not None]
    if args.dst is None:
        if given:
            raise TicketlabError(f"{given[0]} sets dynamic sparse training; add --dst set, rigl or granet")
        return None
    if args.masks or args.compact or args.stack:
        flag = "--masks" if args.masks else "--compact" if args.compact else "--stack"
        raise TicketlabError(f"--dst draws and moves its own masks, one network at a time; drop {flag}")
    if args.density is None:
        raise TicketlabError(f"--dst {args.dst} needs --density, the fraction of weights kept (RigL: 0.1 for 90% "
                             "sparsity)")
    check_density(args.density)
    if args.start_density is not None:
        if args.dst != "granet":
            raise TicketlabError(f"--start-density is where GraNet's pruning starts; {args.dst} keeps --density "
                                 "throughout")
        check_density(args.start_density)
    dataset = load_dataset(config.data.dataset, data_dir=args.data_dir, download=not args.no_download,
                           progress=not args.quiet)
    return _Dst(args, config, dataset)


def _compacted(args: argparse.Namespace) -> int:
    from ticketlab.compact.training import TRAIN_MULTIPLE

    return TRAIN_MULTIPLE if args.compact else 0


def _train_seeds(args: argparse.Namespace, config: RunConfig, dst: _Dst | None, trigger: TriggerSet | None) -> int:
    """`train --seeds N [--stack]`: one run per seed, a table of them, and their mean ± std."""
    from ticketlab.sparsity import load_masks
    from ticketlab.store import RunStore
    from ticketlab.tickets.verdict import stat
    from ticketlab.train import Member, train_run, train_stacked

    if args.seeds < 1:
        raise TicketlabError(f"--seeds must be at least 1, got {args.seeds}")
    seeds = [config.train.seed + i for i in range(args.seeds)]
    masks = load_masks(args.masks) if args.masks else None
    where = dict(store=RunStore(args.store), data_dir=args.data_dir, download=not args.no_download,
                 device=args.device, progress=not args.quiet)
    if args.stack:
        results = train_stacked(config, [Member(masks=masks, seed=seed) for seed in seeds], **where)
    else:
        results = [train_run(replace(config, train=replace(config.train, seed=seed)), masks=masks,
                             compacted=_compacted(args), dataset=dst.dataset if dst else None,
                             hooks=dst.hooks(seed) if dst else (), trigger=trigger, **where) for seed in seeds]
    print(table(("seed", "run", "test accuracy", "val accuracy", "train seconds", ""),
                [(seed, r.run_id, r.summary["test_accuracy"], r.summary.get("val_accuracy"),
                  r.summary["train_seconds"], "reused" if r.reused else "") for seed, r in zip(seeds, results)]))
    if args.stack:
        print("stacked: the networks trained together, each run's seconds are its share of their time")
    test = stat([r.summary["test_accuracy"] for r in results])
    print(f"test accuracy {100 * test.mean:.2f} ± {100 * test.std:.2f}% (mean ± sample std over {len(seeds)} seeds)")
    marks = [r.summary["trigger_accuracy"] for r in results if "trigger_accuracy" in r.summary]
    if marks:
        print(f"trigger accuracy {', '.join(f'{100 * m:.0f}%' for m in marks)} (seeds in order)")
    if args.json:
        first = results[0].summary
        print_json(args, {
            "model": first["model"], "dataset": first["dataset"], "epochs": first["epochs"], "seeds": seeds,
            "stacked": args.stack, "run_ids": [r.run_id for r in results], "test_accuracy": test.mean,
            "test_accuracy_std": test.std, "test_accuracies": [r.summary["test_accuracy"] for r in results],
            "train_seconds": round(sum(r.summary["train_seconds"] for r in results), 3),
            "parameters": first["parameters"], "density": first["density"],
            **({"trigger_accuracies": marks} if marks else {}),
        })
    return 0


def cmd_find(args: argparse.Namespace) -> int:
    from ticketlab.store import RunStore
    from ticketlab.tickets import TicketConfig, find_ticket

    if args.nm and args.structure != "nm":
        raise TicketlabError("--nm sets the N:M pattern of --structure nm; add --structure nm or drop --nm")
    tickets = TicketConfig(
        levels=args.levels, fraction=args.fraction, output_fraction=args.output_fraction, scope=args.scope,
        rewind=args.rewind, exclude_first=args.exclude_first, exclude_last=args.exclude_last,
        keep_streams=args.keep_streams, baselines=tuple(b for b in args.baselines.split(",") if b), seeds=args.seeds,
        structure=args.structure, refill_rate=args.refill_rate, refill_criterion=args.refill_criterion,
        refill_multiple=args.refill_multiple, nm=args.nm or TicketConfig.nm, data=args.data, prac_file=args.prac_file,
        early_bird=args.early_bird, stack=args.stack,
        compact_training=not args.no_compact_training,
    )
    train_cfg = run_config(args)
    options = {f: getattr(args, f) for f in _TRAIN_FIELDS if getattr(args, f) is not None}  # the recipe fills the rest
    result = find_ticket(
        train_cfg.model.name, train_cfg.data.dataset, model_options=train_cfg.model.kwargs_dict(), tickets=tickets,
        data=train_cfg.data, store=RunStore(args.store),
        data_dir=args.data_dir, download=not args.no_download, device=args.device, progress=not args.quiet,
        plot=args.plot, **options,
    )
    print(study_table(result.summary))
    s = result.summary
    win = s["sparsest_winning_density"]
    print(f"\nsparsest winning ticket: {percent(win)} of weights remaining" if win is not None
          else "\nno level produced a winning ticket")
    print(f"plot: {s['plot']}" + (f"  accuracy vs speed: {s['speed_plot']}" if s.get("speed_plot") else ""))
    if "iterations_saved" in s:
        print(f"search: {s['search_iterations']:,} training iterations instead of {s['full_data_iterations']:,} "
              f"on the full data ({s['iterations_saved']:.1%} saved)")
    for warning in s["warnings"]:
        print(f"warning: {warning}")
    if args.json:
        print_json(args, s)
    return 0


def study_table(summary: dict[str, Any]) -> str:
    levels = summary["levels"]
    from ticketlab.tickets.verdict import arms_of

    arms = arms_of(levels[0]) if levels else []
    pm = lambda s: f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"  # noqa: E731
    on_val = summary["verdict_on"] == "validation"
    speed = any("speedup_cpu" in r for r in levels)
    flops = any("compacted_flops" in r for r in levels)  # studies stored before FLOPs were counted lack them
    gpu = any("speedup_gpu" in r for r in levels)  # studies trained on a GPU
    timed = "dense_seconds" in summary and all("ticket_seconds" in r for r in levels)
    rows = [(0, "100.00%", pm(summary["dense"]), *[""] * len(arms), "", "",
             *([f"{summary['dense_seconds']:.0f}"] if timed else []), *(["1.00x"] if speed else []),
             *(["1.00x"] if gpu else []), *(["100%"] if flops else []))]
    for r in levels:
        verdict = ("WIN" if r["winning"] else "no: below dense" if not r["matches_dense"] else
                   "no: ~reinit" if r.get("beats_reinit") is False else "matches dense, no reinit arm")
        judged = r["validation"] if on_val else r
        dense = summary["dense_validation"] if on_val else summary["dense"]
        gap = f"{100 * (judged['ticket']['mean'] - dense['mean']):+.2f} (±{100 * r['tolerance']:.2f})"
        cpu = [f"{r['speedup_cpu']:.2f}x" if r.get("speedup_cpu") else "n/a"] if speed else []
        share = f"{100 * r['compacted_flops'] / r['flops']:.0f}%" if r.get("compacted_flops") else "n/a"
        work = [share] if flops else []
        on_gpu = [f"{r['speedup_gpu']:.2f}x" if r.get("speedup_gpu") else "n/a"] if gpu else []
        rows.append((r["level"], percent(r["density"]), pm(summary["dense"]), *[pm(r[a]) for a in arms],
                     gap, verdict, *([f"{r['ticket_seconds']:.0f}"] if timed else []), *cpu, *on_gpu, *work))
    basis = summary["verdict_on"]
    return (f"test accuracy (%), mean ± std over {summary.get('seeds', 1)} seed(s); "
            f"the verdict is judged on {basis} accuracy\n") + table(
        ("level", "density", "dense", *arms, f"ticket-dense ({basis[:3]})", "verdict",
         *(["ticket train s"] if timed else []), *(["CPU speed-up (b64)"] if speed else []),
         *(["GPU speed-up (b256)"] if gpu else []), *(["FLOPs vs dense"] if flops else [])), rows)


def cmd_prune(args: argparse.Namespace) -> int:
    """One-shot masks from a stored run, a weights file, or the model's seeded initialisation."""
    from ticketlab.data import load_dataset
    from ticketlab.sparsity import density_report, save_masks
    from ticketlab.store import RunStore, read_tensors, writable
    from ticketlab.tickets.oneshot import prune_model
    from ticketlab.train.run import initial_model, training_part

    given = [f"--{f.replace('_', '-')}" for f in _TRAIN_FIELDS if f != "seed" and getattr(args, f) is not None]
    given += ["--cutout"] if args.cutout else []
    if given:
        raise TicketlabError(f"prune trains nothing, so {', '.join(given)} would be ignored; drop them")
    if args.device != "cpu":
        raise TicketlabError(f"prune scores weights on the CPU (a few batches at most), so --device {args.device} "
                             "would be ignored; drop it")
    config = run_config(args)
    writable(args.out, ".safetensors", "--out")
    if args.run:
        record = RunStore(args.store, create=False).resolve(args.run)
        if "model" not in record.config:
            raise TicketlabError(f"run {record.run_id} is a ticket study, not a training run; pass --run with the "
                                 "id of a `ticketlab train` run (see `ticketlab runs list`), or --weights FILE")
        if not record.finished:
            raise TicketlabError(
                f"run {record.run_id} has not finished; finish it (re-run its command) before pruning it"
            )
        model_cfg = record.config["model"]
        if args.model and args.model != model_cfg["name"]:
            raise TicketlabError(f"run {record.run_id} trained {model_cfg['name']}, not --model {args.model}; "
                                 "drop --model (the run's model is used)")
        if args.model_arg:
            raise TicketlabError(f"run {record.run_id} built {model_cfg['name']} with its own options "
                                 f"({dict(model_cfg['kwargs']) or 'the defaults'}); drop --model-arg")
        config = replace(config, model=ModelConfig(model_cfg["name"], tuple(tuple(kv) for kv in model_cfg["kwargs"])),
                         data=_run_data(record, args))
        weights = record.folder / "final.safetensors"
    else:
        weights = Path(args.weights) if args.weights else None
    dataset = load_dataset(config.data.dataset, data_dir=args.data_dir, download=not args.no_download,
                           progress=not args.quiet)
    if args.run:
        _check_run_dataset(record, dataset)
    model = initial_model(config, dataset)
    start = {k: v.clone() for k, v in model.state_dict().items()}  # what `train --masks` will start from
    dataset = training_part(config, dataset)  # criteria that read data see what training will: no held-out example
    source = "the seeded initialisation"
    if weights is not None:
        if not weights.is_file():
            fix = (f"its run is damaged: `ticketlab runs rm {args.run}` and train it again" if args.run else
                   "give a .safetensors written by ticketlab")
            raise TicketlabError(f"no weights file at {weights}; {fix}")
        try:
            model.load_state_dict(read_tensors(weights))
        except RuntimeError as e:
            mismatch = state_mismatch(e)
            raise TicketlabError(f"the weights in {weights} do not fit {config.model.name}: {mismatch}") from None
        source = str(weights)
    masks = prune_model(model, dataset, criterion=args.criterion, density=args.density, budget=args.budget,
                        exclude_first=args.exclude_first, exclude_last=args.exclude_last,
                        keep_streams=args.keep_streams, seed=args.seed,
                        structure=args.structure, start=start)
    # the weights' density: a channel mask also holds the BatchNorm and bias entries of removed channels
    report = density_report({n: m for n, m in masks.items() if m.dim() > 1}, model)

    if report["total"]["kept"] == 0:
        raise TicketlabError(f"--density {args.density} keeps none of the {report['total']['total']:,} prunable "
                             f"weights; choose a density of at least {1 / report['total']['total']:.2g}")
    save_masks(args.out, masks)
    print(f"pruned {config.model.name} ({source}) with {args.criterion}, budget {args.budget}")
    print(table(("layer", "kept", "total", "density"),
                [(n, r["kept"], r["total"], percent(r["density"])) for n, r in report["layers"].items()]
                + [("total", report["total"]["kept"], report["total"]["total"],
                    percent(report["total"]["density"]))]))
    if args.structure == "channel":
        print(f"--density {args.density} is refill's budget, which counts the kept channels' whole rows; the masks "
              "also drop the weights that read removed channels (dead: their input is zero), so the weights kept "
              f"are {percent(report['total']['density'])}, about the square of the widths kept")
    compact = " --compact" if args.structure == "channel" else ""
    print(f"masks: {args.out}  (train them: ticketlab train --model {config.model.name} {_data_flags(config.data)}"
          f"--masks {args.out}{compact} ...)")
    if args.json:
        print_json(args, {"masks": str(args.out), "criterion": args.criterion, "budget": args.budget,
                          "density": report["total"]["density"], "layers": report["layers"]})
    return 0


def _run_data(record: Any, args: argparse.Namespace) -> DataConfig:
    """A stored run's data settings, so masks are scored on the examples and labels it trained on;
    a data flag that says otherwise is refused rather than silently overridden."""
    from ticketlab.config import from_dict

    data = from_dict(DataConfig, record.config["data"])
    if "@" in data.dataset:  # data identified by its content (a .npz file): only the user knows where it is
        if args.dataset is None:
            raise TicketlabError(f"run {record.run_id} trained on a dataset file ({data.dataset.split('@')[0]}), "
                                 "which runs do not keep; pass --dataset with that file")
        data = replace(data, dataset=args.dataset)
    given = {"--dataset": (args.dataset, None, data.dataset),
             "--validation": (args.validation, 0, data.validation),
             "--noise": (args.noise and DataConfig(noise=args.noise).noise, "", data.noise),
             "--noise-seed": (args.noise_seed, None, data.noise_seed)}
    for flag, (value, default, stored) in given.items():
        if value != default and value != stored:
            raise TicketlabError(f"run {record.run_id} trained with {flag} {stored!r}, not {value!r}; drop {flag} "
                                 "(the run's data settings are used)")
    return data


def _check_run_dataset(record: Any, dataset: Any) -> None:
    from ticketlab.train.run import dataset_identity

    stored = record.config["data"]["dataset"]
    if "@" in stored and dataset_identity(dataset) != stored:
        raise TicketlabError(f"run {record.run_id} trained on other data than {dataset.name} holds now "
                             f"({stored.split('@')[0]} with content digest {stored.split('@')[1]}); pass "
                             "--dataset with the file it trained on")


def _data_flags(data: DataConfig) -> str:
    """The data flags that give `train` the examples and labels of `data`."""
    flags = f"--dataset {data.dataset} "
    flags += f"--validation {data.validation} " if data.validation else ""
    flags += f"--cutout {data.cutout} " if data.cutout else ""
    flags += f"--noise {data.noise} " if data.noise else ""
    flags += f"--noise-seed {data.noise_seed} " if data.draws_noise else ""
    return flags


def cmd_prac(args: argparse.Namespace) -> int:
    """Train the dense network with per-example records and save its hard-to-memorise set."""
    from ticketlab.data import load_dataset
    from ticketlab.store import RunStore, writable
    from ticketlab.tickets.imp import default_validation
    from ticketlab.tickets.prac import from_records, save_prac
    from ticketlab.train import train_run
    from ticketlab.train.records import ExampleRecords

    config = run_config(args)
    writable(args.out, ".safetensors", "--out")
    dataset = load_dataset(config.data.dataset, data_dir=args.data_dir, download=not args.no_download,
                           progress=not args.quiet)
    if not config.data.validation:  # the split `ticketlab find` holds out, so the set fits its studies
        config = replace(config, data=replace(config.data, validation=default_validation(len(dataset.train_y))))
    result = train_run(config, store=RunStore(args.store), dataset=dataset, device=args.device,
                       progress=not args.quiet, records=True)
    records = ExampleRecords.load(result.folder / "records.safetensors")
    prac = from_records(records.correct, records.seen, {
        "dataset": result.summary["dataset"], "validation": config.data.validation,
        "split_seed": config.data.split_seed, "noise": config.data.noise, "noise_seed": config.data.noise_seed,
        "model": config.model.name, "run_id": result.run_id})
    save_prac(args.out, prac)
    i = prac.info
    print(key_values({"run_id": result.run_id, "test_accuracy": result.summary["test_accuracy"],
                      "examples": i["examples"], "forgotten at least once": i["forgotten"],
                      "never learned": i["never_learned"], "PrAC fraction": f"{prac.fraction:.2%}",
                      "saved to": args.out}))
    print(f"use it: ticketlab find --data prac --prac-file {args.out} ... (any model, same dataset and --validation)")
    if args.json:
        print_json(args, {**i, "prac_fraction": prac.fraction, "out": str(args.out)})
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """List, show or remove stored runs. Only an existing store is opened: these commands never
    create one. With --json stdout is one object, `{"runs": [...]}` (rm: `{"removed": [...]}`)."""
    from ticketlab.store import RunStore

    store = RunStore(args.store, create=False)
    if args.action == "list":
        named = [store.resolve(i, damaged_ok=True) for i in args.ids]
        runs = list({r.run_id: r for r in named}.values()) if args.ids else store.list()
        runs_of = [r.config.get("run", r.config) for r in runs]  # a study keeps its runs' settings under "run"
        status = ["training" if not r.finished and store.training(r.run_id) else r.status for r in runs]
        rows = [
            (r.run_id, r.kind, s, c.get("model", {}).get("name"), c.get("data", {}).get("dataset"),
             (r.summary or {}).get("test_accuracy"))
            for r, s, c in zip(runs, status, runs_of)
        ]
        if args.json:
            print_json(args, {"runs": [{"run_id": r.run_id, "kind": r.kind, "status": s, "summary": r.summary}
                                       for r, s in zip(runs, status)]})
        elif rows:
            print(table(("run", "kind", "status", "model", "dataset", "test_acc"), rows))
        else:
            print(f"no runs in {store.root}")
        return 0
    if not args.ids:
        raise TicketlabError(f"`ticketlab runs {args.action}` needs one or more run ids (see `ticketlab runs list`)")
    records = [store.resolve(i, damaged_ok=True) for i in args.ids]
    if args.action == "show":
        shown = [{"run_id": r.run_id, "status": r.status, "folder": str(r.folder), "config": r.config,
                  "summary": r.summary} for r in records]
        if args.json:
            print_json(args, {"runs": shown})
        else:
            for run in shown:
                print(json.dumps(run, indent=2, sort_keys=True))
        return 0
    busy = [r.run_id for r in records if not r.finished and store.training(r.run_id)]
    if busy:
        raise TicketlabError(f"run {', '.join(busy)} is being trained by another process; stop that process "
                             f"(Ctrl-C checkpoints it) before removing the run")
    for record in records:
        store.remove(record.run_id)
        print(f"removed {record.run_id}")
    if args.json:
        print_json(args, {"removed": [r.run_id for r in records]})
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ticketlab.models import list_models, model_augment, model_options, model_recipe
    from ticketlab.models.registry import MODELS

    names = list_models()
    if args.json:
        def described(name: str) -> dict:
            found = model_options(name)  # None: the builder takes any option
            return {"options": None if found is None else
                    {k: v for k, v in found.items() if v is not inspect.Parameter.empty},
                    "required": [k for k, v in (found or {}).items() if v is inspect.Parameter.empty],
                    "recipe": model_recipe(name), "augment": model_augment(name), "revision": MODELS.get(name).revision}

        print_json(args, {"models": {n: described(n) for n in names}})
        return 0

    def options(name: str) -> str:
        found = model_options(name)
        if found is None:
            return "any"
        shown = {k: "(required)" if v is inspect.Parameter.empty else f"{v:g}" if isinstance(v, float) else v
                 for k, v in found.items()}
        return ", ".join(f"{k}={v}" for k, v in shown.items()) or "none"

    print(table(("model", "options (--model-arg, defaults)", "recipe"),
                [(n, options(n), ", ".join(f"{k}={v}" for k, v in model_recipe(n).items())) for n in names]))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from ticketlab.data import list_datasets

    names = list_datasets()
    if args.json:
        print_json(args, {"datasets": names})
    else:
        print("\n".join(names))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ticketlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train one model (reused if already finished, resumed if interrupted)")
    g = p.add_argument_group("several seeds")
    g.add_argument("--seeds", type=int, default=1, help="train seeds --seed .. --seed+N-1 and report mean ± std")
    g.add_argument("--stack", action="store_true",
                   help="train the seeds together in one batched step (meant for GPUs; no faster on CPU)")
    p.add_argument("--masks", help="train with these masks (a file from `ticketlab prune` or a study level)")
    p.add_argument("--compact", action="store_true",
                   help="channel-structured --masks: train the physically compacted network (faster; the masked "
                        "training's numbers up to float rounding)")
    g = p.add_argument_group("dynamic sparse training: sparse from the first step, the masks moving")
    g.add_argument("--dst", choices=DST_METHODS,
                   help="set: regrow at random; rigl: regrow where the gradient is largest; granet: also prune "
                        "gradually from --start-density to --density")
    g.add_argument("--density", type=float, help="fraction of the weights kept (GraNet: at the end)")
    g.add_argument("--start-density", type=float,
                   help="granet: the density it prunes from (default 1: dense-to-sparse; published 0.5 too)")
    g.add_argument("--budget", choices=("erk", "er", "uniform"),
                   help="how the starting random masks split the density over layers (default erk)")
    g.add_argument("--update-every", type=int, help="steps between mask updates (default 100; granet 1000)")
    g.add_argument("--update-fraction", type=float,
                   help="fraction of each layer's weights moved, cosine-annealed (default 0.3; granet 0.5)")
    g.add_argument("--update-end", type=float, help="fraction of training after which the masks stay (0.75)")
    g = p.add_argument_group("ownership, black box: a keyed trigger set trained in (check it with verify --trigger)")
    g.add_argument("--trigger-key", help="the owner's secret: it makes the trigger images and their labels")
    g.add_argument("--trigger-key-file", help="a file holding the secret (kept out of the shell's history)")
    g.add_argument("--trigger-size", type=signature.positive_int,
                   help="trigger images (default 100; verify --trigger needs the same number)")
    g.add_argument("--trigger-copies", type=signature.positive_int,
                   help="times each is mixed into the training examples (default 20)")
    add_run_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("find", help="find the sparsest winning ticket by IMP with rewinding, with baselines")
    g = p.add_argument_group("ticket search")
    g.add_argument("--levels", type=int, default=5, help="pruning rounds (density 0.8^L at --fraction 0.2)")
    g.add_argument("--fraction", type=float, default=0.2, help="fraction of remaining weights pruned per level")
    g.add_argument("--output-fraction", type=float, default=-1.0,
                   help="layer-wise scope: the classifier's own rate (LeNet paper: 0.1)")
    g.add_argument("--scope", choices=("global", "layerwise"), default="global")
    g.add_argument("--rewind", default="0", help="rewind point: 0, <n>it or <n>ep")
    g.add_argument("--baselines", default="reinit,random",
                   help="comma list of reinit,random,shuffle,oneshot,finetune,lr_rewind,scratch")
    g.add_argument("--seeds", type=int, default=1, help="repeat the study with this many seeds")
    g.add_argument("--exclude-first", action="store_true", help="never prune the first layer")
    g.add_argument("--exclude-last", action="store_true", help="never prune the classifier")
    g.add_argument("--keep-streams", action="store_true", help=KEEP_STREAMS_HELP)
    g.add_argument("--plot", help="also write the accuracy plot (PNG) here")
    g.add_argument("--stack", action="store_true",
                   help="train each level's arms of all seeds together in one batched step (meant for GPUs; "
                        "numbers equal one-by-one training up to float rounding)")
    g = p.add_argument_group("structured tickets (refill, regroup, N:M)")
    g.add_argument("--structure", choices=STRUCTURES, default="none",
                   help="channel: refill whole channels (compactable, faster); group: regroup dense blocks; nm: N:M")
    g.add_argument("--refill-rate", type=float, default=0.0, help="channel: refill+ rate r of extra channels")
    g.add_argument("--refill-criterion", choices=REFILL_CRITERIA, default="count",
                   help="channel: rank channels by surviving weights, weight L1, activation norm or |activation*grad|")
    g.add_argument("--refill-multiple", type=int, default=1, metavar="M",
                   help="channel: keep the nearest multiple of M channels per layer; widths the kernels run fast "
                        "(16 for AVX-512 CPUs, 8 for tensor cores; default 1: the exact count)")
    g.add_argument("--nm", help="nm: keep N of every M weights (2:4)")
    g.add_argument("--no-compact-training", action="store_true",
                   help="channel: train tickets masked at full size instead of physically compacted "
                        "(same numbers up to float rounding; compacted is faster)")
    g = p.add_argument_group("cheaper search (PrAC sets, early-bird stopping)")
    g.add_argument("--data", choices=("full", "prac"), default="full",
                   help="prac: each level's search trains on its PrAC set with a shrunk schedule")
    g.add_argument("--prac-file", default="", help="a PrAC set from `ticketlab prac` (e.g. of another model)")
    g.add_argument("--early-bird", type=float, default=0.0, metavar="THRESHOLD",
                   help="stop a level's search once the next mask moves less than this over 5 epochs (published 0.08)")
    add_run_options(p)
    p.set_defaults(func=cmd_find)

    p = sub.add_parser("prune", help="one-shot masks for a trained run, a weights file or a fresh init")
    g = p.add_argument_group("pruning")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--run", help="a finished run (id or prefix) whose final weights are pruned")
    src.add_argument("--weights", help="a .safetensors state dict of --model (else: its seeded initialisation)")
    g.add_argument("--criterion", default="magnitude", help="magnitude, random, snip, grasp or synflow")
    g.add_argument("--budget", default="global", help="global, uniform, er or erk")
    g.add_argument("--density", type=float, required=True, help="fraction of prunable weights kept, in (0, 1]")
    g.add_argument("--exclude-first", action="store_true")
    g.add_argument("--exclude-last", action="store_true")
    g.add_argument("--keep-streams", action="store_true", help=KEEP_STREAMS_HELP)
    g.add_argument("--structure", choices=("none", "channel", "group"), default="none",
                   help="then keep whole channels (refill; train them with `train --compact`) or dense blocks")
    g.add_argument("--out", default="masks.safetensors", help="where the masks are written")
    add_run_options(p)
    p.set_defaults(func=cmd_prune)

    ship.add_commands(sub)
    signature.add_commands(sub)

    p = sub.add_parser("prac", help="train the dense network with per-example records and save its PrAC set")
    p.add_argument("--out", default="prac.safetensors", help="where the PrAC set is written")
    add_run_options(p)
    p.set_defaults(func=cmd_prac)

    p = sub.add_parser("runs", help="list, show or remove stored runs")
    p.add_argument("action", choices=("list", "show", "rm"))
    p.add_argument("ids", nargs="*", default=[], help="run ids or unique prefixes (list: only these; show, rm)")
    p.add_argument("--store", help="an existing run store folder (else $TICKETLAB_STORE, else ./ticketlab-runs)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (the rest goes to stderr)")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("models", help="list registered models and their training recipes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("datasets", help="list registered datasets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_datasets)
    return parser


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _attach_dashed_values(argv: Sequence[str]) -> list[str]:
    """`--rewind -1ep` as `--rewind=-1ep`: argparse takes a value that starts with a dash and is not a
    plain number for an option, and would answer "expected one argument" instead of the value's own
    check naming what is wrong with it."""
    out: list[str] = []
    for token in argv:
        if out and re.match(r"^-\d", token) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    # SIGTERM (schedulers, `timeout`) ends a command as Ctrl-C does: inside training after a checkpoint
    # (the trainer's own handler), elsewhere at once, with the same message and exit code
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        args, extra = build_parser().parse_known_args(_attach_dashed_values(sys.argv[1:] if argv is None else argv))
        if extra:  # argparse would name the top-level help; the subcommand's lists the options
            raise TicketlabError(f"unrecognized arguments: {' '.join(extra)} (see `ticketlab {args.command} --help`)")
        if not getattr(args, "json", False):
            return args.func(args)
        # stdout carries `--json`'s object alone; tables, notes and warnings still reach the terminal, on stderr
        args.json_stdout = sys.stdout
        with contextlib.redirect_stdout(sys.stderr):
            return args.func(args)
    except TicketlabError as e:
        print(f"ticketlab: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ticketlab models | head`: the reader has all it wanted
        with contextlib.suppress(OSError, ValueError, AttributeError):  # stdout may be no file (tests capture it)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush fails no more
        return 141  # 128 + SIGPIPE, what a shell reports for a tool `head` cut short
    except KeyboardInterrupt:
        print("ticketlab: interrupted; run the same command again to resume (finished runs are reused, a started "
              "one continues from its last checkpoint)", file=sys.stderr)
        return 130
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
