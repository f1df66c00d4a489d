"""Training and evaluation under noisy labels (self-adaptive training, Huang et al. 2020)."""

from ticketlab.robust.sat import SelectiveSAT, SelfAdaptiveTraining
from ticketlab.robust.selective import (
    COVERAGES,
    coverage_table,
    coverage_threshold,
    risk_coverage_curve,
    selective_error,
    split_for_selection,
)

__all__ = [
    "COVERAGES",
    "SelectiveSAT",
    "SelfAdaptiveTraining",
    "coverage_table",
    "coverage_threshold",
    "risk_coverage_curve",
    "selective_error",
    "split_for_selection",
]
