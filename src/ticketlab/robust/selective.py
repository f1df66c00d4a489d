"""Selective classification: error on the examples a classifier is most confident about.

A selective classifier may abstain; at coverage c it answers the fraction c of examples with the highest
confidence (for SAT's abstain output, 1 − softmax abstain probability). The threshold that reaches c is
chosen on a held-out part of the predictions and applied to the rest: a threshold
picked on the reported examples would use them twice, to choose and to score, and meet the target coverage
by construction, which a deployed classifier cannot.
"""

from __future__ import annotations

import math

import torch

from ticketlab.errors import TicketlabError

COVERAGES = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)


def _check_confidence(confidence: torch.Tensor) -> None:
    if confidence.dim() != 1:
        raise TicketlabError(f"confidence must be 1-D (one score per example), got shape {tuple(confidence.shape)}")
    if torch.isnan(confidence).any():
        raise TicketlabError("confidence contains NaN; the model's outputs diverged, so no coverage can be measured")


def _check_pair(confidence: torch.Tensor, correct: torch.Tensor) -> None:
    _check_confidence(confidence)
    if correct.shape != confidence.shape:
        raise TicketlabError(
            f"confidence has shape {tuple(confidence.shape)} but correct has {tuple(correct.shape)}; "
            "give one confidence and one correctness flag per example"
        )


def coverage_threshold(confidence: torch.Tensor, coverage: float) -> float:
    """The k-th highest confidence, k = max(1, round(coverage·N)): accepting confidence >= it covers `coverage`.

    Every example tied with the k-th is accepted too, so ties never depend on the examples' order (the
    reached coverage may exceed the target; it is reported next to it). Coverage 1.0 gives -inf, so
    every example is accepted wherever the threshold is applied, not only those seen here.
    """
    _check_confidence(confidence)
    if not 0.0 < coverage <= 1.0:
        raise TicketlabError(
            f"target coverage must be in (0, 1], got {coverage}; it is the fraction of examples answered"
        )
    if coverage == 1.0:
        return -math.inf
    if len(confidence) == 0:
        raise TicketlabError("no confidences to choose a coverage threshold from; evaluate on at least one example")
    k = max(1, round(coverage * len(confidence)))
    return torch.sort(confidence.detach(), descending=True).values[k - 1].item()


def selective_error(confidence: torch.Tensor, correct: torch.Tensor, threshold: float) -> tuple[float, float]:
    """(coverage reached, error rate on the accepted examples); accepted = confidence >= threshold.

    With nothing accepted both are 0.0, not NaN, so a table of them stays summable and JSON-safe.
    """
    _check_pair(confidence, correct)
    accepted = confidence.detach() >= threshold
    n_accepted = int(accepted.sum())
    if n_accepted == 0:
        return 0.0, 0.0
    wrong = int((~correct.detach().bool())[accepted].sum())
    return n_accepted / len(confidence), wrong / n_accepted


def split_for_selection(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out indices, reported indices), round(fraction·n) held out by a seeded permutation, each sorted."""
    if not 0.0 < fraction < 1.0:
        raise TicketlabError(f"held-out fraction must be in (0, 1), got {fraction}; both parts need examples")
    held = round(fraction * n)
    if not 0 < held < n:
        raise TicketlabError(
            f"{n} predictions cannot be split {fraction:g} held out / rest reported with both parts non-empty; "
            "evaluate on more examples"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:held].sort().values, perm[held:].sort().values


def coverage_table(
    confidence: torch.Tensor,
    correct: torch.Tensor,
    *,
    coverages: tuple[float, ...] = COVERAGES,
    heldout_fraction: float = 0.5,
    seed: int = 0,
) -> list[dict]:
    """One row per target coverage: the threshold from the held-out part, coverage and error on the reported part."""
    _check_pair(confidence, correct)
    held, reported = split_for_selection(len(confidence), heldout_fraction, seed)
    rows = []
    for target in coverages:
        threshold = coverage_threshold(confidence[held], target)
        reached, error = selective_error(confidence[reported], correct[reported], threshold)
        rows.append({"target_coverage": target, "threshold": threshold, "coverage": reached, "selective_error": error})
    return rows


def risk_coverage_curve(confidence: torch.Tensor, correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(k/N, error of the k most confident) for k = 1..N; ties are ranked by position, as in masks."""
    _check_pair(confidence, correct)
    order = torch.sort(confidence.detach(), descending=True, stable=True).indices
    wrong = (~correct.detach().bool())[order].to(torch.float64)
    k = torch.arange(1, len(confidence) + 1, dtype=torch.float64)
    return k / len(confidence), wrong.cumsum(0) / k
