"""When a ticket *wins*, and the study table it is judged on, as pure functions.

Condition 1: the ticket reaches the dense network's accuracy within a tolerance. Condition 2:
it beats the same mask with a fresh random initialisation by more than a tolerance. Each
condition's tolerance is the seed spread of the two arms it compares (the larger standard
deviation), never less than 0.2 points: differences inside the noise of single runs are not wins,
and a noisy re-init arm loosens condition 2 only, never the comparison with dense. Without the
re-init arm condition 2 is unchecked, and no ticket is called winning.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Sequence

MIN_TOLERANCE = 0.002  # 0.2 points; single-run CIFAR-10 spread is about 0.15 points
# a sparse ticket that beats its dense parent by more than a point is a sign of a weak dense
# baseline (too few epochs, too small an lr), not of a great ticket
UNDERTRAINED_GAIN = 0.01


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def stat(values: Sequence[float]) -> Stat:
    """Mean and sample standard deviation (0 for a single run)."""
    values = list(values)
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))


@dataclass(frozen=True)
class Verdict:
    winning: bool
    matches_dense: bool
    beats_reinit: bool | None  # None when the re-init baseline was not run: condition 2 unchecked
    tolerance: float  # condition 1's: ticket against dense
    reinit_tolerance: float | None  # condition 2's: ticket against re-init


# Accuracies are k/n fractions, and their differences carry float rounding: a gap of exactly the tolerance
# (10 of 5000 examples) must compare as equal to it, not a hair above or below.
_SLACK = 1e-9


def verdict(dense: Stat, ticket: Stat, reinit: Stat | None, min_tolerance: float = MIN_TOLERANCE) -> Verdict:
    tolerance = max(dense.std, ticket.std, min_tolerance)
    matches = ticket.mean - (dense.mean - tolerance) >= -_SLACK
    if reinit is None:
        return Verdict(False, matches, None, tolerance, None)
    reinit_tolerance = max(ticket.std, reinit.std, min_tolerance)
    beats = ticket.mean - reinit.mean - reinit_tolerance > _SLACK
    return Verdict(matches and beats, matches, beats, tolerance, reinit_tolerance)


def sparsest_winning(densities: Sequence[float], verdicts: Sequence[Verdict]) -> float | None:
    """The lowest density at which the ticket still wins, or None if no level wins."""
    winning = [d for d, v in zip(densities, verdicts) if v.winning]
    return min(winning) if winning else None


def arms_of(row: dict[str, Any]) -> list[str]:
    """The arms a study's level row holds (the ticket, then each baseline it ran, a user's own too),
    in the study's order: those whose entry is a mean ± std."""
    return [k for k, v in row.items() if isinstance(v, dict) and "mean" in v]


