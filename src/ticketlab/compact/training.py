"""Training a channel ticket physically compacted, so its training runs faster too.

Under its masks a channel ticket costs the dense network's step: the removed channels are
computed and thrown away. With completed masks (`complete_channel_masks`) those channels are
exactly zero at every step, so the compacted network computes the same function and the same
gradients for every kept entry: training it is the masked training up to float rounding, at the
compacted network's cost. The trained entries are then written back into the full-size state,
so the run stores, reuses and reports the same shapes as a masked run. (Dropout draws its masks
at the compacted width: the same training in distribution, not the same numbers.)

Widths are padded with silent channels to a multiple of `TRAIN_MULTIPLE`: a ResNet-20 with 11,
22 and 44 channels trains slower on the CPU than the dense 16/32/64 one, with 16/24/48 about as
fast (BENCHMARKS.md, "Training channel tickets compacted").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ticketlab.compact.channels import complete_channel_masks
from ticketlab.compact.compaction import Kept, compact, kept_entries
from ticketlab.sparsity.masks import Masks, apply_masks

TRAIN_MULTIPLE = 8


@dataclass
class CompactedTraining:
    """The network a masked model trains as, and the way back to the full-size state."""

    small: nn.Module
    masks: Masks  # what stays masked inside the small network: pruned weights of kept rows, padding channels
    kept: Kept
    full_state: dict[str, torch.Tensor]  # the masked full-size starting state the trained entries go back into

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The full-size state dict of the trained small network (removed entries as they started)."""
        return self.kept.expand(self.small.state_dict(), self.full_state)


@torch.no_grad()
def compacted_for_training(model: nn.Module, masks: Masks, multiple: int = TRAIN_MULTIPLE) -> CompactedTraining:
    """`model` under channel-structured `masks` (completed here) as a smaller network to train."""
    masks = complete_channel_masks(model, masks)
    full = copy.deepcopy(model)
    apply_masks(full, masks)
    kept = kept_entries(full, masks, multiple)
    small_masks = {n: m for n, m in kept.shrink(masks).items() if not bool(m.all())}
    full_state = {k: v.detach().clone() for k, v in full.state_dict().items()}
    return CompactedTraining(compact(full, masks, multiple), small_masks, kept, full_state)
