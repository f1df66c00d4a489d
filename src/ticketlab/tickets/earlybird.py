"""Early-bird stopping (You et al. 2020, "Drawing Early-Bird Tickets", ICLR): end dense training once
the mask that pruning would give has stopped changing (You et al. 2020, "Drawing early-bird tickets").

Every epoch the would-be mask is computed from the live weights; when the last `window` (5)
epoch-to-epoch mask distances are all below `threshold` (0.08), the ticket has emerged and further
dense training would not change it, so the trainer is told to stop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ticketlab.errors import TicketlabError
from ticketlab.sparsity.criteria import magnitude
from ticketlab.sparsity.masks import Masks, prune_fraction
from ticketlab.train.hooks import Hook

if TYPE_CHECKING:
    from ticketlab.train.trainer import Trainer


def mask_distance(a: Masks, b: Masks) -> float:
    """Entries that differ between `a` and `b`, divided by the number of entries `a` keeps, over all layers.

    Normalising by the kept count (not the total) makes the distance the fraction of the ticket that
    changed, which stays meaningful at high sparsity.
    """
    if set(a) != set(b):
        raise TicketlabError(
            f"masks cover different layers: {sorted(a)} vs {sorted(b)}; compare masks of the same layers"
        )
    for name in a:
        if a[name].shape != b[name].shape:
            raise TicketlabError(
                f"masks of {name} have shapes {tuple(a[name].shape)} and {tuple(b[name].shape)}; "
                "compare masks of one model"
            )
    kept = sum(int(m.count_nonzero()) for m in a.values())
    if kept == 0:
        raise TicketlabError("the first mask keeps no weight, so a distance relative to its kept count is undefined")
    differ = sum(int((a[n].bool() != b[n].to(a[n].device).bool()).sum()) for n in a)
    return differ / kept


EARLY_BIRD_WINDOW = 5  # epochs whose mask distances must all be below the threshold (You et al. 2020)


class EarlyBird(Hook):
    """Stops training after the first epoch whose last `window` mask distances are all < `threshold`.

    The would-be mask is `prune_fraction(magnitude(weights of names), current, fraction, scope,
    layer_fractions)`, given the study's structure by `structure(mask, model)` when there is one (a
    structured study's ticket is the refilled or regrouped mask, so that is the one to watch settle),
    i.e. the next IMP step's mask; each epoch's is compared with the previous
    epoch's (`mask_distance(new, previous)`), so the first distance exists after the second epoch.
    `distances` holds every epoch's distance; `stopped_epoch` is the 1-based epoch it stopped after, and
    `previous` the last epoch's mask (once stopped: the early-bird ticket).
    """

    def __init__(
        self,
        names: Sequence[str],
        fraction: float,
        current: Masks | None = None,
        scope: str = "global",
        threshold: float = 0.08,
        window: int = EARLY_BIRD_WINDOW,
        layer_fractions: Mapping[str, float] | None = None,
        structure: Callable[[Masks, torch.nn.Module], Masks] | None = None,
    ) -> None:
        if not names:
            raise TicketlabError("early-bird stopping needs the names of the layers to prune; got none")
        if not 0.0 < fraction < 1.0:
            raise TicketlabError(f"early-bird pruning fraction must be in (0, 1), got {fraction}")
        if scope not in ("global", "layerwise"):
            raise TicketlabError(f"early-bird pruning scope must be 'global' or 'layerwise', got {scope!r}")
        if not threshold > 0:
            raise TicketlabError(f"early-bird threshold must be > 0, got {threshold}; the paper uses 0.08")
        if window < 1:
            raise TicketlabError(f"early-bird window must be >= 1 epoch, got {window}; the paper uses 5")
        self.names = list(names)
        self.fraction, self.current, self.scope = fraction, current, scope
        self.threshold, self.window = threshold, window
        self.layer_fractions = layer_fractions
        self.structure = structure
        self.previous: Masks | None = None
        self.distances: list[float] = []
        self.stopped_epoch: int | None = None

    def on_start(self, trainer: Trainer) -> None:
        params = dict(trainer.model.named_parameters())
        missing = [name for name in self.names if name not in params]
        if missing:
            raise TicketlabError(
                f"early-bird layers {', '.join(missing[:5])} are not parameters of the model; "
                "use names from ticketlab.sparsity.select_prunable(model)"
            )
        self._mask_now(trainer.model)  # a bad `current` or `layer_fractions` fails now, not after an epoch

    def _mask_now(self, model: torch.nn.Module) -> Masks:
        params = dict(model.named_parameters())
        weights = {name: params[name] for name in self.names}
        mask = prune_fraction(magnitude(weights), self.current, self.fraction, self.scope, self.layer_fractions)
        return mask if self.structure is None else self.structure(mask, model)

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        if self.stopped_epoch is not None:
            return
        mask = self._mask_now(trainer.model)
        if self.previous is not None:
            self.distances.append(mask_distance(mask, self.previous))
        self.previous = mask
        last = self.distances[-self.window :]
        if len(last) == self.window and all(d < self.threshold for d in last):
            self.stopped_epoch = epoch + 1
            shown = ", ".join(f"{d:.4f}" for d in last)
            trainer.stop(
                f"early-bird ticket after epoch {epoch + 1}: the last {self.window} mask distances ({shown}) "
                f"are all below {self.threshold:g}"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"previous": self.previous or {}, "distances": list(self.distances), "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous = state["previous"] or None
        self.distances = list(state["distances"])
        self.stopped_epoch = state["stopped_epoch"]
