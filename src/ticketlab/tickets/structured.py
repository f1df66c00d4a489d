"""Structured tickets: the IMP mask turned into shapes hardware can exploit.

After each IMP pruning step and before rewinding, the unstructured mask becomes
  * channel: whole output channels (refill / refill+), which `ticketlab.compact` then removes
    physically, so the ticket runs faster on any device;
  * group: a union of dense blocks (regroup), the layout block-sparse GEMM kernels run well;
  * nm: N:M (2:4) groups along the input dimension, what sparse tensor cores accelerate.
The classifier's outputs are classes, so it keeps its unstructured mask in every mode.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.sparsity import Masks, apply_masks, ends, magnitude, nm_masks
from ticketlab.sparsity.regroup import regroup
from ticketlab.sparsity.structure import channel_scores, refill

# the speed figures: compacted/dense throughput at batch 64 on CPU and, for a study trained on a
# GPU, at batch 256 there, timed as deployed (CUDA graphs, widths padded to 8: BENCHMARKS.md)
SPEED_BATCH = 64
GPU_SPEED_BATCH = 256
GPU_MULTIPLE = 8


def parse_nm(text: str) -> tuple[int, int]:
    n, sep, m = text.partition(":")
    if not sep or not n.isdecimal() or not m.isdecimal() or not 0 < int(n) < int(m):
        raise TicketlabError(f"--nm must look like N:M with 0 < N < M (e.g. 2:4; N = M would keep every weight), "
                             f"got {text!r}")
    return int(n), int(m)


def _live_widths(live: Masks) -> dict[str, int]:
    """Per layer, the weights of a row that read a live input: the columns any kept row still has."""
    widths = {}
    for name, mask in live.items():
        columns = int(mask.flatten(1).any(0).sum()) if mask.dim() > 1 else 0
        widths[name] = columns or mask[0].numel()
    return widths


def _permuted_blocks(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`mask` with the rows and the columns of its [C_out, rest] view each permuted at random."""
    view = mask.reshape(mask.shape[0], -1)
    rows = torch.randperm(view.shape[0], generator=generator)
    cols = torch.randperm(view.shape[1], generator=generator)
    return view[rows.to(mask.device)][:, cols.to(mask.device)].reshape(mask.shape)


