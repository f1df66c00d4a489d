"""Coverage-risk PNG of a selective classifier: how the error falls as it answers fewer examples."""

from __future__ import annotations

from pathlib import Path

import torch

from ticketlab.report.plots import new_axes, save_png


def plot_coverage_risk(
    curves: dict[str, tuple[torch.Tensor, torch.Tensor]],
    path: str | Path,
    table: list[dict] | None = None,
    title: str = "",
) -> Path:
    """Selective error (%) against coverage (%), one line per labelled curve (from `risk_coverage_curve`).

    `table` rows (from `coverage_table`) are marked as points: they use held-out thresholds, so they are the
    numbers to report, while the curves rank the very examples they score.
    """
    fig, ax = new_axes(7, 4.5)
    for i, (label, (coverage, error)) in enumerate(curves.items()):
        ax.plot(100 * coverage.double().cpu().numpy(), 100 * error.double().cpu().numpy(), color=f"C{i}", lw=1.5,
                label=label)
    if table:
        ax.plot([100 * r["coverage"] for r in table], [100 * r["selective_error"] for r in table], "ko", ms=5,
                label="held-out thresholds")
        for r in table:
            ax.annotate(f"{100 * r['target_coverage']:g}", (100 * r["coverage"], 100 * r["selective_error"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("coverage (%)")
    ax.set_ylabel("selective error (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)
