"""Weight averaging: an evaluation-only EMA, and airbench's lookahead that trains on its average."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ticketlab.train.hooks import Hook, Step

if TYPE_CHECKING:
    from ticketlab.train.trainer import Trainer


class WeightEMA:
    """An exponential moving average of the weights, updated every `every` steps.

    BatchNorm statistics are copied rather than averaged: they already are running averages.
    """

    def __init__(self, model: nn.Module, decay: float, every: int) -> None:
        self.decay, self.every = decay, every
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        live = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(list(self.model.parameters()), live, 1.0 - self.decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


class Lookahead(Hook):
    """The lookahead/EMA scheme of the fast CIFAR recipe, as airbench 0.1.8's `train` runs it.

    Every `every` steps the average moves towards the live weights by 1 - rho and the live
    weights are set to it; after the last step (or where a hook stopped training) they are set to
    it once more. rho = BASE**every * (t / T)**POWER grows over training: follow the live weights
    early, average hard at the end.
    Every float entry of the state dict takes part, BatchNorm statistics included. Put it before
    mask hooks, so they re-apply masks to what it writes.
    """

    BASE = 0.95
    POWER = 3.0

    def __init__(self, every: int) -> None:
        self.every = every
        self.average: dict[str, torch.Tensor] | None = None
        self.live: dict[str, torch.Tensor] = {}

    def on_start(self, trainer: "Trainer") -> None:
        # views of the model's own tensors, taken once: a state_dict() call per sync costs the host
        # more than the sync's two kernels on a GPU
        self.live = {k: v for k, v in trainer.model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def after_step(self, trainer: "Trainer", step: Step) -> None:
        done = step.iteration + 1
        live = self.live
        if done % self.every == 0:
            if self.average is None:  # the first sync starts the average (airbench's rho there is below 1e-6)
                self.average = {k: v.detach().clone() for k, v in live.items()}
            else:
                rho = self.BASE**self.every * (done / trainer.total_steps) ** self.POWER
                torch._foreach_lerp_(list(self.average.values()), [live[k] for k in self.average], 1.0 - rho)
                self._write_back(live)
        if done == trainer.total_steps and self.average is not None:
            self._write_back(live)

    def on_end(self, trainer: "Trainer") -> None:
        if trainer.stop_reason is not None and self.average is not None:  # stopped early: end on the average too
            self._write_back(self.live)

    def _write_back(self, live: dict[str, torch.Tensor]) -> None:
        torch._foreach_copy_([live[k] for k in self.average], list(self.average.values()))

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average} if self.average is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average = state.get("average")
