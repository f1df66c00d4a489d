"""Dynamic sparse training: SET, RigL and GraNet as one hook that owns the masks and moves them.

The network trains sparse from the first step; every `every` steps each layer drops a fraction of
its smallest-magnitude kept weights and grows as many connections elsewhere (`sparsity.dynamic`):

- SET (Mocanu et al. 2018): grown at random.
- RigL (Evci et al. 2020): grown where the dense gradient of that step's batch is largest. The
  published settings: every 100 steps, 30% cosine-annealed to 0 at 75% of training, ERK masks.
- GraNet (Liu et al. 2021): the density also falls, from `start_density` (1.0: dense-to-sparse) to
  the target on the cubic schedule of gradual magnitude pruning (one global magnitude ranking),
  and right after each pruning step a "neuroregeneration" moves connections as RigL does; its
  rate starts at 0.5 and decays (cosine) to 0.005. Published: every 1000 steps.

Grown weights start at zero with their optimiser state (momentum, Adam moments) cleared, and
gradients are masked before every step, so a connection off the mask neither moves nor carries
stale momentum into its next life. The topology is fixed from `end` (a fraction of training) on.
The final masks are written to the run's folder as `masks.safetensors`.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

import torch

from ticketlab.config import DST_METHODS
from ticketlab.data.batches import stream_seed
from ticketlab.errors import TicketlabError
from ticketlab.sparsity.criteria import magnitude, random_scores
from ticketlab.sparsity.dynamic import cubic_density, drop_and_grow, update_fraction
from ticketlab.sparsity.masks import Masks, check_masks, global_masks, masks_from_scores, save_masks
from ticketlab.sparsity.prunable import select_prunable
from ticketlab.train.hooks import Hook, Step

if TYPE_CHECKING:
    from ticketlab.train.trainer import Trainer

# published settings: (update every n steps, fraction moved, its floor)
DEFAULTS = {"set": (100, 0.3, 0.0), "rigl": (100, 0.3, 0.0), "granet": (1000, 0.5, 0.005)}


class DynamicSparsity(Hook):
    """Trains with `masks` (the starting topology: e.g. random ERK masks from `initial_masks`) and moves them."""

    def __init__(self, method: str, masks: Masks, *, every: int | None = None, alpha: float | None = None,
                 end: float = 0.75, final_density: float | None = None, seed: int = 0) -> None:
        if method not in DST_METHODS:
            raise TicketlabError(f"unknown dynamic sparse training method {method!r}; choose one of: "
                                 f"{', '.join(DST_METHODS)}")
        every_default, alpha_default, self.floor = DEFAULTS[method]
        self.method, self.seed = method, seed
        self.every = every_default if every is None else every
        self.alpha = alpha_default if alpha is None else alpha
        self.end, self.final_density = end, final_density
        self.masks = {name: m.detach().bool().cpu() for name, m in masks.items()}
        if not self.masks:
            raise TicketlabError("dynamic sparse training needs starting masks of at least one layer "
                                 "(initial_masks(model, density) draws them)")
        for flag, value in (("--update-fraction", self.alpha), ("--update-end", end)):
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise TicketlabError(f"{flag} must be a number, got {value!r}")
        if type(self.every) is not int or self.every < 1:
            raise TicketlabError(f"--update-every must be a positive whole number of steps, got {self.every!r}")
        if not 0 < self.alpha < 1:
            raise TicketlabError(f"--update-fraction must be in (0, 1) (published: 0.3 for RigL and SET, 0.5 for "
                                 f"GraNet), got {self.alpha}")
        if not 0 < end <= 1:
            raise TicketlabError(f"--update-end is the fraction of training after which the masks stay fixed, in "
                                 f"(0, 1] (published 0.75), got {end}")
        start = self.density(self.masks)
        if method == "granet":
            if final_density is None or not 0 < final_density < start:
                raise TicketlabError(f"GraNet prunes from the starting masks' density ({start:.3g}) down to "
                                     f"--density; give a lower one, got {final_density}")
        elif final_density is not None:
            raise TicketlabError(f"{method} keeps its starting density; a final density is GraNet's (--dst granet)")
        self._current: Masks = {}
        self._factors: list[torch.Tensor] = []
        self._params: list[torch.nn.Parameter] = []
        self._grads: dict[str, torch.Tensor] = {}
        self._trainer: Trainer | None = None

    @staticmethod
    def density(masks: Masks) -> float:
        return sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())

    @property
    def current(self) -> Masks:
        """The masks as they stand (after training: the final topology), on the CPU."""
        return {name: m.cpu() for name, m in (self._current or self.masks).items()}

    # ---- the hook --------------------------------------------------------------------------
    def on_start(self, trainer: "Trainer") -> None:
        averaging = [flag for flag, on in (("--ema", trainer.ema is not None),
                                           ("--lookahead", bool(trainer.cfg.lookahead_every))) if on]
        if averaging:
            raise TicketlabError(f"dynamic sparse training moves the masks, and a weight average ({averaging[0]}) "
                                 f"would bring dropped weights back; pass {averaging[0]} 0 (a recipe may turn it on)")
        if trainer.networks != 1:
            raise TicketlabError("dynamic sparse training trains one network at a time; drop --stack")
        check_masks(trainer.model, self.masks)
        params = dict(trainer.model.named_parameters())
        self._params = [params[name] for name in self.masks]
        device = self._params[0].device
        # a resumed run has its moved masks already (load_state_dict)
        self._current = {n: (self._current or self.masks)[n].to(device) for n in self.masks}
        self._end = round(self.end * trainer.total_steps)
        # the last update: GraNet's reaches its final density there; SET's and RigL's come before `end`, where
        # the annealed fraction reaches 0
        self._last = self._end // self.every * self.every
        if self.method != "granet" and self._last == self._end:
            self._last -= self.every
        if self._last < self.every:
            raise TicketlabError(
                f"--update-every {self.every} moves the masks every {self.every} steps until step {self._end} "
                f"({self.end:g} of the {trainer.total_steps}), so they would never move; lower --update-every or "
                "train longer")
        self._trainer = trainer
        self._refresh()

    def _updates_at(self, iteration: int) -> bool:
        """Whether the masks move after step `iteration` (0-based): every `every` steps, up to the last."""
        return (iteration + 1) % self.every == 0 and iteration + 1 <= self._last

    def after_backward(self, trainer: "Trainer") -> None:
        if self.method != "set" and self._updates_at(trainer.iteration):  # the dense gradient, before masking
            self._grads = {n: p.grad.detach().abs().clone() for n, p in zip(self.masks, self._params)
                           if p.grad is not None}
        with_grad = [(p.grad, m) for p, m in zip(self._params, self._factors) if p.grad is not None]
        if with_grad:
            torch._foreach_mul_([g for g, _ in with_grad], [m for _, m in with_grad])

    @torch.no_grad()
    def after_step(self, trainer: "Trainer", step: Step) -> None:
        self._apply()
        if self._updates_at(step.iteration):
            self._update(step.iteration + 1)

    def on_end(self, trainer: "Trainer") -> None:
        self._apply()
        if trainer.checkpoint_dir is not None:
            save_masks(trainer.checkpoint_dir / "masks.safetensors", self.current)

    def _refresh(self) -> None:
        """The masks as factors in each parameter's own dtype and layout (channels-last convolutions), so the
        fused multiplies stay on their fast path, as MaskHook's do; then applied."""
        self._factors = [torch.empty_like(p).copy_(self._current[n]) for n, p in zip(self.masks, self._params)]
        self._apply()

    @torch.no_grad()
    def _apply(self) -> None:
        torch._foreach_mul_(self._params, self._factors)

    @torch.no_grad()
    def _update(self, iteration: int) -> None:
        """Move the connections after `iteration` steps: GraNet prunes to its schedule first."""
        weights = dict(zip(self.masks, self._params))
        if self.method == "granet":
            target = cubic_density(self.density(self.masks), self.final_density, iteration, self._last)
            self._current = global_masks(magnitude(weights), target, current=self._current)
        fraction = update_fraction(self.alpha, iteration, self._end, self.floor)
        generator = torch.Generator().manual_seed(stream_seed("dst-grow", self.seed, iteration))
        for name, p in weights.items():
            mask = self._current[name]
            if bool(mask.all()):  # nowhere to grow but where it dropped (GraNet's pruning may leave a layer dense)
                continue
            if self.method == "set":
                score = torch.rand(p.shape, generator=generator).to(p.device)
            else:
                score = self._grads.get(name, torch.zeros_like(p))
            new, grown = drop_and_grow(mask, p, score, round(fraction * int(mask.sum())))
            # a grown weight starts from zero, and so does its optimiser state
            p.masked_fill_(grown, 0.0)
            self._clear_state(p, grown)
            self._current[name] = new
        self._grads = {}
        self._refresh()

    def _clear_state(self, p: torch.nn.Parameter, grown: torch.Tensor) -> None:
        state = self._trainer.optimizer.state.get(p, {}) if self._trainer is not None else {}
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                value.masked_fill_(grown, 0.0)

    # ---- resuming --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {f"mask/{name}": m.cpu() for name, m in self._current.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._current = {name: state[f"mask/{name}"].bool() for name in self.masks if f"mask/{name}" in state}


def initial_masks(model: torch.nn.Module, density: float, budget: str = "erk", seed: int = 0) -> Masks:
    """Random masks of the prunable weights at `density`, split over the layers by `budget` (ERK, as RigL
    starts), drawn from `seed`; density 1 keeps every weight (GraNet's dense-to-sparse start)."""
    weights = {n: p.detach() for n, p in select_prunable(model).items()}
    if density == 1.0:
        return {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    generator = torch.Generator().manual_seed(stream_seed("dst-masks", seed))
    return masks_from_scores(random_scores(weights, generator), density, budget)
