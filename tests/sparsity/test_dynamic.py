import math

import pytest
import torch

from ticketlab.errors import TicketlabError
from ticketlab.sparsity.dynamic import cubic_density, drop_and_grow, update_fraction


def test_drop_and_grow_drops_the_smallest_kept_weights_and_grows_the_highest_scores():
    weight = torch.tensor([5.0, -1.0, 3.0, 0.5, 0.0, 0.0, 0.0])
    mask = torch.tensor([1, 1, 1, 1, 0, 0, 0], dtype=torch.bool)
    score = torch.tensor([0.0, 0.0, 0.0, 0.0, 9.0, 1.0, 2.0])
    new, grown = drop_and_grow(mask, weight, score, 2)
    assert new.tolist() == [True, False, True, False, True, False, True]  # -1 and 0.5 go; 9 and 2 come
    assert grown.tolist() == [False, False, False, False, True, False, True]
    assert int(new.sum()) == int(mask.sum())


def test_a_weight_just_dropped_can_be_grown_again_and_counts_as_grown():
    weight = torch.tensor([[4.0, 0.1], [0.0, 0.0]])
    mask = torch.tensor([[True, True], [False, False]])
    score = torch.tensor([[0.0, 7.0], [1.0, 0.0]])  # the dropped 0.1 has the largest gradient
    new, grown = drop_and_grow(mask, weight, score, 1)
    assert torch.equal(new, mask) and grown.tolist() == [[False, True], [False, False]]


def test_drop_and_grow_caps_the_count_and_moves_nothing_at_zero():
    weight, mask = torch.randn(3, 4), torch.rand(3, 4) < 0.5
    new, grown = drop_and_grow(mask, weight, torch.rand(3, 4), 0)
    assert torch.equal(new, mask) and not grown.any()
    new, grown = drop_and_grow(mask, weight, torch.rand(3, 4), 100)
    assert int(new.sum()) == int(mask.sum()) and int(grown.sum()) == int(mask.sum())
    with pytest.raises(TicketlabError, match="must have one shape"):
        drop_and_grow(mask, weight, torch.rand(4, 3), 1)


def test_the_update_fraction_is_cosine_annealed_to_its_floor_and_then_zero():
    assert update_fraction(0.3, 0, 100) == pytest.approx(0.3)
    assert update_fraction(0.3, 50, 100) == pytest.approx(0.15)
    assert update_fraction(0.3, 25, 100) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert update_fraction(0.5, 99, 100, floor=0.005) == pytest.approx(0.005, abs=1e-3)
    assert update_fraction(0.3, 100, 100) == 0.0 == update_fraction(0.3, 150, 100, floor=0.005)


def test_the_cubic_schedule_falls_fast_first_and_reaches_the_final_density():
    assert cubic_density(1.0, 0.1, 0, 80) == 1.0 and cubic_density(1.0, 0.1, 80, 80) == 0.1
    assert cubic_density(1.0, 0.1, 40, 80) == pytest.approx(0.1 + 0.9 / 8)
    values = [cubic_density(0.5, 0.05, t, 80) for t in range(0, 81, 8)]
    assert values == sorted(values, reverse=True)
    assert values[0] - values[1] > values[-2] - values[-1]  # more pruned early than late
