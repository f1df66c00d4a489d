"""When a ticket *wins* (methods.md section 2), as pure functions over result tables.

Condition 1: the ticket reaches the dense network's accuracy within a tolerance. Condition 2:
it beats the same mask with a fresh random initialisation by more than that tolerance. The
tolerance is the seed spread (the larger standard deviation of the arms compared), never less
than 0.2 points: differences inside the noise of single runs are not wins.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

MIN_TOLERANCE = 0.002  # 0.2 points; single-run CIFAR-10 spread is about 0.15 points


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
    tolerance: float


def verdict(dense: Stat, ticket: Stat, reinit: Stat | None, min_tolerance: float = MIN_TOLERANCE) -> Verdict:
    spread = max(dense.std, ticket.std, reinit.std if reinit else 0.0)
    tolerance = max(spread, min_tolerance)
    matches = ticket.mean >= dense.mean - tolerance
    beats = None if reinit is None else ticket.mean - reinit.mean > tolerance
    return Verdict(matches and beats is not False, matches, beats, tolerance)


def sparsest_winning(densities: Sequence[float], verdicts: Sequence[Verdict]) -> float | None:
    """The lowest density at which the ticket still wins, or None if no level wins."""
    winning = [d for d, v in zip(densities, verdicts) if v.winning]
    return min(winning) if winning else None
