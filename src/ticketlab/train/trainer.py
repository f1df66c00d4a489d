"""The one training loop every ticketlab method uses.

Methods extend it with hooks (hooks.py); nothing here knows about pruning. The loop is built for
exact reproducibility: the lr is a function of the iteration (optim.py), batches and
augmentations are a function of (seed, epoch) (data/batches.py), and a checkpoint holds the rest
(weights, optimiser, EMA, RNG, hook state), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ticketlab.config import TrainConfig
from ticketlab.data.batches import DeviceData, check_batch_size, stream_seed
from ticketlab.errors import TicketlabError
from ticketlab.store.files import load_state, save_state, unreadable, write_tensors
from ticketlab.train.averaging import Lookahead, WeightEMA
from ticketlab.train.evaluate import evaluate
from ticketlab.train.hooks import Hook, Step
from ticketlab.train.optim import fused_on, lr_factor, make_optimizer
from ticketlab.train.stacked import StackedModels


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainResult:
    iterations: int
    train_seconds: float
    test: dict[str, float] | None
    validation: dict[str, float] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: str | None = None  # why a hook ended training before the last epoch


class _InterruptFlag:
    """Turns Ctrl-C, and the SIGTERM a scheduler or `timeout` sends before it kills a job, into a flag
    checked between steps, so a checkpoint is never taken mid-update and the job resumes later."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.raised = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_InterruptFlag":
        self.raised = False  # a signal that ended an earlier fit() must not end this one
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.raised:  # a second signal stops at once
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


def check_stacked_training(cfg: TrainConfig) -> None:
    """What networks trained together in one batched step cannot share and stay each its own run."""
    if cfg.loss != "ce":
        raise TicketlabError(f"stacked training supports --loss ce only, got {cfg.loss!r}; drop --stack to train "
                             "these runs one by one")
    if cfg.cuda_graph:
        raise TicketlabError("stacked networks train without CUDA graphs: pass --cuda-graph or --stack, not both")
    if cfg.precision == "fp16" and not cfg.loss_scale:
        # one dynamic scaler: an overflow in one network would skip every network's step and change its scale
        raise TicketlabError("stacked training in fp16 needs a fixed --loss-scale (e.g. 1024), as one dynamic "
                             "scaler would tie each network's steps to the others'; add one or use --precision bf16")


def graphs_need_cuda(device: torch.device) -> TicketlabError:
    return TicketlabError(f"--cuda-graph replays CUDA graphs and needs --device cuda; leave it out on {device.type}")


