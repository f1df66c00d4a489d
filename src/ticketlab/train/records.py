"""Per-example training records: what the network did with every training example, every epoch.

PrAC sets (Zhang et al. 2021, "Less data is more") need, per example and epoch, whether the prediction on the
augmented training view was correct; forgetting events (Toneva et al. 2019, "An Empirical Study of
Example Forgetting during Deep Neural Network Learning") are read off that history. The hook
records it from the logits the step already computed, so recording costs a few index_put calls per
step and never syncs the host.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ticketlab.errors import TicketlabError
from ticketlab.store.files import read_tensors, write_tensors
from ticketlab.train.hooks import Hook, Step

if TYPE_CHECKING:
    from ticketlab.train.trainer import Trainer

_FIELDS = ("correct", "loss", "seen", "probs")


class ExampleRecords(Hook):
    """Records, per epoch and training example: `correct` bool [epochs, N], `loss` float32 [epochs, N]
    (cross-entropy of the logits the step saw, without label smoothing), `seen` bool [epochs, N]; and
    `probs` float32 [N, K], an EMA of the softmax over the example's visits (the first visit sets it).

    Entries of an epoch in which an example was not visited keep `seen` False and mean nothing.
    """

    def __init__(self, num_examples: int, num_classes: int, epochs: int, ema: float = 0.9) -> None:
        if num_examples < 1 or num_classes < 1 or epochs < 1:
            raise TicketlabError(
                f"per-example records need at least one example, class and epoch, got num_examples={num_examples}, "
                f"num_classes={num_classes}, epochs={epochs}"
            )
        if not 0.0 <= ema < 1.0:
            raise TicketlabError(f"records ema must be in [0, 1), got {ema}; it is the weight of the past visits")
        self.ema = ema
        self.correct = torch.zeros(epochs, num_examples, dtype=torch.bool)
        self.loss = torch.zeros(epochs, num_examples, dtype=torch.float32)
        self.seen = torch.zeros(epochs, num_examples, dtype=torch.bool)
        self.probs = torch.zeros(num_examples, num_classes, dtype=torch.float32)
        self.answers: int | None = None  # the class outputs, when an abstain output follows them (the trainer's)

    def identity(self) -> str:
        return ""  # it only watches: the run's numbers are those of training without it

    @property
    def epochs(self) -> int:
        return self.correct.shape[0]

    @property
    def num_examples(self) -> int:
        return self.correct.shape[1]

    @property
    def num_classes(self) -> int:
        return self.probs.shape[1]

    def on_start(self, trainer: Trainer) -> None:
        if len(trainer.data) != self.num_examples:
            raise TicketlabError(
                f"records were made for {self.num_examples} examples but the training set has {len(trainer.data)}; "
                "create ExampleRecords with num_examples=len(training set)"
            )
        if trainer.cfg.epochs > self.epochs:
            raise TicketlabError(
                f"records were made for {self.epochs} epochs but training runs {trainer.cfg.epochs}; "
                "create ExampleRecords with epochs=the run's epochs"
            )
        self.answers = trainer.output_classes
        for name in _FIELDS:
            setattr(self, name, getattr(self, name).to(trainer.device))

    @torch.no_grad()
    def after_step(self, trainer: Trainer, step: Step) -> None:
        logits, targets, index = step.logits.float(), step.targets, step.index
        if logits.shape[1] != self.num_classes:
            raise TicketlabError(
                f"records were made for {self.num_classes} classes but the model outputs {logits.shape[1]}; "
                "create ExampleRecords with num_classes=the model's output count"
            )
        p = logits.softmax(1)
        first = ~self.seen[:, index].any(0, keepdim=True).T
        self.probs[index] = torch.where(first, p, self.ema * self.probs[index] + (1.0 - self.ema) * p)
        self.correct[step.epoch, index] = logits[:, :self.answers].argmax(1) == targets  # abstaining is no answer
        self.loss[step.epoch, index] = F.cross_entropy(logits, targets, reduction="none")
        self.seen[step.epoch, index] = True

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in _FIELDS:
            mine, theirs = getattr(self, name), state[name]
            if theirs.shape != mine.shape or theirs.dtype != mine.dtype:
                raise TicketlabError(
                    f"stored records {name} are {theirs.dtype} {tuple(theirs.shape)}, these records "
                    f"{mine.dtype} {tuple(mine.shape)}; resume with the examples, classes and epochs of the stored run"
                )
        for name in _FIELDS:
            setattr(self, name, state[name].to(getattr(self, name).device))

    def save(self, path: str | Path) -> None:
        write_tensors(Path(path), {**self.state_dict(), "ema": torch.tensor(self.ema, dtype=torch.float64)})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ExampleRecords:
        path = Path(path)
        if not path.is_file():
            raise TicketlabError(f"no records file at {path}; give the path of a file written by ExampleRecords.save")
        tensors = read_tensors(path, device=device)
        missing = [name for name in (*_FIELDS, "ema") if name not in tensors]
        if missing:
            raise TicketlabError(f"{path} is not a records file: it has no {', '.join(missing)}")
        epochs, n = tensors["correct"].shape
        records = cls(n, tensors["probs"].shape[1], epochs, float(tensors["ema"]))
        records.load_state_dict(tensors)
        return records


def _history(correct: torch.Tensor, seen: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if correct.dim() != 2:
        raise TicketlabError(f"correctness history must be [epochs, examples], got shape {tuple(correct.shape)}")
    if seen is None:
        seen = torch.ones_like(correct, dtype=torch.bool)
    if seen.shape != correct.shape:
        raise TicketlabError(f"seen has shape {tuple(seen.shape)}, correct {tuple(correct.shape)}; give one per entry")
    return correct.bool(), seen.bool()


def forgetting_events(correct: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
    """long [N]: transitions correct -> incorrect between consecutive seen epochs of each example.

    Unseen epochs are skipped rather than read as incorrect, so a gap in the history is no event.
    """
    correct, seen = _history(correct, seen)
    events = torch.zeros(correct.shape[1], dtype=torch.long, device=correct.device)
    last = torch.zeros_like(events, dtype=torch.bool)  # correctness at the last seen epoch; False before any
    for right, visited in zip(correct, seen):
        events += visited & last & ~right
        last = torch.where(visited, right, last)
    return events


def never_learned(correct: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
    """bool [N]: never correct in a seen epoch (an example never seen counts: nothing shows it was learned)."""
    correct, seen = _history(correct, seen)
    return ~(correct & seen).any(0)


def hard_to_memorise(correct: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
    """bool [N]: the PrAC rule's "hard to memorise" examples: forgotten at least once or never learned."""
    return (forgetting_events(correct, seen) > 0) | never_learned(correct, seen)
