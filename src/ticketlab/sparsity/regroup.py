"""Regroup: an unstructured mask becomes a union of dense blocks (Chen et al. 2022, "Coarsening the granularity").

After each IMP pruning step, Chen et al. (2022) regroup every layer's kept weights into dense blocks so the layer
runs as a few dense GEMMs. A layer's mask is viewed as its GEMM matrix [C_out, C_in·k·k] (rows = output channels,
columns = the flattened rest), and:

1. empty rows and empty columns are dropped;
2. the rows are partitioned into `parts` clusters by a hypergraph partition (`partition_rows`: rows are vertices,
   columns are nets), so that rows sharing columns land in one cluster;
3. per cluster, columns are taken in decreasing order of their nonzero count within the cluster (ties: lower
   column first). After i columns are taken, a row's *remaining* nonzeros are its kept weights outside those i
   columns. Selection stops at the first i with  i > column_ratio · remaining(r)  for EVERY row r of the cluster
   (our exact reading of "until the column count exceeds 1.5x the remaining nonzeros of a row"; the authors'
   code also waits for all rows). The block is then wide enough that no row leaves behind more than
   i / column_ratio of its weights; the rule trades width for coverage, so even a cluster whose rows are all
   fully dense over w columns keeps only floor(w·r / (1 + r)) + 1 of them (13 of 20 at r = 1.5). The rule
   stops at the latest once every column with a nonzero in the cluster is taken (nothing remains), so a block
   never holds a column that is empty within its cluster;
4. a cluster of more than block_rows rows is cut into one block of the largest multiple of block_rows rows and a
   block of the rows left over, of any size (as the authors' code does: dropping a small remainder would prune
   whole output channels, 12-25% of a layer at common widths); the rows with the most kept weights inside the
   block's columns go into the multiple. A cluster of fewer than min_rows rows gives no block;
5. the new mask is the union of the blocks, each fully dense: pruned weights inside a block come back, kept
   weights outside every block are pruned.

How many parts (our rule; the paper's 8 parts of >= 16 rows need well over 128 output channels once the
partition may be unbalanced): with R nonempty rows, min_rows is lowered to R when R < min_rows, and parts to the
largest p for which the balance bound (a part holds at most cap = ceil(R / p) · 1.1 rows) leaves even the smallest
part R − (p − 1)·cap >= min_rows rows. So no cluster is lost for being small, a layer with any kept weight
keeps at least one block (p = 1 always qualifies), and every nonempty row stays in a block. Layers of
16, 32, 64, 128, 256, 512 rows get p = 1, 1, 3, 5, 7, 8. An empty mask stays empty.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch

from ticketlab.errors import TicketlabError
from ticketlab.sparsity.masks import Masks

_SLACK_PERCENT = 10  # balance: a part holds at most ceil(R / parts) · 1.1 rows


@dataclass(frozen=True, eq=False)
class Block:
    """One dense block of a layer's [C_out, C_in·k·k] mask view; index tensors are long, sorted, on the CPU."""

    rows: torch.Tensor  # output-channel indices
    cols: torch.Tensor  # column indices of the flattened view


