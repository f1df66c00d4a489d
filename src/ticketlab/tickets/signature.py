"""Ownership signatures in a ticket's mask (Chen et al. 2021, "You are caught stealing my winning
lottery ticket! Making a lottery ticket claim its ownership").

A sparse mask is itself a place to write: in one convolution, the kernel-level connectivity (which
of the [C_out, C_in] kernels keep any weight) carries a binary code at a secret offset. A code bit
1 switches an empty kernel on (one weight, its largest by magnitude when weights are given, else
its centre), a 0 switches a kernel off; as many weights are then dropped or added elsewhere in the
layer, outside the code, so the ticket keeps its number of weights. The signed ticket is retrained,
and ownership is checked by reading the connectivity back, from the masks or from the trained
weights alone (what a thief ships), as a mismatch rate with the chance of so few mismatches
in an unsigned ticket.

Here the owner's secret is a key (any text): it fixes both the code and the offset, so the code is
never stored beside the ticket. The paper writes a 29x29 QR code; a keyed random code of the same
size carries the same number of bits.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ticketlab.data.batches import stream_seed
from ticketlab.errors import TicketlabError

Masks = dict[str, torch.Tensor]

# A mark counts as shown when a network the key did not mark matches as well with at most this chance: so low
# that a forger trying keys until one "matches" someone else's network would need about 1e20 of them (a
# code of under about 100 bits can never be shown, whatever it reads)
SHOWN = 1e-20


@dataclass(frozen=True)
class Signature:
    """The code written into `layer`'s kernel connectivity: `rows` x `cols` bits derived from `key`."""

    layer: str
    key: str
    rows: int = 29
    cols: int = 29

    def place(self, shape: tuple[int, ...]) -> tuple[int, int, torch.Tensor]:
        """(row offset, column offset, code) in a layer of weight shape [C_out, C_in, k, k]: both drawn from
        the key and the layer's name, so a verifier needs nothing but them."""
        if len(shape) != 4:
            raise TicketlabError(f"a signature is written into a convolution's kernels; {self.layer} has weight "
                                 f"shape {tuple(shape)}; choose a Conv2d layer")
        if type(self.rows) is not int or type(self.cols) is not int:
            raise TicketlabError(f"a code's rows and cols are whole numbers, got {self.rows!r} x {self.cols!r}")
        if not (0 < self.rows <= shape[0] and 0 < self.cols <= shape[1]):
            raise TicketlabError(f"a {self.rows}x{self.cols} code does not fit {self.layer}'s {shape[0]} output x "
                                 f"{shape[1]} input channels; choose a wider layer or fewer bits (--bits)")
        seed = stream_seed("signature", hashlib.sha256(self.key.encode()).hexdigest(), self.layer)
        generator = torch.Generator().manual_seed(seed)
        row = int(torch.randint(shape[0] - self.rows + 1, (1,), generator=generator))
        col = int(torch.randint(shape[1] - self.cols + 1, (1,), generator=generator))
        code = torch.rand(self.rows, self.cols, generator=generator) < 0.5
        return row, col, code


def connectivity(tensor: torch.Tensor) -> torch.Tensor:
    """[C_out, C_in] bool: which kernels of a conv weight (or mask) keep any nonzero entry."""
    return tensor.detach().flatten(2).ne(0).any(2)


