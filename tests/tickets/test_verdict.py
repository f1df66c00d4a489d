import pytest

from ticketlab.errors import TicketlabError
from ticketlab.tickets.rewind import rewind_iteration
from ticketlab.tickets.verdict import Stat, sparsest_winning, stat, summarise, verdict


def test_stat_is_mean_and_sample_std():
    s = stat([0.90, 0.92, 0.94])
    assert s.mean == pytest.approx(0.92) and s.std == pytest.approx(0.02) and s.n == 3
    assert stat([0.5]).std == 0.0


def test_both_conditions_are_required():
    dense = Stat(0.920, 0.001, 3)
    # condition 1 within tolerance (0.2 points floor), condition 2 clear gap: wins
    v = verdict(dense, Stat(0.9185, 0.001, 3), Stat(0.900, 0.001, 3))
    assert v.winning and v.matches_dense and v.beats_reinit and v.tolerance == pytest.approx(0.002)
    # below dense by more than the tolerance: loses even though it beats re-init
    v = verdict(dense, Stat(0.915, 0.001, 3), Stat(0.900, 0.001, 3))
    assert not v.winning and not v.matches_dense and v.beats_reinit
    # matches dense but re-init is as good (inside the spread): not a *winning* ticket
    v = verdict(dense, Stat(0.921, 0.001, 3), Stat(0.9195, 0.001, 3))
    assert not v.winning and v.matches_dense and not v.beats_reinit


def test_tolerance_is_the_seed_spread_when_larger():
    dense = Stat(0.92, 0.01, 3)
    v = verdict(dense, Stat(0.911, 0.002, 3), Stat(0.85, 0.003, 3))
    assert v.tolerance == pytest.approx(0.01) and v.winning
    v = verdict(dense, Stat(0.93, 0.002, 3), Stat(0.925, 0.01, 3))
    assert not v.beats_reinit and v.reinit_tolerance == pytest.approx(0.01)  # 0.5 points inside a 1-point spread
    v = verdict(dense, Stat(0.93, 0.002, 3), Stat(0.925, 0.003, 3))
    assert v.beats_reinit  # the dense arm's spread is no part of condition 2


def test_a_noisy_reinit_arm_does_not_loosen_the_comparison_with_dense():
    """One collapsed re-init seed (a 6-point spread) let a ticket 5 points below dense "match" it."""
    dense, ticket = Stat(0.900, 0.001, 3), Stat(0.850, 0.001, 3)
    v = verdict(dense, ticket, Stat(0.50, 0.06, 3))
    assert not v.matches_dense and not v.winning and v.beats_reinit
    assert v.tolerance == pytest.approx(0.002) and v.reinit_tolerance == pytest.approx(0.06)
    s = summarise([_seed(0.90, (0.85,), (0.60,)), _seed(0.901, (0.851,), (0.62,)), _seed(0.899, (0.849,), (0.10,))],
                  ("reinit",), "test")
    assert not s["levels"][0]["winning"] and s["sparsest_winning_density"] is None


def test_without_reinit_condition_two_is_unchecked_and_nothing_wins():
    v = verdict(Stat(0.9, 0.0, 1), Stat(0.9, 0.0, 1), None)
    assert not v.winning and v.matches_dense and v.beats_reinit is None
    s = summarise([_seed(0.98, (0.981, 0.95), (0.97, 0.94))], (), "validation")
    assert s["sparsest_winning_density"] is None and "add reinit to --baselines" in s["warnings"][0]


def test_sparsest_winning_is_the_lowest_winning_density():
    vs = [verdict(Stat(0.9, 0, 1), Stat(a, 0, 1), Stat(0.5, 0, 1)) for a in (0.91, 0.85, 0.9)]
    assert sparsest_winning([0.8, 0.64, 0.512], vs) == 0.512
    assert sparsest_winning([0.8], [verdict(Stat(0.9, 0, 1), Stat(0.1, 0, 1), None)]) is None


def _seed(dense, tickets, reinits, densities=(0.8, 0.64)):
    rows = [{"level": 0, "density": 1.0, "test": {"ticket": dense}, "validation": {"ticket": dense}}]
    for lvl, (t, r, d) in enumerate(zip(tickets, reinits, densities), 1):
        rows.append(
            {"level": lvl, "density": d, "test": {"ticket": t, "reinit": r}, "validation": {"ticket": t, "reinit": r}}
        )
    return rows