class Structure:
    """The structure step of one study, fixed by its TicketConfig and architecture."""

    def __init__(self, kind: str, model: nn.Module, names: list[str], *, refill_rate: float = 0.0,
                 refill_criterion: str = "count", nm: str = "2:4", refill_multiple: int = 1) -> None:
        self.kind, self.rate, self.criterion, self.multiple = kind, refill_rate, refill_criterion, refill_multiple
        self.n, self.m = parse_nm(nm)
        _, classifier = ends(model)
        self.keep = {classifier} & set(names)
        self.tied: list[tuple[str, ...]] = []
        self.compactable = False
        self.why_not_compactable = ""
        if kind == "channel":
            from ticketlab.compact import check_compacts, tied_layers

            try:
                self.tied = tied_layers(model)
                check_compacts(model)
                self.compactable = True
            except TicketlabError as error:
                self.why_not_compactable = str(error)
        self.probe = model

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def needs_model(self) -> bool:
        return self.kind == "channel" and self.criterion != "count"

    def needs_batch(self) -> bool:
        return self.kind == "channel" and self.criterion in ("activation", "taylor")

    def apply(self, masks: Masks, model: nn.Module | None = None,
              batch: tuple[torch.Tensor, torch.Tensor] | None = None, live: Masks | None = None) -> Masks:
        """Structure an unstructured weight mask (the classifier's entry is left as it is). `live`: the level's
        starting masks, completed (`complete`), whose columns say how much of each row is live."""
        if self.kind == "channel":
            scores = None
            if self.criterion != "count":
                scores = channel_scores(self.criterion, model, masks, batch)
            return refill(masks, r=self.rate, scores=scores, tied=self.tied, keep=self.keep,
                          widths=None if live is None else _live_widths(live), multiple=self.multiple)
        if self.kind == "group":
            return regroup(masks, keep=self.keep)
        return masks

    def like(self, drawn: Masks, ticket: Masks, scores: Masks | None, generator: torch.Generator) -> Masks:
        """A baseline's own mask (`drawn`: random, shuffled, one-shot) with the ticket's structure and budget, so
        the arm differs from the ticket in where its weights are, not in how many or in what shapes.

        `scores` are what chose `drawn` (one-shot's magnitudes), None when its positions are random.
          * channel: refilled at r = 0 whatever the study's rate, since `drawn` already holds the ticket's
            budget, refill+'s extra channels included: a mask with the ticket's layer densities keeps exactly
            the ticket's channel counts (refilling again at r > 0 would add channels, and rounding again to the
            ticket's multiple would move a count that a constant filter's removal left off the multiple);
          * group: a mask drawn at random has no blocks for regroup to find, and regrouping it would keep a
            different share of it, so it becomes the ticket's own blocks at random rows and columns (each layer's
            [C_out, C_in·k·k] view permuted: the same block shapes and count); a ranked mask is regrouped;
          * nm: N:M at random, or by the scores.
        The classifier keeps `drawn`'s unstructured mask, as the ticket keeps its own."""
        if self.kind == "channel":
            return refill(drawn, r=0.0, tied=self.tied, keep=self.keep)
        if self.kind == "group":
            if scores is not None:
                return regroup(drawn, keep=self.keep)
            return {n: drawn[n] if n in self.keep else _permuted_blocks(m, generator) for n, m in ticket.items()}
        if self.kind == "nm":
            if scores is None:
                scores = {n: torch.rand(m.shape, generator=generator) for n, m in ticket.items()}
            return self.nm_masks(scores)
        return drawn

    def nm_masks(self, weights: Mapping[str, torch.Tensor]) -> Masks:
        """N:M masks of the layers whose input width allows it; the others stay dense."""
        fits = {n: w for n, w in weights.items() if n not in self.keep and w.dim() >= 2 and w.shape[1] % self.m == 0}
        if not fits:
            raise TicketlabError(f"no prunable layer has an input width divisible by {self.m}, so no {self.n}:{self.m} "
                                 "mask fits this model; use --structure channel or group")
        masks = nm_masks(magnitude(fits), self.n, self.m)
        return {n: masks.get(n, torch.ones_like(w, dtype=torch.bool)) for n, w in weights.items()}

    def complete(self, masks: Masks) -> Masks:
        """Weight masks plus the BatchNorm/bias entries that make removed channels exactly zero."""
        if self.kind == "channel" and self.compactable:
            from ticketlab.compact import complete_channel_masks

            return complete_channel_masks(self.probe, masks)
        return dict(masks)

    def speed(self, model: nn.Module, masks: Masks, input_shape: tuple[int, ...],
              repeats: int = 7, device: str | torch.device = "cpu") -> dict[str, Any]:
        """Measured CPU throughput of the compacted ticket against the dense network, and each one's FLOPs;
        on a CUDA `device`, the GPU throughput ratio too (`speedup_gpu`)."""
        if not (self.kind == "channel" and self.compactable):
            reason = (self.why_not_compactable if self.kind == "channel" else
                      f"{self.kind} masks keep the dense shapes: no compaction, and dense CPU kernels gain nothing")
            return {"speedup_cpu": None, "speed_note": reason}
        from ticketlab.compact import compact
        from ticketlab.speed import forward_flops, measure, speedup

        dense = model.to("cpu").eval()
        with torch.no_grad():
            apply_masks(dense, masks)
        small = compact(dense, masks)
        timings = measure({"dense": dense, "compacted": small}, input_shape, (SPEED_BATCH,), repeats=repeats)
        out = {"speedup_cpu": round(speedup(timings, "compacted", SPEED_BATCH), 4),
               "parameters": sum(p.numel() for p in dense.parameters()),
               "compacted_parameters": sum(p.numel() for p in small.parameters()),
               "flops": forward_flops(dense, input_shape), "compacted_flops": forward_flops(small, input_shape)}
        if torch.device(device).type == "cuda":
            gpu = {"dense": copy.deepcopy(dense), "compacted": compact(dense, masks, GPU_MULTIPLE)}
            timings = measure(gpu, input_shape, (GPU_SPEED_BATCH,), device=device, repeats=repeats, cuda_graph=True)
            out["speedup_gpu"] = round(speedup(timings, "compacted", GPU_SPEED_BATCH), 4)
            out["gpu"] = torch.cuda.get_device_name(device)
        return out