def embed(masks: Mapping[str, torch.Tensor], signature: Signature,
          weights: Mapping[str, torch.Tensor] | None = None) -> Masks:
    """`masks` with `signature` written into its layer, the layer's weight count kept (see the module doc).

    `weights` (e.g. the rewind weights the ticket retrains from) choose which weight switches a kernel on and
    which weights outside the code are dropped (the smallest) or added (the largest); without them, the
    kernel's centre and weights drawn from the key."""
    if signature.layer not in masks:
        raise TicketlabError(f"the masks have no layer {signature.layer!r}; the layers: {', '.join(masks)}")
    mask = masks[signature.layer].detach().bool().cpu().clone()
    row, col, code = signature.place(tuple(mask.shape))
    kernel = mask.shape[2] * mask.shape[3]
    w = weights.get(signature.layer) if weights is not None else None
    if w is not None and w.shape != mask.shape:
        raise TicketlabError(f"the weights of {signature.layer} have shape {tuple(w.shape)}, its mask "
                             f"{tuple(mask.shape)}; give the weights of this model")
    generator = torch.Generator().manual_seed(stream_seed("signature-rebalance", signature.key, signature.layer))
    # the weights' magnitudes rank positions; without weights, a keyed random order
    size = (w.detach().abs().float().cpu() if w is not None else torch.rand(mask.shape, generator=generator))
    before = int(mask.sum())
    region = mask[row:row + code.shape[0], col:col + code.shape[1]]  # a view: edits write into `mask`
    on = connectivity(region)
    for i, j in (code & ~on).nonzero().tolist():  # switch on: one weight
        if w is None:
            region[i, j, mask.shape[2] // 2, mask.shape[3] // 2] = True
        else:
            region[i, j].view(-1)[int(size[row + i, col + j].reshape(kernel).argmax())] = True
    region[~code] = False  # switch off
    outside = torch.ones_like(mask)
    outside[row:row + code.shape[0], col:col + code.shape[1]] = False
    change = int(mask.sum()) - before
    flat, sizes, free = mask.view(-1), size.reshape(-1), outside.view(-1)
    if change > 0:  # drop the smallest kept weights outside the code
        candidates = (flat & free).nonzero().squeeze(1)
        if len(candidates) < change:
            raise TicketlabError(f"{signature.layer} keeps too few weights outside the code to give back "
                                 f"{change}; use fewer bits or a layer that keeps more")
        flat[candidates[torch.sort(sizes[candidates], stable=True).indices[:change]]] = False
    elif change < 0:  # add the largest pruned weights outside the code
        candidates = (~flat & free).nonzero().squeeze(1)
        if len(candidates) < -change:
            raise TicketlabError(f"{signature.layer} has too few pruned weights outside the code to add "
                                 f"{-change}; use fewer bits or a sparser ticket")
        flat[candidates[torch.sort(sizes[candidates], descending=True, stable=True).indices[:-change]]] = True
    return {**{n: m for n, m in masks.items()}, signature.layer: mask.to(masks[signature.layer].device)}


def verify(tensors: Mapping[str, torch.Tensor], signature: Signature) -> dict[str, float | int]:
    """Read `signature` back from masks or trained weights: the bits that differ, and `chance`, the probability
    that a ticket this key did not sign differs in as few. The keyed code is a fair coin per bit, independent
    of such a ticket, so each bit matches with probability 1/2 (a binomial tail; `log10_chance` where it
    underflows)."""
    if signature.layer not in tensors:
        raise TicketlabError(f"the file has no tensor {signature.layer!r}; give the masks or weights of the "
                             "signed model")
    tensor = tensors[signature.layer]
    row, col, code = signature.place(tuple(tensor.shape))
    read = connectivity(tensor).cpu()[row:row + code.shape[0], col:col + code.shape[1]]
    bits, mismatches = code.numel(), int((read != code).sum())
    log_chance = log_tail(bits, bits - mismatches, 0.5)
    return {"bits": bits, "mismatches": mismatches, "mismatch_rate": mismatches / bits,
            "chance": math.exp(log_chance), "log10_chance": log_chance / math.log(10)}


def log_tail(n: int, k: int, p: float) -> float:
    """log P(X >= k) for X ~ Binomial(n, p), summed in log space so that tiny tails do not underflow."""
    if k <= 0:
        return 0.0
    logs = [math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * math.log(p)
            + (n - j) * math.log1p(-p) for j in range(k, n + 1)]
    top = max(logs)
    return min(0.0, top + math.log(sum(math.exp(v - top) for v in logs)))
