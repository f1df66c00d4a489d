"""Selective error: hand-computed examples, thresholds from the held-out part only, and refusals."""

from __future__ import annotations

import math

import pytest
import torch

from ticketlab.errors import TicketlabError
from ticketlab.robust.selective import (
    COVERAGES,
    coverage_table,
    coverage_threshold,
    risk_coverage_curve,
    selective_error,
    split_for_selection,
)

# ten examples, most confident first; wrong at ranks 3, 6, 8 and 9
CONF = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
CORRECT = torch.tensor([1, 1, 0, 1, 1, 0, 1, 0, 0, 1], dtype=torch.bool)


def test_hand_example_threshold_and_error():
    assert coverage_threshold(CONF, 0.5) == pytest.approx(0.5)
    assert selective_error(CONF, CORRECT, 0.5) == pytest.approx((0.5, 1 / 5))
    assert coverage_threshold(CONF, 0.7) == pytest.approx(0.3)
    assert selective_error(CONF, CORRECT, 0.3) == pytest.approx((0.7, 2 / 7))
    assert selective_error(CONF, CORRECT, 0.85) == pytest.approx((0.1, 0.0))


def test_order_of_examples_does_not_matter():
    perm = torch.tensor([4, 9, 0, 2, 7, 1, 8, 3, 6, 5])
    assert coverage_threshold(CONF[perm], 0.7) == coverage_threshold(CONF, 0.7)
    assert selective_error(CONF[perm], CORRECT[perm], 0.3) == selective_error(CONF, CORRECT, 0.3)


def test_ties_at_the_threshold_are_all_accepted():
    conf = torch.tensor([0.5, 0.9, 0.5, 0.1, 0.5])
    assert coverage_threshold(conf, 0.4) == 0.5
    assert selective_error(conf, torch.ones(5, dtype=torch.bool), 0.5) == (0.8, 0.0)


def test_full_coverage_accepts_everything():
    assert coverage_threshold(CONF, 1.0) == -math.inf
    conf = torch.tensor([-math.inf, -1e30, 0.0])
    assert selective_error(conf, torch.tensor([False, True, True]), coverage_threshold(conf, 1.0)) == (
        1.0,
        pytest.approx(1 / 3),
    )


def test_nothing_accepted_is_zero_not_nan():
    assert selective_error(CONF, CORRECT, 2.0) == (0.0, 0.0)
    assert selective_error(torch.tensor([]), torch.tensor([], dtype=torch.bool), 0.0) == (0.0, 0.0)


def test_curve_hand_example():
    coverage, error = risk_coverage_curve(CONF.flip(0), CORRECT.flip(0))
    assert torch.allclose(coverage, torch.arange(1, 11, dtype=torch.float64) / 10)
    wrong_so_far = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 4, 4], dtype=torch.float64)
    assert torch.allclose(error, wrong_so_far / torch.arange(1, 11))


def test_split_is_a_seeded_partition():
    held, reported = split_for_selection(11, 0.5, seed=3)
    assert len(held) == round(5.5) and len(reported) == 11 - len(held)
    assert sorted(torch.cat([held, reported]).tolist()) == list(range(11))
    again = split_for_selection(11, 0.5, seed=3)
    assert torch.equal(held, again[0]) and torch.equal(reported, again[1])
    assert not torch.equal(held, split_for_selection(11, 0.5, seed=4)[0])


def test_table_hand_example_uses_held_out_threshold():
    """Held-out confidences 0.1..1.0 put the 50% threshold at 0.6; only 4 of the reported 0.05..0.95 reach it."""
    held, reported = split_for_selection(20, 0.5, seed=0)
    conf = torch.empty(20)
    conf[held] = torch.arange(1, 11) / 10
    conf[reported] = torch.arange(10) / 10 + 0.05
    correct = torch.zeros(20, dtype=torch.bool)
    correct[reported[-2:]] = True  # the two most confident reported examples (0.85, 0.95) are right
    row = coverage_table(conf, correct, coverages=(0.5,), seed=0)[0]
    assert row["target_coverage"] == 0.5 and row["threshold"] == pytest.approx(0.6)
    assert row["coverage"] == pytest.approx(0.4) and row["selective_error"] == pytest.approx(0.5)


def test_table_thresholds_ignore_the_reported_part():
    g = torch.Generator().manual_seed(0)
    conf, correct = torch.rand(200, generator=g), torch.rand(200, generator=g) < 0.8
    held, reported = split_for_selection(200, 0.5, seed=0)
    base = [row["threshold"] for row in coverage_table(conf, correct)]
    changed = conf.clone()
    changed[reported] = torch.rand(len(reported), generator=g) * 5
    assert [row["threshold"] for row in coverage_table(changed, correct)] == base
    changed[held] = torch.rand(len(held), generator=g)
    assert [row["threshold"] for row in coverage_table(changed, correct)] != base


def test_table_full_coverage_row_is_plain_error_on_reported_part():
    g = torch.Generator().manual_seed(1)
    conf, correct = torch.rand(100, generator=g), torch.rand(100, generator=g) < 0.7
    _, reported = split_for_selection(100, 0.5, seed=0)
    rows = coverage_table(conf, correct)
    assert [row["target_coverage"] for row in rows] == list(COVERAGES)
    assert rows[0]["coverage"] == 1.0
    assert rows[0]["selective_error"] == pytest.approx(1 - correct[reported].float().mean().item())


def test_perfect_ordering_has_no_error_up_to_accuracy():
    g = torch.Generator().manual_seed(2)
    correct = torch.rand(1000, generator=g) < 0.7
    conf = correct.float() + 0.5 * torch.rand(1000, generator=g)  # every right answer above every wrong one
    right = int(correct.sum())
    _, error = risk_coverage_curve(conf, correct)
    assert (error[:right] == 0).all() and (error[right:] > 0).all()  # coverage k/N <= accuracy = right/N
    for row in coverage_table(conf, correct):
        if row["target_coverage"] <= 0.6:
            assert row["selective_error"] == 0.0


def raises(match: str):
    return pytest.raises(TicketlabError, match=match)


@pytest.mark.parametrize("coverage", [0.0, 1.5, -0.1])
def test_coverage_outside_range(coverage):
    with raises(r"target coverage must be in \(0, 1\]"):
        coverage_threshold(CONF, coverage)


def test_nan_confidence():
    with raises("NaN"):
        coverage_threshold(torch.tensor([0.1, float("nan")]), 0.5)
    with raises("NaN"):
        selective_error(torch.tensor([float("nan")]), torch.tensor([True]), 0.0)


def test_shape_mismatch():
    with raises("one confidence and one correctness flag per example"):
        coverage_table(CONF, CORRECT[:9])


@pytest.mark.parametrize(("n", "fraction"), [(10, 0.0), (10, 1.0), (1, 0.5), (3, 0.1)])
def test_split_needs_both_parts(n, fraction):
    with raises("held-out fraction must be in|both parts non-empty"):
        split_for_selection(n, fraction, seed=0)