class Trainer:
    """Trains `model` in place on `data` with `cfg`; see `fit`.

    checkpoint_dir: where the resumable state and weight snapshots go; a state found there is
    resumed. save_at: iterations whose weights are saved as `weights/it_<k>.safetensors`
    (0 = before the first step), which is what rewinding to iteration k needs.
    start_iteration: train iterations start..end only, with the lr schedule and data order of
    an uninterrupted run (lottery-ticket rewinding to iteration k).
    seeds: for `StackedModels`, one data order per network (their training seeds); without it,
    every network sees the batches of `cfg.seed`.
    """

    def __init__(
        self,
        model: nn.Module,
        data: DeviceData,
        cfg: TrainConfig,
        *,
        validation: tuple[torch.Tensor, torch.Tensor] | None = None,
        test: tuple[torch.Tensor, torch.Tensor] | None = None,
        hooks: Sequence[Hook] = (),
        loss_fn: LossFn | None = None,
        checkpoint_dir: str | Path | None = None,
        save_at: Iterable[int] = (),
        start_iteration: int = 0,
        progress: bool = True,
        description: str = "train",
        output_classes: int | None = None,
        seeds: Sequence[int] | None = None,
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        self.data = data
        self.device = data.device
        self.model = model.to(self.device)
        self.validation, self.test = validation, test
        # A lookahead comes first, so mask hooks re-apply masks to the weights it writes; a model
        # may bring its own hooks (fastnet freezes its whitening bias after a few epochs).
        lookahead = [Lookahead(cfg.lookahead_every)] if cfg.lookahead_every > 0 else []
        own = getattr(model, "training_hooks", None)
        self.hooks = lookahead + (list(own()) if callable(own) else []) + list(hooks)
        self.loss_fn = loss_fn or self._cross_entropy
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.save_at = set(save_at)
        self.progress, self.description = progress, description
        self.output_classes = output_classes  # evaluate on the first K outputs only (an abstain output follows)

        check_batch_size(cfg.batch_size, len(data))
        self.steps_per_epoch = data.steps_per_epoch(cfg.batch_size, cfg.drop_last)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if not 0 <= start_iteration < self.total_steps:
            raise TicketlabError(
                f"cannot start at iteration {start_iteration}: training has {self.total_steps} iterations "
                f"({cfg.epochs} epochs of {self.steps_per_epoch}); pick a rewind point inside training"
            )
        self.start_iteration = start_iteration
        # an EMA never updated would hand back the starting weights as trained (a lookahead never synced is
        # only a no-op, as a recipe's may be on a short run)
        if cfg.ema_decay > 0 and self.total_steps // cfg.ema_every == start_iteration // cfg.ema_every:
            raise TicketlabError(
                f"--ema-every {cfg.ema_every} averages the weights every {cfg.ema_every} steps, and this run trains "
                f"iterations {start_iteration} to {self.total_steps}, so the average would never be taken; lower it"
            )
        beyond = sorted(k for k in self.save_at if not start_iteration <= k <= self.total_steps)
        if beyond:
            raise TicketlabError(
                f"cannot save weights at iteration(s) {beyond}: this run trains iterations {start_iteration} to "
                f"{self.total_steps}; ask for snapshots inside that range"
            )
        self.networks = model.count if isinstance(model, StackedModels) else 1
        if seeds is not None and not isinstance(model, StackedModels):
            raise TicketlabError("seeds gives each network of a StackedModels its own data order; a single network "
                                 "takes its seed from the config (TrainConfig.seed)")
        if seeds is not None and len(seeds) != self.networks:
            raise TicketlabError(f"seeds gives {len(seeds)} data orders for {self.networks} network(s); "
                                 "give one per network of a StackedModels")
        self.per_network = seeds is not None
        self.seeds = list(seeds) if seeds is not None else [cfg.seed]
        if cfg.cuda_graph and self.device.type != "cuda":
            raise graphs_need_cuda(self.device)
        if isinstance(model, StackedModels):
            check_stacked_training(cfg)
        self._graphed: tuple[torch.Size, Callable[[torch.Tensor], torch.Tensor]] | None = None
        cuda = self.device.type == "cuda"
        # channels-last suits both oneDNN (CPU evaluation 1.4-2.4x faster, BENCHMARKS.md) and cuDNN's
        # tensor cores; a model opts out with `channels_last = False`. Reduced precision is CUDA-only.
        self.channels_last = getattr(model, "channels_last", True) and data.x.dim() == 4
        # augmented crops come out channels-last; a model that opted out gets them in NCHW
        self.layout = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        # CUDA graphs replay autocast's casts and cannot use its cache of cast weights
        self._autocast = (
            (lambda: torch.autocast("cuda", dtype=dtype, cache_enabled=not cfg.cuda_graph)) if cuda and dtype
            else contextlib.nullcontext
        )
        dynamic = cuda and cfg.precision == "fp16" and not cfg.loss_scale
        self.scaler = torch.amp.GradScaler("cuda") if dynamic else None
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        # per-network batches [K, B, ...] go through StackedModels.forward_each
        self.train_forward = self.forward
        if self.per_network:
            self.train_forward = torch.compile(model.forward_each) if cfg.compile else model.forward_each
        self.optimizer = make_optimizer(self.model, cfg)
        self.ema = WeightEMA(self.model, cfg.ema_decay, cfg.ema_every) if cfg.ema_decay > 0 else None

        self.iteration = 0
        self.train_seconds = 0.0
        self.history: list[dict[str, Any]] = []
        # this epoch's loss sum and correct count per network, and its examples: two in-place adds a
        # step on the device, read back only now and then (a read waits for the device)
        self._loss_sum = torch.zeros(self.networks, device=self.device)
        self._correct = torch.zeros(self.networks, device=self.device)
        self._seen = 0
        self._interrupt = _InterruptFlag()
        self.stop_reason: str | None = None

    def stop(self, reason: str) -> None:
        """End training after the current epoch (hooks call this from `on_epoch_end`, e.g.
        early-bird stopping); the run then evaluates and finishes as usual."""
        self.stop_reason = reason

    def interrupt(self) -> None:
        """Stop after the current step with a checkpoint, as Ctrl-C does; `fit` raises KeyboardInterrupt."""
        self._interrupt.raised = True

    # ---- the step -------------------------------------------------------------------------
    def _cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if logits.dim() == 3:  # K stacked networks: each one's mean loss; the step sums them
            k = logits.shape[0]
            return F.cross_entropy(logits.permute(0, 2, 1), targets.expand(k, -1), reduction="none",
                                   label_smoothing=self.cfg.label_smoothing).mean(1)
        return F.cross_entropy(logits, targets, label_smoothing=self.cfg.label_smoothing)

    def step(
        self, inputs: torch.Tensor, targets: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on one batch; returns detached (logits, loss). No host sync.

        A loss with one entry per stacked network is summed, so each network gets its own gradient.
        """
        lr = self.cfg.lr * lr_factor(self.cfg, self.iteration, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        inputs = inputs.contiguous(memory_format=self.layout)
        with self._autocast():
            try:
                logits = self._forward_for_training(inputs)
            except RuntimeError as error:
                if self.channels_last and "view size is not compatible" in str(error):
                    raise TicketlabError(
                        f"{type(self.model).__name__}.forward calls .view() on a tensor in the channels-last layout "
                        "ticketlab trains image models in; use .reshape() or .flatten() there, or set the class "
                        "attribute channels_last = False on the model"
                    ) from None
                raise
        loss = self.loss_fn(logits.float(), targets, index)
        total = loss.sum() if loss.dim() else loss
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        elif self.cfg.loss_scale:
            (total * self.cfg.loss_scale).backward()
            grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, 1.0 / self.cfg.loss_scale)
        else:
            total.backward()
        for hook in self.hooks:
            hook.after_backward(self)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        # a graph's output buffer is overwritten by the next replay: hooks get a copy of their own
        return (logits.detach().clone() if self.cfg.cuda_graph else logits.detach()), loss.detach()

    def _forward_for_training(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.cfg.cuda_graph and self.model.training:
            if self._graphed is None:
                self._graphed = (inputs.shape, self._capture(inputs))
            shape, graphed = self._graphed
            if inputs.shape == shape:  # a smaller last batch runs eagerly, on the same weights
                return graphed(inputs)
        return self.train_forward(inputs)

    def _capture(self, sample: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The model's forward and backward as CUDA graphs (`torch.cuda.make_graphed_callables`),
        captured on a copy of the first batch inside the step's autocast.

        Capturing first runs a few untimed passes in training mode, so the buffers (BatchNorm
        statistics) are put back afterwards. The graphed forward is kept here, and the model gets
        its own forward back for evaluation, export and everything else.
        """
        buffers = [b.clone() for b in self.model.buffers()]
        try:
            torch.cuda.make_graphed_callables(self.model, (sample.detach().clone(),), allow_unused_input=True)
            graphed = self.model.forward
        except (RuntimeError, AssertionError) as error:  # hooks on the model, an operation graphs cannot hold
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise TicketlabError(f"{type(self.model).__name__} cannot be trained from CUDA graphs ({reason}); "
                                 "train it without --cuda-graph") from None
        finally:
            vars(self.model).pop("forward", None)  # the instance attribute make_graphed_callables sets
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), buffers):
                    buffer.copy_(saved)
        return graphed

    # ---- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {
            "iteration": self.iteration,
            "train_seconds": self.train_seconds,
            "history": self.history,
            "sums": torch.stack([self._loss_sum, self._correct, torch.full_like(self._correct, self._seen)], 1),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "hooks": {key: h.state_dict() for key, h in zip(self._hook_keys(), self.hooks)},
            "stop_reason": self.stop_reason or "",
        }
        if self.ema is not None:
            state["ema"] = self.ema.model.state_dict()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = state["iteration"]
        self.train_seconds = state["train_seconds"]
        self.history = state["history"]
        self.stop_reason = state.get("stop_reason") or None
        sums = state["sums"].to(self.device).reshape(-1, 3)
        self._loss_sum, self._correct = sums[:, 0].clone(), sums[:, 1].clone()
        self._seen = int(sums[0, 2].item())
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        fused = fused_on([p for group in self.optimizer.param_groups for p in group["params"]])
        for group in self.optimizer.param_groups:  # a checkpoint from another device keeps this one's kernels
            group["fused"] = fused
        _match_layouts(self.optimizer)
        torch.set_rng_state(state["rng_cpu"].cpu())  # checkpoints load onto the training device
        saved = state["hooks"]
        if isinstance(saved, list):  # a checkpoint written before hook states were keyed
            saved = dict(zip(self._hook_keys(), saved))
        for key, hook in zip(self._hook_keys(), self.hooks):
            if key in saved:  # a watching hook added on resume (it splits no run ids) starts afresh
                hook.load_state_dict(saved[key])
        if self.ema is not None:
            self.ema.model.load_state_dict(state["ema"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        if "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"].cpu(), self.device)

    def _hook_keys(self) -> list[str]:
        """Each hook's key in a checkpoint: its class and its place among the hooks of that class, so that a
        watching hook added or left out on resume does not hand the others' states to the wrong hook."""
        seen: Counter[str] = Counter()
        keys = []
        for hook in self.hooks:
            kind = f"{type(hook).__module__}.{type(hook).__qualname__}"
            keys.append(f"{kind}#{seen[kind]}")
            seen[kind] += 1
        return keys

    def save_checkpoint(self) -> None:
        if self.checkpoint_dir is not None:
            save_state(self.checkpoint_dir / "checkpoint.safetensors", self.state_dict())

    def _snapshot(self) -> None:
        if self.checkpoint_dir is not None and self.iteration in self.save_at:
            write_tensors(self.checkpoint_dir / "weights" / f"it_{self.iteration}.safetensors", self.model.state_dict())

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.model

    def evaluate(self, split: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        result = evaluate(
            self.eval_model, split[0], split[1], self.data.mean, self.data.std,
            tta=self.cfg.tta, autocast=self._autocast(), channels_last=self.channels_last,
            output_classes=self.output_classes,
        )
        if not math.isfinite(result["loss"]):  # a finite training loss can hide overflowed BN statistics
            raise TicketlabError(
                f"training diverged: the network's evaluation loss is {result['loss']} at iteration "
                f"{self.iteration} (eval-mode outputs are not finite, e.g. BatchNorm running statistics "
                f"overflowed); lower --lr (now {self.cfg.lr:g}) or add --warmup. With masks, a kept filter that "
                f"starts constant does this (ticketlab.tickets.constant_units finds them)"
            )
        return result

    # ---- the loop -------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train to the end (resuming from a checkpoint if one exists) and evaluate.

        The global RNG (dropout and the like) is seeded for the run and restored afterwards, so
        training never disturbs the caller's random state.
        """
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return self._fit()

    def _fit(self) -> TrainResult:
        resumed = (
            load_state(self.checkpoint_dir / "checkpoint.safetensors", self.device) if self.checkpoint_dir else None
        )
        if resumed is not None:
            try:
                self.load_state_dict(resumed)
            except (RuntimeError, KeyError, ValueError, IndexError) as error:  # another model's checkpoint
                raise unreadable(self.checkpoint_dir / "checkpoint.safetensors", error) from None
        else:
            # a rewound run continues the schedule and data order from its rewind point
            self.iteration = self.start_iteration
            torch.manual_seed(stream_seed("train", self.cfg.seed))  # dropout and other global-RNG users
        self.model.train()  # whatever mode it was handed in: BatchNorm and dropout train
        for hook in self.hooks:
            hook.on_start(self)
        if resumed is None and self.ema is not None:
            # the average starts from the weights training starts from: masked, rewound, loaded after __init__
            self.ema.model.load_state_dict(self.model.state_dict())
        self._snapshot()

        bar = tqdm(
            total=self.total_steps, initial=self.iteration, desc=self.description, unit="it",
            disable=not self.progress, file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
        )
        epoch_data, last_postfix = None, 0.0
        with self._interrupt as interrupt, bar:
            start = time.perf_counter()
            while self.iteration < self.total_steps and self.stop_reason is None:
                epoch, b = divmod(self.iteration, self.steps_per_epoch)
                if epoch_data is None or b == 0:
                    epoch_data = [self.data.epoch(seed, epoch) for seed in self.seeds]
                inputs, targets, index = self._batch(epoch_data, b)
                try:
                    logits, loss = self.step(inputs, targets, index)
                except RuntimeError as error:  # an update too large for float32 is divergence too
                    if "without overflow" not in str(error):
                        raise
                    raise TicketlabError(
                        f"training diverged: an update overflowed float32 at iteration {self.iteration}; "
                        f"lower --lr (now {self.cfg.lr:g})"
                    ) from None
                self.iteration += 1
                if self.ema is not None and self.iteration % self.ema.every == 0:
                    self.ema.update(self.model)
                self._loss_sum.add_(loss, alpha=targets.shape[-1])
                answers = logits if self.output_classes is None else logits[..., :self.output_classes]  # not abstain
                self._correct.add_((answers.argmax(-1) == targets).sum(-1))
                self._seen += targets.shape[-1]
                step = Step(self.iteration - 1, epoch, inputs, targets, index, logits, loss)
                for hook in self.hooks:
                    hook.after_step(self, step)
                self._snapshot()
                bar.update(1)

                epoch_end = b == self.steps_per_epoch - 1
                now = time.perf_counter()
                if epoch_end or now - last_postfix > 1.0:  # reading the sums syncs the device: rarely
                    last_postfix = now
                    losses, accuracies = self._running()
                    loss_avg, acc = _mean(losses), _mean(accuracies)
                    self._check_finite(loss_avg, epoch)
                    bar.set_postfix(
                        loss=f"{loss_avg:.4f}",
                        acc=f"{acc:.3f}",
                        lr=f"{self.optimizer.param_groups[0]['lr']:.3g}",
                        refresh=False,
                    )
                if epoch_end:
                    self.train_seconds += time.perf_counter() - start
                    self._end_epoch(epoch)
                    start = time.perf_counter()
                if interrupt.raised:
                    self.train_seconds += time.perf_counter() - start
                    self.save_checkpoint()
                    raise KeyboardInterrupt
        self._graphed = None  # frees the graphs' memory pool
        for hook in self.hooks:
            hook.on_end(self)
        if self.ema is not None:  # the weights stored, returned and pruned are the ones evaluated
            self.model.load_state_dict(self.ema.model.state_dict())
        validation = self.evaluate(self.validation) if self.validation is not None else None
        test = self.evaluate(self.test) if self.test is not None else None
        return TrainResult(self.iteration, self.train_seconds, test, validation, self.history, self.stop_reason)

    def _batch(self, epochs: list, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch b of the epoch: one for all networks, or (per-network seeds) one each, stacked."""
        if not self.per_network:
            return self.data.batch(epochs[0], b, self.cfg.batch_size)
        inputs, targets, index = zip(*(self.data.batch(e, b, self.cfg.batch_size) for e in epochs))
        return torch.stack(inputs), torch.stack(targets), torch.stack(index)

    def _running(self) -> tuple[list[float], list[float]]:
        """This epoch's mean training loss and accuracy so far, per network."""
        losses, correct = torch.stack([self._loss_sum, self._correct]).tolist()
        n = max(self._seen, 1)
        return [loss / n for loss in losses], [c / n for c in correct]

    def _check_finite(self, loss: float, epoch: int) -> None:
        if not math.isfinite(loss):
            raise TicketlabError(
                f"training diverged: the loss became {loss} in epoch {epoch + 1} "
                f"(iteration {self.iteration}); lower --lr (now {self.cfg.lr:g}) or add --warmup"
            )

    def _end_epoch(self, epoch: int) -> None:
        losses, accuracies = self._running()
        record = {
            "epoch": epoch + 1, "iteration": self.iteration, "train_loss": _mean(losses),
            "train_accuracy": _mean(accuracies), "lr": self.optimizer.param_groups[0]["lr"],
            "train_seconds": self.train_seconds,
        }
        if self.networks > 1:  # stacked: each network's own figures beside the means
            record.update(train_losses=losses, train_accuracies=accuracies)
        if self.validation is not None:
            val = self.evaluate(self.validation)
            record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            if self.networks > 1:
                record.update(val_losses=val["losses"], val_accuracies=val["accuracies"])
        self.history.append(record)
        self._loss_sum.zero_()
        self._correct.zero_()
        self._seen = 0
        for hook in self.hooks:
            hook.on_epoch_end(self, epoch)
        self.save_checkpoint()


def _match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give restored optimiser state its parameter's memory layout.

    A checkpoint stores tensors contiguous; against channels-last convolution weights the fused
    CUDA kernels refuse the mixed strides (and the foreach ones fall back to a slow path).
    """
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
