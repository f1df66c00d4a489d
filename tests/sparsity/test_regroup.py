import math

import pytest
import torch

from ticketlab.errors import TicketlabError
from ticketlab.sparsity.regroup import (
    _refine,
    dense_blocks,
    partition_rows,
    regroup,
    regroup_layer,
)


def planted(seed=0, groups=4, rows=16, cols=12, inside=0.8, noise=0.03):
    """`groups` row groups, each dense-ish on its own columns, plus noise; rows shuffled. Returns (matrix, group)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(groups * rows, groups * cols, generator=g) < noise
    for k in range(groups):
        m[k * rows : (k + 1) * rows, k * cols : (k + 1) * cols] |= torch.rand(rows, cols, generator=g) < inside
    group = torch.arange(groups * rows) // rows
    perm = torch.randperm(groups * rows, generator=g)
    return m[perm], group[perm]


def connectivity(matrix, part):
    """Σ over nonempty columns of (parts touched − 1), computed the slow obvious way."""
    return sum(len(set(part[matrix[:, c]].tolist())) - 1 for c in range(matrix.shape[1]) if matrix[:, c].any())


def random_mask(shape, density, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < density


def check_blocks(mask, blocks, min_rows, block_rows=32):
    """Invariants of any regroup result; returns the union of the blocks."""
    view = mask.reshape(mask.shape[0], -1)
    union = torch.zeros_like(view)
    seen_rows = set()
    clusters = {}  # the blocks of one cluster share its columns: a multiple of block_rows and what is left
    for b in blocks:
        clusters.setdefault(tuple(b.cols.tolist()), []).append(len(b.rows))
    for sizes in clusters.values():
        assert sum(sizes) >= min_rows and sum(s % block_rows != 0 for s in sizes) <= 1 and len(sizes) <= 2
    assert int(view.any(1).sum()) == len({r for b in blocks for r in b.rows.tolist()})  # no row is dropped
    for b in blocks:
        assert b.rows.dtype == b.cols.dtype == torch.long
        assert len(b.cols) >= 1
        assert 0 <= int(b.rows.min()) and int(b.rows.max()) < view.shape[0]
        assert 0 <= int(b.cols.min()) and int(b.cols.max()) < view.shape[1]
        assert view[b.rows].any(1).all(), "an empty row got into a block"
        assert view[:, b.cols].any(0).all(), "an empty column got into a block"
        rows = set(b.rows.tolist())
        assert not rows & seen_rows, "blocks of one layer share rows"
        seen_rows |= rows
        union[b.rows[:, None], b.cols] = True
    return union


def test_partition_is_balanced_and_deterministic():
    m = random_mask((50, 40), 0.15)
    for parts in (1, 3, 8):
        part = partition_rows(m, parts, seed=3)
        assert part.dtype == torch.long and part.shape == (50,)
        assert int(part.min()) >= 0 and int(part.max()) < parts
        base = math.ceil(50 / parts)
        assert int(torch.bincount(part).max()) <= base + base // 10  # at most ceil(R/parts)·1.1 rows
        assert torch.equal(part, partition_rows(m, parts, seed=3))


def test_partition_recovers_planted_groups_and_beats_random_balanced_partitions():
    g = torch.Generator().manual_seed(7)
    for seed in range(3):
        m, group = planted(seed)
        part = partition_rows(m, 4, seed=seed)
        cut = connectivity(m, part)
        assert cut <= connectivity(m, group)  # at least as good as the planted partition itself
        random_best = min(connectivity(m, torch.randperm(64, generator=g) % 4) for _ in range(20))
        assert cut < random_best / 2
        # each part is (almost) one planted group
        purity = sum(int(torch.bincount(group[part == p], minlength=4).max()) for p in range(4))
        assert purity >= 62


def test_refinement_passes_never_raise_the_cut_and_do_lower_it():
    # each FM pass keeps its best prefix of moves, so with exact gains the cut can only go down
    lowered = False
    for seed in (0, 4, 10):
        m = random_mask((40, 30), 0.15, seed=seed)
        cuts = [connectivity(m, partition_rows(m, 4, seed=0, passes=k)) for k in range(4)]
        assert cuts == sorted(cuts, reverse=True)
        lowered |= cuts[-1] < cuts[0]
    assert lowered


def test_a_refinement_pass_lowers_the_cut_by_the_gain_it_reports():
    # the pass tracks move gains incrementally; a stale count would make its total differ from the real change
    for seed in range(4):
        m = random_mask((40, 30), 0.15, seed=seed)
        part = partition_rows(m, 4, seed=0, passes=0)
        pins = m.T.int()[m.any(0)].contiguous()
        before = connectivity(m, part)
        gain = _refine(pins, part, 4, 11)
        assert before - connectivity(m, part) == gain


def test_column_rule_stops_when_width_exceeds_ratio_times_every_rows_remainder():
    # counts per column: 4,4,4,4,1,1 (columns 6, 7 empty). After i columns, row 0 has 6 − i left, rows 1-3 4 − i.
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[:, :4] = True
    mask[0, 4:6] = True
    # ratio 1.5: i=3 fails for row 0 (3 <= 1.5·3) though rows 1-3 pass (3 > 1.5); i=4 passes for all (4 > 3)
    [block] = dense_blocks(mask, parts=1, min_rows=4)
    assert block.rows.tolist() == [0, 1, 2, 3] and block.cols.tolist() == [0, 1, 2, 3]
    # ratio 2: i=4 is not > 2·2 (strict), i=5 is (5 > 2·1)
    [block] = dense_blocks(mask, parts=1, min_rows=4, column_ratio=2.0)
    assert block.cols.tolist() == [0, 1, 2, 3, 4]
    # a fully dense cluster over w = 20 columns keeps floor(20·1.5/2.5) + 1 = 13 of them
    [block] = dense_blocks(torch.ones(16, 20, dtype=torch.bool), parts=1)
    assert len(block.cols) == 13


def test_columns_are_taken_by_count_within_the_cluster():
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, 5] = True  # count 4: taken first although it is the last column
    mask[:3, 3] = True  # count 3
    mask[0, 0] = True  # count 1
    [block] = dense_blocks(mask, parts=1, min_rows=4)
    assert block.cols.tolist() == [3, 5]  # after 5 and 3 only row 0 has 1 left: 2 > 1.5 (in index order: 0 and 3)


def test_oversized_clusters_split_into_multiples_of_block_rows():
    # 38 rows, one cluster: 32 rows dense over 10 columns, 6 rows only over columns 0-4.
    # Columns 0-4 count 38, 5-9 count 32; the rule stops at 7 columns (7 > 1.5·3, 6 = 1.5·4).
    mask = torch.zeros(38, 10, dtype=torch.bool)
    mask[:, :5] = True
    mask[6:, 5:] = True
    blocks = dense_blocks(mask, parts=1, min_rows=8, block_rows=16)
    assert [len(b.rows) for b in blocks] == [32, 6]  # 38 = 32 + 6: the remainder stays, though 6 < min_rows
    assert blocks[0].rows.tolist() == list(range(6, 38))  # the rows with fewest weights inside are the remainder
    assert blocks[1].rows.tolist() == list(range(6))
    assert blocks[0].cols.tolist() == blocks[1].cols.tolist() == list(range(7))


def test_no_output_channel_is_lost_to_a_split_at_common_widths():
    # 256 and 300 rows fall into clusters of 33-47 rows: each split keeps its remainder, so every channel
    # with a kept weight keeps some (dropping remainders of < 16 rows lost 12-25% of the channels)
    for rows, cols in ((256, 288), (300, 196)):
        mask = random_mask((rows, cols), 0.5, seed=rows)
        out = regroup_layer(mask)
        assert bool(out.any(1).all())


def test_regroup_layer_is_exactly_the_union_of_dense_blocks():
    for seed, shape, parts in ((0, (48, 72), 8), (1, (45, 30), 1), (2, (36, 60), 8)):
        mask = random_mask(shape, 0.2, seed)
        mask[3] = False  # an empty row
        mask[:, 7] = False  # an empty column
        blocks = dense_blocks(mask, parts, seed=seed)
        assert blocks
        union = check_blocks(mask, blocks, min_rows=16)
        out = regroup_layer(mask, parts=parts, seed=seed)
        assert out.dtype == torch.bool and out.shape == mask.shape
        assert torch.equal(out, union)
        for b in blocks:
            assert out[b.rows[:, None], b.cols].all()
        assert torch.equal(regroup_layer(mask, parts=parts, seed=seed), out)  # deterministic


def test_planted_blocks_are_found():
    m, group = planted(2, groups=2, rows=32, cols=20, inside=1.0, noise=0.02)
    blocks = dense_blocks(m, parts=2)
    assert len(blocks) == 2
    for b in blocks:
        assert len(set(group[b.rows].tolist())) == 1 and len(b.rows) == 32
        k = int(group[b.rows[0]])
        assert set(b.cols.tolist()) <= set(range(k * 20, (k + 1) * 20))  # only its own group's columns


def test_conv_masks_go_through_the_flattened_view():
    mask = random_mask((48, 8, 3, 3), 0.3, seed=4)
    out = regroup_layer(mask)
    assert out.shape == mask.shape
    assert torch.equal(out, regroup_layer(mask.reshape(48, 72)).view(48, 8, 3, 3))
    check_blocks(mask, dense_blocks(mask), min_rows=16)


def test_small_layers_keep_one_block_and_empty_masks_stay_empty():
    mask = torch.zeros(8, 12, dtype=torch.bool)
    mask[[0, 2, 5, 6, 7], 1:6] = True
    mask[2, 11] = True
    blocks = dense_blocks(mask)  # 5 nonempty rows < min_rows = 16: min_rows becomes 5, one cluster
    assert len(blocks) == 1 and blocks[0].rows.tolist() == [0, 2, 5, 6, 7]
    assert regroup_layer(mask).any(1).tolist() == mask.any(1).tolist()
    empty = torch.zeros(4, 3, 3, 3, dtype=torch.bool)
    assert dense_blocks(empty) == [] and not regroup_layer(empty).any()


def test_parts_are_lowered_so_no_cluster_is_lost_for_being_small():
    # 64 rows with 4 parts could leave a 13-row part (others at the cap of 17): 3 parts are used instead
    mask = random_mask((64, 144), 0.2)
    blocks = dense_blocks(mask, parts=8)
    assert sum(len(b.rows) for b in blocks) == 64 and all(len(b.rows) >= 16 for b in blocks)


def test_regroup_applies_to_every_layer_but_keep():
    masks = {"conv.weight": random_mask((32, 4, 3, 3), 0.3), "fc.weight": random_mask((10, 32), 0.5, seed=1)}
    out = regroup(masks, keep=["fc.weight"])
    assert out["fc.weight"] is masks["fc.weight"]
    assert torch.equal(out["conv.weight"], regroup_layer(masks["conv.weight"]))
    assert not torch.equal(out["conv.weight"], masks["conv.weight"])
    assert torch.equal(regroup(masks, keep="fc.weight")["conv.weight"], out["conv.weight"])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: regroup({"a": torch.ones(4, 4, dtype=torch.bool)}, keep=["b"]), "keep names layers"),
        (lambda: regroup({"a": torch.ones(4, dtype=torch.bool)}), "layer a: .*C_out"),
        (lambda: dense_blocks(torch.ones(4, 4), parts=0), "parts"),
        (lambda: dense_blocks(torch.ones(4, 4), min_rows=0), "min_rows"),
        (lambda: dense_blocks(torch.ones(4, 4), min_rows=16, block_rows=8), "block_rows"),
        (lambda: dense_blocks(torch.ones(4, 4), column_ratio=0.0), "column_ratio"),
        (lambda: dense_blocks(torch.ones(4, 4), column_ratio=float("nan")), "column_ratio"),
        (lambda: partition_rows(torch.ones(4, 4, 4)), "2-D"),
        (lambda: partition_rows(torch.ones(4, 4), passes=-1), "passes"),
    ],
)
def test_bad_arguments_are_user_errors(call, message):
    with pytest.raises(TicketlabError, match=message):
        call()
