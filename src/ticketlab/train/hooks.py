"""Small extension points of the one training loop.

Methods (mask enforcement, per-example records, mask updates, ...) subclass `Hook` and override
only what they need; the loop itself is never copied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ticketlab.errors import TicketlabError
from ticketlab.sparsity.masks import check_masks

if TYPE_CHECKING:
    from ticketlab.train.trainer import Trainer


@dataclass
class Step:
    """What a hook may look at after a step; tensors stay on the device (no sync)."""

    iteration: int  # 0-based index of the step just taken
    epoch: int
    inputs: torch.Tensor
    targets: torch.Tensor
    index: torch.Tensor  # training-set indices of the examples in this batch
    logits: torch.Tensor  # detached
    loss: torch.Tensor  # detached scalar


class Hook:
    def on_start(self, trainer: "Trainer") -> None:
        """Once, after weights and any resumed state are in place."""

    def after_backward(self, trainer: "Trainer") -> None:
        """Gradients exist and the optimiser has not stepped yet."""

    def after_step(self, trainer: "Trainer", step: Step) -> None:
        """The optimiser has stepped."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int) -> None:
        """After the last step of `epoch` (0-based)."""

    def on_end(self, trainer: "Trainer") -> None:
        """Once, after the last step (the schedule's, or the epoch a hook stopped at), before the final evaluation."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue exactly; tensors and JSON-able values only."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def identity(self) -> str:
        """This hook's part of a stored run's identity (`RunConfig.hooks`), so a run trained with it is
        never mistaken for one trained without it. The default is the class and its public settings
        (plain values; tensors by content; a function or other object is an error, since it could not tell
        two hooks apart); a hook that only watches returns "" and splits no runs."""
        from ticketlab.train.run import tensor_digest  # run imports this module

        cls = type(self)

        def plain(value: Any, name: str) -> Any:
            if value is None or isinstance(value, (bool, int, float, str)):
                return value
            if isinstance(value, torch.Tensor):
                return "tensor:" + tensor_digest([value])
            if isinstance(value, (list, tuple)):
                return [plain(v, name) for v in value]
            if isinstance(value, dict):
                return {str(k): plain(v, name) for k, v in value.items()}
            # a function or an object: two hooks differing only there would share one stored run
            raise TicketlabError(
                f"{cls.__name__}.{name} is a {type(value).__name__}, which cannot enter the run's identity; "
                f"override {cls.__name__}.identity() to describe it (or return '' from it if the hook only watches)"
            )

        settings = {k: plain(v, k) for k, v in vars(self).items() if not k.startswith("_")}
        return f"{cls.__module__}.{cls.__qualname__}{json.dumps(settings, sort_keys=True)}"


class MaskHook(Hook):
    """Keeps pruned weights exactly zero.

    Gradients are masked before the step, so momentum, Adam moments and weight decay never
    move a pruned weight (and a weight regrown later starts from clean optimiser state);
    weights are masked again after the step, which holds for any optimiser. Both are single
    fused `_foreach_mul_` calls, which is why the overhead stays within a few percent.
    """

    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = masks
        self._params: list[torch.nn.Parameter] = []
        self._masks: list[torch.Tensor] = []

    def on_start(self, trainer: "Trainer") -> None:
        check_masks(trainer.model, self.masks)
        params = dict(trainer.model.named_parameters())
        self._params = [params[name] for name in self.masks]
        # in the parameter's own layout (channels-last convolutions), so the fused multiply stays on its fast path
        self._masks = [torch.empty_like(p).copy_(m) for m, p in zip(self.masks.values(), self._params)]
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        torch._foreach_mul_(self._params, self._masks)

    def after_backward(self, trainer: "Trainer") -> None:
        with_grad = [(p.grad, m) for p, m in zip(self._params, self._masks) if p.grad is not None]
        if with_grad:
            grads, masks = zip(*with_grad)
            torch._foreach_mul_(list(grads), list(masks))

    def after_step(self, trainer: "Trainer", step: Step) -> None:
        self.apply()

    def on_end(self, trainer: "Trainer") -> None:
        self.apply()  # after whatever an earlier hook wrote at the end (the lookahead's average)


class FreezeAfter(Hook):
    """Trains `params` for the first `epochs` epochs only, then keeps them fixed.

    Freezing sets requires_grad, so autograd can skip work and the optimiser neither decays nor
    moves them (no gradient). Made at the start of training, it unfreezes them first, so the
    optimiser built next includes them even when the model was trained (and frozen) before.
    """

    def __init__(self, params: list[torch.nn.Parameter], epochs: int) -> None:
        self.params, self.epochs = params, epochs
        self._set(0)

    def _set(self, epoch: int) -> None:
        for p in self.params:
            p.requires_grad_(epoch < self.epochs)

    def on_start(self, trainer: "Trainer") -> None:
        self._set(trainer.iteration // trainer.steps_per_epoch)

    def on_epoch_end(self, trainer: "Trainer", epoch: int) -> None:
        self._set(epoch + 1)
