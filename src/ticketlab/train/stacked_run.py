"""Stored runs trained together: several networks of one architecture in one batched step.

A ticket study trains, at every level, arms (the ticket and its baselines, for every seed) that
share one schedule and differ in starting weights, masks and seed. `train_stacked` trains them
as one `StackedModels` (each network with its own seed's data order) and then stores each
network as a run of its own, so a study reads its arms as if they had been trained one by one. The group itself is a run
of kind "stack" while it trains (resumable like any run) and is removed once its members are
stored. It builds on run.py's internals, so both kinds of run share one identity and layout.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ticketlab.config import RunConfig
from ticketlab.data import ImageDataset
from ticketlab.data.batches import DeviceData, check_batch_size
from ticketlab.errors import TicketlabError
from ticketlab.sparsity import check_masks
from ticketlab.store import RunRecord, RunStore, read_json, read_tensors, write_json, write_tensors
from ticketlab.train.hooks import MaskHook
from ticketlab.train.run import (
    RunResult,
    _fit,
    _identify,
    _load_data,
    _prepare,
    _reuse,
    _summary,
    canonical_train,
    default_augment,
    resolve_device,
    train_run,
)
from ticketlab.train.stacked import StackedModels, stack_masks
from ticketlab.train.trainer import TrainResult, check_stacked_training

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Member:
    """One network of a stacked group: its starting weights (None: the seeded initialisation),
    its masks (None: dense) and its training seed (None: the config's), which also sets its own
    data order, as in a run of that seed alone."""

    init_state: Tensors | None = None
    masks: Tensors | None = None
    seed: int | None = None


def train_stacked(
    config: RunConfig,
    members: Sequence[Member],
    *,
    store: RunStore,
    model: nn.Module | None = None,
    dataset: ImageDataset | None = None,
    start_iteration: int = 0,
    data_dir: str | Path | None = None,
    download: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
    description: str | None = None,
) -> list[RunResult]:
    """Train (or reuse, or resume) one run per member, all in one batched step.

    Each member's run is `config` with its own starting weights and masks, marked `stacked`:
    its numbers equal training it alone up to float rounding. Finished members are reused and
    only the others are trained; a lone remaining member trains by itself.
    """
    config.train.validate()
    check_stacked_training(config.train)
    if not members:
        raise TicketlabError("train_stacked needs at least one member")
    if config.data.trigger:
        raise TicketlabError("a trigger set is mixed into one run at a time; train it without stacking")
    dev = resolve_device(str(device) if device is not None else config.device, config.train)
    given_config, given_dataset = config, dataset  # a lone member is the plain run of these, by name or by content
    config, dataset = _load_data(replace(config, device=dev.type, stacked=True), dataset, data_dir, download,
                                 progress)
    config = replace(config, train=canonical_train(config.train, len(dataset.train_y) - config.data.validation))
    identified = [_identify(config if m.seed is None else replace(config, train=replace(config.train, seed=m.seed)),
                            dataset, copy.deepcopy(model) if model is not None else None,
                            m.init_state, m.masks, start_iteration, ()) for m in members]
    for (_, net), member in zip(identified, members):  # before the store holds anything of the group
        if member.masks:
            check_masks(net, member.masks)
    check_batch_size(config.train.batch_size, len(dataset.train_y) - config.data.validation)
    results: list[RunResult | None] = []
    for member_config, net in identified:
        record = store.get(member_config.run_id)
        results.append(_reuse(record, net, dev) if record is not None and record.finished else None)
    pending: dict[str, int] = {}  # run id -> first member with it (identical members train once)
    for k, (member_config, _) in enumerate(identified):
        if results[k] is None:
            pending.setdefault(member_config.run_id, k)
    done: dict[str, RunResult] = {}
    # a group that finished but was cut off while storing its members is read, not retrained
    finished = _finished_group(store, set(pending)) if pending else None
    if len(pending) == 1 and finished is None:  # nothing to stack with: train it the plain way
        run_id, k = next(iter(pending.items()))
        done[run_id] = train_run(
            replace(given_config, device=dev.type, stacked=False, train=identified[k][0].train), store=store,
            model=copy.deepcopy(model) if model is not None else None, init_state=members[k].init_state,
            dataset=given_dataset, data_dir=data_dir, download=download, masks=members[k].masks,
            start_iteration=start_iteration, device=dev, progress=progress, description=description)
    elif pending:
        record = finished
        if record is None:
            order = list(pending.values())
            group = replace(identified[order[0]][0], kind="stack", members=tuple(pending), init="", masks="")
            record = _train_group(group, [identified[k][1] for k in order], [members[k].masks for k in order],
                                  [identified[k][0].train.seed for k in order], store=store, dataset=dataset,
                                  device=dev, progress=progress, description=description)
        trained = _group_members(record, identified[next(iter(pending.values()))][1])
        noise_rate = _prepare(config, dataset, None).noise_rate if config.data.noise else None
        for run_id, k in pending.items():
            done[run_id] = _store_member(identified[k][0], trained[run_id], store, noise_rate, dev)
        if all((stored := store.get(run_id)) is not None and stored.finished for run_id in trained):
            store.remove(record.run_id)  # every member is stored as a run of its own now
    for k, (member_config, _) in enumerate(identified):
        if results[k] is None:
            result = done[member_config.run_id]
            first = pending[member_config.run_id] == k
            results[k] = result if first else replace(result, model=copy.deepcopy(result.model))
    return results  # type: ignore[return-value]


def _finished_group(store: RunStore, wanted: set[str]) -> RunRecord | None:
    for record in store.list(kind="stack"):
        if record.finished and wanted <= set((record.summary or {}).get("members", ())):
            return record
    return None


def _train_group(
    group: RunConfig, nets: list[nn.Module], masks: list[Tensors | None], seeds: list[int], *, store: RunStore,
    dataset: ImageDataset, device: torch.device, progress: bool, description: str | None,
) -> RunRecord:
    """Train (or resume) the group run to its finished record."""
    stacked = StackedModels(nets)
    augment = default_augment(group.data, dataset, group.model.name)  # a bad setting stops before the store
    with store.claim(group) as record:
        if record.finished:
            return record
        data = _prepare(group, dataset, None)
        train_set = data.train_set
        device_data = DeviceData(train_set.train_x, train_set.train_y, train_set.mean, train_set.std, device, augment)
        hooks = [MaskHook(stack_masks(_complete(masks, nets[0])))] if any(masks) else []
        result = _fit(store, group, record, stacked, device_data, validation=data.validation,
                      test=(dataset.test_x, dataset.test_y), hooks=hooks, start_iteration=group.start,
                      seeds=seeds if len(set(seeds)) > 1 else None,
                      progress=progress,
                      description=description or f"{len(nets)} x {group.model.name} on {dataset.name}")
        summary: dict[str, Any] = {"members": list(group.members), "iterations": result.iterations,
                                   "train_seconds": round(result.train_seconds, 3),
                                   "test_accuracies": result.test["accuracies"], "test_losses": result.test["losses"]}
        if result.validation is not None:
            summary.update(val_accuracies=result.validation["accuracies"], val_losses=result.validation["losses"])
        finished = store.finish(group.run_id, summary)
        (record.folder / "checkpoint.safetensors").unlink(missing_ok=True)  # after: a crash between keeps the run
        return finished


def _group_members(record: RunRecord, net: nn.Module) -> dict[str, tuple[nn.Module, TrainResult]]:
    """Each member of a finished group, by run id: its trained network and its own figures."""
    summary, history = record.summary or {}, read_json(record.folder / "history.json")
    count = len(summary["members"])
    stacked = StackedModels([net] * count)  # copies of one architecture; the stored state fills them
    stacked.load_state_dict(read_tensors(record.folder / "final.safetensors"))
    return {run_id: (trained, _member_result(summary, history, k, count))
            for k, (run_id, trained) in enumerate(zip(summary["members"], stacked.unstack()))}


def _complete(masks: list[Tensors | None], net: nn.Module) -> list[Tensors]:
    """Every member masks the same parameters: a member without a mask for one keeps all of it."""
    names = sorted({n for m in masks if m for n in m})
    return [{n: (m or {}).get(n, torch.ones_like(net.get_parameter(n))) for n in names} for m in masks]


def _member_result(summary: dict[str, Any], history: list[dict[str, Any]], k: int, count: int) -> TrainResult:
    """Network k's own figures out of the group's (its share of the time: the group's / count)."""
    own = []
    for record in history:
        entry = {key: value for key, value in record.items() if not isinstance(value, list)}
        entry["train_seconds"] = record["train_seconds"] / count
        for each, key in (("train_losses", "train_loss"), ("train_accuracies", "train_accuracy"),
                          ("val_losses", "val_loss"), ("val_accuracies", "val_accuracy")):
            if each in record:
                entry[key] = record[each][k]
        own.append(entry)
    test = {"accuracy": summary["test_accuracies"][k], "loss": summary["test_losses"][k]}
    validation = None
    if "val_accuracies" in summary:
        validation = {"accuracy": summary["val_accuracies"][k], "loss": summary["val_losses"][k]}
    return TrainResult(summary["iterations"], summary["train_seconds"] / count, test, validation, own, None)


def _store_member(config: RunConfig, trained: tuple[nn.Module, TrainResult], store: RunStore,
                  noise_rate: float | None, device: torch.device) -> RunResult:
    """Stored as `train_run` stores a run, and returned on the training device as it returns one, so a study
    reads it as one trained alone."""
    net, result = trained
    record = store.begin(config)
    write_tensors(record.folder / "final.safetensors", net.state_dict())
    write_json(record.folder / "history.json", result.history)
    summary = _summary(config, net, result)
    if noise_rate is not None:
        summary["noise_rate"] = round(noise_rate, 6)
    store.finish(config.run_id, summary)
    return RunResult(config.run_id, net.to(device), summary, result.history, record.folder, reused=False)