def summarise(per_seed: list[list[dict[str, Any]]], baselines: tuple[str, ...], verdict_on: str) -> dict[str, Any]:
    """Mean ± std over seeds per level and arm, and each level's verdict (pure: testable alone)."""
    levels = len(per_seed[0])
    dense_test = stat([seed[0]["test"]["ticket"] for seed in per_seed])
    dense_judge = stat([seed[0][verdict_on]["ticket"] for seed in per_seed])
    rows, verdicts, densities = [], [], []
    for level in range(1, levels):
        arms = ("ticket", *baselines)
        test = {a: stat([seed[level]["test"][a] for seed in per_seed]) for a in arms}
        judge = {a: stat([seed[level][verdict_on][a] for seed in per_seed]) for a in arms}
        v = verdict(dense_judge, judge["ticket"], judge.get("reinit"))
        # seeds' structured tickets differ in density (refill keeps whole channels): the row is their mean
        seed_densities = [seed[level]["density"] for seed in per_seed]
        density = seed_densities[0]
        row: dict[str, Any] = {"level": level}
        if len(set(seed_densities)) > 1:
            density = sum(seed_densities) / len(seed_densities)
            row["seed_densities"] = seed_densities
        row["density"] = density
        if any("mask_density" in seed[level] for seed in per_seed):
            row["mask_density"] = sum(seed[level].get("mask_density", seed[level]["density"])
                                      for seed in per_seed) / len(per_seed)
        row.update({a: s.as_dict() for a, s in test.items()})
        row.update(winning=v.winning, matches_dense=v.matches_dense, beats_reinit=v.beats_reinit,
                   tolerance=v.tolerance, reinit_tolerance=v.reinit_tolerance, verdict_on=verdict_on)
        if verdict_on == "validation":
            row["validation"] = {a: s.as_dict() for a, s in judge.items()}
        row.update(per_seed[0][level].get("speed", {}))  # measured on the first seed's ticket
        dropped = [seed[level].get("constant_units_dropped", 0) for seed in per_seed]
        if any(dropped):  # filters constant at the rewind point (ticketlab.tickets.constant_units), per seed
            row["constant_units_dropped"] = dropped
        if all("seconds" in seed[level] for seed in per_seed):  # a channel ticket trained compacted is faster
            row["ticket_seconds"] = sum(seed[level]["seconds"]["ticket"] for seed in per_seed) / len(per_seed)
        rows.append(row)
        verdicts.append(v)
        densities.append(density)
    summary: dict[str, Any] = {"dense": dense_test.as_dict(), "levels": rows,
                               **({"dense_seconds": sum(seed[0]["seconds"]["ticket"] for seed in per_seed)
                                   / len(per_seed)} if all("seconds" in seed[0] for seed in per_seed) else {}),
                               "sparsest_winning_density": sparsest_winning(densities, verdicts),
                               "verdict_on": verdict_on, "warnings": []}
    judged = [r["validation"]["ticket"]["mean"] if verdict_on == "validation" else r["ticket"]["mean"] for r in rows]
    best_gain = max(judged, default=dense_judge.mean) - dense_judge.mean
    if best_gain > UNDERTRAINED_GAIN:
        summary["warnings"].append(
            f"tickets beat the dense network by up to {100 * best_gain:.1f} points: the dense baseline is probably "
            "under-trained, and against a weak dense network tickets win trivially (lottery-ticket sanity checks); "
            "train longer (--epochs) before trusting the verdict"
        )
    if "reinit" not in baselines and rows:
        summary["warnings"].append(
            "without the reinit baseline condition 2 (beating the same mask re-initialised) is unchecked, so no "
            "level is called a winning ticket; add reinit to --baselines for the verdict"
        )
    dropped = [(r["level"], sum(r["constant_units_dropped"])) for r in rows if "constant_units_dropped" in r]
    if dropped:
        summary["warnings"].append(
            "kept filters constant at the rewind point were dropped from the tickets ("
            + ", ".join(f"level {level}: {n}" for level, n in dropped)
            + "; summed over seeds), so these levels are sparser than --fraction alone gives; it happens when a "
            "network's initial filters read one channel each (fastnet's identity init): rewind later (--rewind 1ep) "
            "to keep them"
        )
    if verdict_on == "validation":
        summary["dense_validation"] = dense_judge.as_dict()
    searches = [lv for seed in per_seed for lv in seed[1:] if "search" in lv]
    if searches:
        for row, level in zip(rows, range(1, levels)):
            found = [seed[level]["search"] for seed in per_seed]
            fractions = [f["prac_fraction"] for f in found if f["prac_fraction"] is not None]
            row["search_iterations"] = [f["iterations"] for f in found]
            row["stopped_epoch"] = [f["stopped_epoch"] for f in found]
            if fractions:
                row["prac_fraction"] = sum(fractions) / len(fractions)
        searched = sum(lv["search"]["iterations"] for lv in searches)
        full = sum(lv["full_iterations"] for lv in searches)
        summary["search_iterations"] = searched
        summary["full_data_iterations"] = full
        summary["iterations_saved"] = 1 - searched / full
    return summary