def test_summarise_synthetic_table():
    per_seed = [_seed(0.98, (0.981, 0.95), (0.97, 0.94)), _seed(0.979, (0.980, 0.951), (0.969, 0.941)),
                _seed(0.981, (0.982, 0.949), (0.971, 0.939))]
    s = summarise(per_seed, ("reinit",), "validation")
    assert s["dense"]["mean"] == pytest.approx(0.98)
    assert [r["winning"] for r in s["levels"]] == [True, False]
    assert s["levels"][0]["ticket"]["mean"] == pytest.approx(0.981)
    assert s["levels"][1]["reinit"]["std"] == pytest.approx(0.001)
    assert s["sparsest_winning_density"] == 0.8
    assert "dense_seconds" not in s and "ticket_seconds" not in s["levels"][0]  # records from before timing


def test_summarise_averages_each_levels_ticket_training_time_over_seeds():
    per_seed = [_seed(0.98, (0.981, 0.95), (0.97, 0.94)), _seed(0.979, (0.980, 0.951), (0.969, 0.941))]
    for seed, times in zip(per_seed, ((100.0, 80.0, 50.0), (110.0, 90.0, 70.0))):
        for row, t in zip(seed, times):
            row["seconds"] = {"ticket": t, **({"reinit": 1.0} if row["level"] else {})}
    s = summarise(per_seed, ("reinit",), "validation")
    assert s["dense_seconds"] == pytest.approx(105.0)
    assert [r["ticket_seconds"] for r in s["levels"]] == [pytest.approx(85.0), pytest.approx(60.0)]


@pytest.mark.parametrize("text,k", [("0", 0), ("500", 500), ("500it", 500), ("2ep", 200), ("0.5ep", 50)])
def test_rewind_points(text, k):
    assert rewind_iteration(text, 100, 1000) == k


@pytest.mark.parametrize("text,match", [("10ep", "beyond training"), ("1000it", "beyond training"),
                                        ("two", "cannot read"), ("1.5it", "whole number")])
def test_bad_rewind_points(text, match):
    with pytest.raises(TicketlabError, match=match):
        rewind_iteration(text, 100, 1000)


def test_a_ticket_far_above_dense_warns_of_an_undertrained_baseline():
    weak = [_seed(0.64, (0.70, 0.75), (0.64, 0.63))]
    s = summarise(weak, ("reinit",), "validation")
    assert [r["winning"] for r in s["levels"]] == [True, True]
    assert len(s["warnings"]) == 1 and "under-trained" in s["warnings"][0] and "11.0 points" in s["warnings"][0]
    healthy = summarise([_seed(0.98, (0.981, 0.95), (0.97, 0.94))], ("reinit",), "validation")
    assert healthy["warnings"] == []


def test_a_level_whose_seeds_keep_different_densities_reports_their_mean():
    per_seed = [_seed(0.98, (0.981,), (0.97,), densities=(0.40,)), _seed(0.979, (0.980,), (0.969,), densities=(0.44,))]
    per_seed[0][1]["mask_density"], per_seed[1][1]["mask_density"] = 0.8, 0.8
    row = summarise(per_seed, ("reinit",), "validation")["levels"][0]
    assert row["density"] == pytest.approx(0.42) and row["seed_densities"] == [0.40, 0.44]
    assert row["mask_density"] == pytest.approx(0.8)
    assert "seed_densities" not in summarise(per_seed[:1], ("reinit",), "validation")["levels"][0]


def test_a_gap_of_exactly_the_tolerance_in_whole_examples_is_no_win():
    """k/n accuracies differ by float-rounded amounts: 10 of 5000 examples ahead of re-init is the 0.2-point
    tolerance, not more, and 10 behind dense is within it."""
    for k in range(2500, 5000, 7):
        ticket, reinit = stat([k / 5000]), stat([(k - 10) / 5000])
        assert not verdict(ticket, ticket, reinit).beats_reinit, k
        assert verdict(stat([(k + 10) / 5000]), ticket, None).matches_dense, k
        assert verdict(ticket, ticket, stat([(k - 11) / 5000])).beats_reinit, k
