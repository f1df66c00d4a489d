"""Black-box ownership: a keyed trigger set (Adi et al. 2018, the black-box half of Chen et al. 2021).

The owner trains the ticket on its data plus a few abstract images whose labels only the key knows;
the trained network answers them as taught, while a network that never saw them agrees with each
keyed label by chance, 1 in K. Checking needs only the network's answers (an API serving it is
enough), not its weights, which is what the white-box signature (`tickets/signature.py`) needs.

Images and labels both come from the key, so nothing is stored beside the ticket, and a forger
cannot pick a set that a stolen network already answers "correctly" (adversarial examples would do
that): the set is whatever the key makes, and finding a key whose labels a given network matches
is as hopeless as the chance bound says.

The images are smooth random colour fields (random values on a coarse grid, upsampled) with a little
pixel noise: far from natural images, so they cost the task little, and smooth, so the crops and
flips of training augmentation change them only a little.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.data.batches import stream_seed
from ticketlab.data.dataset import ImageDataset
from ticketlab.errors import TicketlabError
from ticketlab.tickets.signature import SHOWN, log_tail
from ticketlab.train.evaluate import predict


@dataclass(frozen=True)
class TriggerSet:
    """`size` keyed images, each mixed into the training examples `copies` times."""

    key: str
    size: int = 100
    copies: int = 20  # 2,000 examples beside CIFAR-10's 50,000 (4%); what they cost and give: BENCHMARKS.md

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise TicketlabError("a trigger set needs a secret key (non-empty text) that only you know")
        for name in ("size", "copies"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise TicketlabError(f"a trigger set's {name} is a whole number of at least 1, got {value!r}")

    def identity(self) -> str:
        """What enters a run's id: the sizes and a digest of the key, never the key itself (the run's
        config is written beside its weights)."""
        digest = hashlib.sha256(f"ticketlab-trigger:{self.key}".encode()).hexdigest()[:16]
        return f"{self.size}x{self.copies}@{digest}"

    def _generator(self, what: str) -> torch.Generator:
        secret = hashlib.sha256(self.key.encode()).hexdigest()
        return torch.Generator().manual_seed(stream_seed("trigger", what, secret))

    def images(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """uint8 [size, C, H, W]: each a colour field on a keyed grid of 3 to 8 cells a side, upsampled,
        with pixel noise of a tenth of the range."""
        c, h, w = shape
        generator = self._generator("images")
        out = torch.empty(self.size, c, h, w)
        for i in range(self.size):
            cells = int(torch.randint(3, 9, (1,), generator=generator))
            grid = torch.rand(1, c, cells, cells, generator=generator)
            field = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)[0]
            out[i] = field + 0.1 * (torch.rand(c, h, w, generator=generator) - 0.5)
        return (out.clamp(0, 1) * 255).round().to(torch.uint8)

    def labels(self, num_classes: int) -> torch.Tensor:
        """int64 [size], uniform over the classes and independent of the images."""
        if num_classes < 2:
            raise TicketlabError(f"a trigger set needs at least 2 classes to mean anything, got {num_classes}")
        return torch.randint(num_classes, (self.size,), generator=self._generator("labels"))


def check_provable(trigger: TriggerSet, num_classes: int) -> None:
    """Refuse a set too small to ever be shown: even every answer keyed leaves a chance above SHOWN."""
    if trigger.size * math.log10(num_classes) < -math.log10(SHOWN):
        least = math.ceil(-math.log10(SHOWN) / math.log10(num_classes))
        raise TicketlabError(f"{trigger.size} trigger images on {num_classes} classes can never show ownership: "
                             f"even all answered as keyed, an unmarked network does as well with a chance above "
                             f"{SHOWN:g}; use at least {least} (more, for the answers a network gets wrong)")


def mixed_in(train_set: ImageDataset, trigger: TriggerSet) -> ImageDataset:
    """`train_set` with the trigger examples appended, `copies` times each. Its normalisation is kept:
    the trigger images are not the task's data, and a verifier normalises them as the task's images."""
    images, labels = trigger.images(train_set.image_shape), trigger.labels(train_set.num_classes)
    mixed = ImageDataset.create(
        name=train_set.name, train_x=torch.cat([train_set.train_x, images.repeat(trigger.copies, 1, 1, 1)]),
        train_y=torch.cat([train_set.train_y, labels.repeat(trigger.copies)]),
        test_x=train_set.test_x, test_y=train_set.test_y, classes=train_set.classes)
    return replace(mixed, mean=train_set.mean, std=train_set.std)


def check(model: nn.Module, trigger: TriggerSet, task: ImageDataset) -> dict[str, float | int]:
    """`verify` of `model`'s answers on the trigger images, normalised as `task`'s images; an answer is
    the largest of its first K outputs (a selective network's abstain output, past them, is no class)."""
    logits = predict(model, trigger.images(task.image_shape), task.mean, task.std)
    if logits.dim() != 2 or logits.shape[1] < task.num_classes:
        raise TicketlabError(f"the network gives outputs of shape {tuple(logits.shape[1:])} per image, not a score "
                             f"for each of {task.name}'s {task.num_classes} classes; check it against the dataset "
                             "it was trained on")
    return verify(logits[:, :task.num_classes].argmax(1), trigger, task.num_classes)


def verify(predictions: torch.Tensor, trigger: TriggerSet, num_classes: int) -> dict[str, float | int]:
    """How many of the trigger set's keyed labels `predictions` (a network's answers on `trigger.images`)
    give, and `chance`: the probability that a network the key did not train gives as many. The labels
    are uniform and independent of any such network, so each matches with probability 1/K (a binomial
    tail; `log10_chance` where it underflows)."""
    labels = trigger.labels(num_classes)
    predictions = torch.as_tensor(predictions).reshape(-1).cpu()
    if predictions.numel() != trigger.size:
        raise TicketlabError(f"{predictions.numel()} answers for a trigger set of {trigger.size} images; "
                             "give one answer per image")
    matches = int((predictions == labels).sum())
    log_chance = log_tail(trigger.size, matches, 1 / num_classes)
    return {"images": trigger.size, "matches": matches, "accuracy": matches / trigger.size,
            "chance": math.exp(log_chance), "log10_chance": log_chance / math.log(10)}
