"""Stratified, fixed-seed hold-outs.

Anything that *chooses* (a pruning rate, a rewind point, an early-stopping epoch)
must choose on held-out training data, never on the test set, or the reported test
accuracy is optimistic. ``train_validation_split`` is the one way to get that
hold-out, so every method holds out the same examples for the same seed.
"""

from __future__ import annotations

import torch

from ticketlab.data.dataset import ImageDataset
from ticketlab.errors import TicketlabError


def check_held_out(n_held: int, n: int) -> None:
    """A validation split must leave training examples and hold out at least one."""
    if not 0 < n_held < n:
        raise TicketlabError(f"cannot hold out {n_held} of {n} examples; choose a number between 1 and {n - 1}, "
                             "or leave --validation out")


def stratified_indices(labels: torch.Tensor, n_held: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split positions 0..N-1 into (kept, held), both sorted, with ``n_held`` held out.

    Each class gives up a share proportional to its size (largest-remainder rounding,
    ties to the lower class id), and which of its examples go is drawn with ``seed``.
    """
    n = int(labels.shape[0])
    check_held_out(n_held, n)
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * n_held / n
    share = exact.floor().long()
    remaining = n_held - int(share.sum())
    # Stable sort on the negated remainders: biggest remainder first, lower class id on ties.
    order = torch.sort(-(exact - share), stable=True).indices
    share[order[:remaining]] += 1

    if not 0 <= seed < 2**63:
        raise TicketlabError(f"the validation split's seed must be a whole number in [0, 2**63), got {seed}")
    generator = torch.Generator().manual_seed(seed)
    held = []
    for cls, k in zip(classes.tolist(), share.tolist(), strict=True):
        members = torch.nonzero(labels == cls).flatten()
        held.append(members[torch.randperm(members.numel(), generator=generator)[:k]])
    held_idx = torch.sort(torch.cat(held)).values
    mask = torch.ones(n, dtype=torch.bool)
    mask[held_idx] = False
    return torch.nonzero(mask).flatten(), held_idx


def train_validation_split(
    dataset: ImageDataset, n_validation: int, seed: int
) -> tuple[ImageDataset, tuple[torch.Tensor, torch.Tensor]]:
    """Hold out ``n_validation`` training examples, stratified by class, reproducibly.

    Returns the reduced dataset (same test split; ``mean``/``std`` recomputed from the
    remaining training images, so the validation images do not leak into normalisation)
    and ``(val_x, val_y)``. Both keep the original order of the training set. Methods
    that select anything must select on this validation set, never on the test set.
    """
    keep, held = stratified_indices(dataset.train_y, n_validation, seed)
    reduced = ImageDataset.create(
        name=dataset.name,
        train_x=dataset.train_x[keep],
        train_y=dataset.train_y[keep],
        test_x=dataset.test_x,
        test_y=dataset.test_y,
        classes=dataset.classes,
    )
    return reduced, (dataset.train_x[held].contiguous(), dataset.train_y[held].contiguous())