def _cap(rows: int, parts: int) -> int:
    """Most rows a part may hold: ceil(R / parts) · (1 + 10%), rounded down, at least 1."""
    base = math.ceil(rows / parts)
    return max(1, base + base * _SLACK_PERCENT // 100)


def _parts_for(rows: int, parts: int, min_rows: int) -> int:
    """The largest p <= parts for which even the smallest part the balance allows, R − (p − 1)·cap, has min_rows
    rows: no cluster is then lost whole for being small."""
    return next((p for p in range(parts, 1, -1) if rows - (p - 1) * _cap(rows, p) >= min_rows), 1)


def partition_rows(matrix: torch.Tensor, parts: int = 8, *, seed: int = 0, passes: int = 10) -> torch.Tensor:
    """Part id (long [R]) of each row: a balanced hypergraph partition minimising the connectivity-1 cut.

    Rows are vertices and columns nets (a net joins the rows with a nonzero in that column); the cut is
    Σ over nonempty columns of (number of parts the column touches − 1), the objective the authors optimise with
    hMETIS. Each part holds at most ceil(R / parts) · 1.1 rows. A seeded greedy start is refined by
    Fiduccia-Mattheyses passes; the result depends only on the matrix, `parts` and `seed`.
    """
    if matrix.dim() != 2:
        raise TicketlabError(f"partition_rows takes a 2-D matrix (rows x columns), got shape {tuple(matrix.shape)}")
    if parts < 1:
        raise TicketlabError(f"parts must be at least 1, got {parts}")
    if passes < 0:
        raise TicketlabError(f"passes must be >= 0, got {passes}; it is the number of refinement passes")
    # Net-major integer pins [C, R]: a move touches whole nets (contiguous rows here), and integer products
    # stay out of the float BLAS, whose threads stall on small matrices when the machine is busy.
    pins = (matrix.detach().cpu() != 0).T.int()
    pins = pins[pins.sum(1) > 0].contiguous()  # a column without pins touches no part and never changes the cut
    cap = _cap(matrix.shape[0], parts)
    part = _greedy_start(pins, parts, cap, seed)
    for _ in range(passes):
        if _refine(pins, part, parts, cap) == 0:
            break
    return part


def _greedy_start(pins: torch.Tensor, parts: int, cap: int, seed: int) -> torch.Tensor:
    """Greedy growth: each part starts from the first unassigned row of a seeded random order and takes, one at
    a time, the row with the most columns already in the part minus the columns it would add, until it holds
    its share of the rows left. Rows that share columns end up together, a good start for the refinement."""
    rows = pins.shape[1]
    rank = torch.empty(rows, dtype=torch.float64)
    rank[torch.randperm(rows, generator=torch.Generator().manual_seed(seed))] = torch.arange(rows, dtype=torch.float64)
    degree = pins.sum(0)
    part = torch.full((rows,), -1, dtype=torch.long)
    for p in range(parts):
        share = min(cap, math.ceil(int((part < 0).sum()) / (parts - p)))
        touched = torch.zeros(pins.shape[0], dtype=torch.bool)
        shared = torch.zeros(rows, dtype=torch.int32)
        for step in range(share):
            # 2·shared − degree = shared − new; the random rank picks the first row and breaks ties
            score = -rank if step == 0 else (2 * shared - degree) * (rows + 1.0) - rank
            score[part >= 0] = -math.inf
            v = int(score.argmax())
            part[v] = p
            added = (pins[:, v] > 0) & ~touched
            touched |= added
            shared += pins[added].sum(0, dtype=torch.int32)
    return part


def _refine(pins: torch.Tensor, part: torch.Tensor, parts: int, cap: int) -> int:
    """One Fiduccia-Mattheyses pass, in place: move every row once, each time the best-gain feasible move, then
    keep the prefix of moves with the largest total gain. Moves with negative gain are allowed on the way, which
    lets a pass swap rows between full parts. Returns how much the cut went down.

    The gain of moving v from part a to b is (#nets of v where v is a's only pin) − (#nets of v with no pin in b).
    `alone` and `absent` hold these two counts per (row, part); after a move only the nets of v whose pin count
    in a or b crosses 1 or 0 change them.
    """
    rows = pins.shape[1]
    count = torch.zeros(pins.shape[0], parts, dtype=torch.int32).index_add_(1, part, pins)  # pins per net and part
    alone = pins.T @ (count == 1).int()
    absent = pins.T @ (count == 0).int()
    size = torch.bincount(part, minlength=parts)
    locked = torch.zeros(rows, dtype=torch.bool)
    everyone = torch.arange(rows)
    moves: list[tuple[int, int]] = []
    total, best, best_len = 0, 0, 0
    for _ in range(rows):
        gain = (alone.gather(1, part[:, None]) - absent).double()
        gain[locked] = -math.inf
        gain[everyone, part] = -math.inf
        gain[:, size >= cap] = -math.inf
        flat = int(gain.argmax())  # first maximum: ties go to the lower row, then the lower part
        if gain.view(-1)[flat] == -math.inf:
            break
        v, b = divmod(flat, parts)
        a = int(part[v])
        total += int(gain.view(-1)[flat])
        nets = pins[:, v].nonzero().squeeze(1)
        for p, step in ((a, -1), (b, 1)):
            before = count[nets, p]
            after = before + step
            count[nets, p] = after
            for table, level in ((alone, 1), (absent, 0)):
                change = (after == level).int() - (before == level).int()
                crossed = change.nonzero().squeeze(1)
                table[:, p] += change[crossed] @ pins[nets[crossed]]
        part[v] = b
        size[a] -= 1
        size[b] += 1
        locked[v] = True
        moves.append((v, a))
        if total > best:
            best, best_len = total, len(moves)
    for v, a in reversed(moves[best_len:]):
        part[v] = a
    return best


def _block_columns(cluster: torch.Tensor, column_ratio: float) -> torch.Tensor:
    """Indices of the columns the stop rule (module docstring, step 3) picks for one cluster [n, c] (bool)."""
    order = torch.sort(cluster.sum(0), descending=True, stable=True).indices
    taken = cluster[:, order].long().cumsum(1)
    remaining = cluster.sum(1, keepdim=True) - taken
    width = torch.arange(1, cluster.shape[1] + 1)
    done = (width > column_ratio * remaining).all(0)  # true at the latest where every row has nothing left
    return order[: int(done.nonzero()[0]) + 1]


def _row_chunks(inside: torch.Tensor, min_rows: int, block_rows: int) -> list[torch.Tensor]:
    """Cluster-local row indices of the blocks a cluster gives (step 4), from each row's weights inside them."""
    order = torch.sort(inside, descending=True, stable=True).indices
    n = order.numel()
    if n <= block_rows:
        return [order] if n >= min_rows else []
    full = n // block_rows * block_rows
    return [order[:full]] + ([order[full:]] if n > full else [])


def _check_options(parts: int, min_rows: int, block_rows: int, column_ratio: float) -> None:
    if parts < 1:
        raise TicketlabError(f"parts must be at least 1, got {parts}; it is the number of row clusters")
    if min_rows < 1:
        raise TicketlabError(f"min_rows must be at least 1, got {min_rows}")
    if block_rows < min_rows:
        raise TicketlabError(
            f"block_rows ({block_rows}) must be at least min_rows ({min_rows}); "
            "clusters are cut into multiples of block_rows, each of which must be a block"
        )
    if not (column_ratio > 0 and math.isfinite(column_ratio)):
        raise TicketlabError(f"column_ratio must be a positive number, got {column_ratio}")


def dense_blocks(
    mask: torch.Tensor,
    parts: int = 8,
    *,
    min_rows: int = 16,
    block_rows: int = 32,
    column_ratio: float = 1.5,
    seed: int = 0,
) -> list[Block]:
    """The dense blocks of one layer's mask (module docstring); row sets of different blocks are disjoint."""
    _check_options(parts, min_rows, block_rows, column_ratio)
    if mask.dim() < 2:
        raise TicketlabError(f"regroup needs a [C_out, C_in, ...] mask, got shape {tuple(mask.shape)}")
    matrix = mask.detach().cpu().reshape(mask.shape[0], math.prod(mask.shape[1:])) != 0
    rows = matrix.any(1).nonzero().squeeze(1)
    if rows.numel() == 0:
        return []
    cols = matrix.any(0).nonzero().squeeze(1)
    kept = matrix[rows][:, cols]
    min_rows = min(min_rows, rows.numel())
    parts = _parts_for(rows.numel(), parts, min_rows)
    assignment = partition_rows(kept, parts, seed=seed)
    blocks = []
    for p in range(parts):
        members = (assignment == p).nonzero().squeeze(1)
        cluster = kept[members]
        chosen = _block_columns(cluster, column_ratio)
        block_cols = cols[chosen].sort().values
        for chunk in _row_chunks(cluster[:, chosen].sum(1), min_rows, block_rows):
            blocks.append(Block(rows=rows[members[chunk]].sort().values, cols=block_cols))
    return blocks


def regroup_layer(mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """The union of `dense_blocks(mask, **kwargs)`: a bool mask of the same shape, on the mask's device."""
    blocks = dense_blocks(mask, **kwargs)
    out = torch.zeros(mask.shape[0], math.prod(mask.shape[1:]), dtype=torch.bool)
    for block in blocks:
        out[block.rows[:, None], block.cols] = True
    return out.view(mask.shape).to(mask.device)


def regroup(masks: Masks, *, keep: Collection[str] = (), **kwargs: Any) -> Masks:
    """Regroup every layer's mask except those named in `keep` (left as they are); options as `dense_blocks`."""
    keep = {keep} if isinstance(keep, str) else set(keep)
    unknown = sorted(keep - set(masks))
    if unknown:
        raise TicketlabError(f"keep names layers without a mask: {', '.join(unknown)}; use names of the masked layers")
    out = {}
    for name, mask in masks.items():
        if name in keep:
            out[name] = mask
            continue
        try:
            out[name] = regroup_layer(mask, **kwargs)
        except TicketlabError as error:
            raise TicketlabError(f"layer {name}: {error}") from None
    return out
