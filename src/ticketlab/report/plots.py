"""PNG figures of study results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullLocator

from ticketlab.report.text import percent
from ticketlab.store.files import atomic_write
from ticketlab.tickets.verdict import arms_of

_STYLE = {"ticket": dict(color="C0", marker="o", lw=2), "reinit": dict(color="C3", marker="s"),
          "random": dict(color="C2", marker="^"), "shuffle": dict(color="C4", marker="v"),
          "oneshot": dict(color="C1", marker="D"), "finetune": dict(color="C5", marker="x"),
          "lr_rewind": dict(color="C7", marker="*"), "scratch": dict(color="C6", marker="P")}


def new_axes(width: float, height: float) -> tuple[Figure, Axes]:
    """A figure outside pyplot: no display needed, the caller's backend (a notebook's) left alone, and
    nothing to close (it is freed with its last reference)."""
    fig = Figure(figsize=(width, height), dpi=120)
    return fig, fig.subplots()


def save_png(fig: Figure, path: str | Path) -> Path:
    """Lay out and write atomically (a reader never sees half a PNG)."""
    path = Path(path)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def plot_study(summary: dict[str, Any], path: Path) -> Path:
    """Test accuracy against weights remaining (log scale, sparser to the right), mean ± std."""
    levels = summary["levels"]
    dense = summary["dense"]
    x = [100 * row["density"] for row in levels]
    arms = arms_of(levels[0]) if levels else []
    fig, ax = new_axes(7, 4.5)
    ax.axhline(100 * dense["mean"], color="k", lw=1, ls="--", label="dense")
    ax.axhspan(100 * (dense["mean"] - dense["std"]), 100 * (dense["mean"] + dense["std"]), color="k", alpha=0.08)
    for arm in arms:
        ax.errorbar(x, [100 * r[arm]["mean"] for r in levels], yerr=[100 * r[arm]["std"] for r in levels],
                    capsize=3, label=arm, **_STYLE.get(arm, dict(marker=".")))
    wins = [100 * r["density"] for r in levels if r["winning"]]
    if wins:
        ax.axvline(min(wins), color="C0", lw=0.8, ls=":", label=f"sparsest winning ({percent(min(wins) / 100, 1)})")
    ax.set_xscale("log")
    if len(x) == 1:  # one level: give the log axis a range around it
        ax.set_xlim(x[0] / 2, x[0] * 2)
    ax.invert_xaxis()
    ax.xaxis.set_minor_locator(NullLocator())  # label the measured densities, nothing else
    ax.set_xticks(x)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{summary.get('model', '')} on {summary.get('dataset', '')}: "
                 f"{summary.get('seeds', 1)} seed(s), verdict on {summary.get('verdict_on', 'test')}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


# Arms trained on the ticket's own masks: compacted, they run exactly as fast as the ticket.
# (random, shuffle and oneshot draw other masks, whose speed-up was not measured.)
_SAME_MASKS = ("ticket", "finetune", "lr_rewind", "reinit", "scratch")


def _measured_levels(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in summary["levels"] if r.get("speedup_cpu")]


def tradeoff_series(summary: dict[str, Any]) -> dict[str, list[tuple[float, float, float]]]:
    """(measured speed-up, test accuracy mean, std) per level for each arm with the ticket's masks."""
    levels = _measured_levels(summary)
    arms = [arm for arm in _SAME_MASKS if levels and arm in levels[0]]
    return {arm: [(r["speedup_cpu"], r[arm]["mean"], r[arm]["std"]) for r in levels] for arm in arms}


def plot_tradeoff(summary: dict[str, Any], path: Path) -> Path:
    """Test accuracy against measured compacted/dense CPU throughput, one point per level and arm."""
    dense = summary["dense"]
    fig, ax = new_axes(6.5, 4.5)
    ax.errorbar([1.0], [100 * dense["mean"]], yerr=[100 * dense["std"]], color="k", marker="s", capsize=3,
                label="dense")
    series = tradeoff_series(summary)
    for arm, points in series.items():
        label = f"{summary.get('structure', '')} ticket, compacted" if arm == "ticket" else f"{arm}, same channels"
        ax.errorbar([p[0] for p in points], [100 * p[1] for p in points], yerr=[100 * p[2] for p in points],
                    capsize=3, label=label, **_STYLE[arm])
    for r in _measured_levels(summary):
        ax.annotate(percent(r["density"], 1), (r["speedup_cpu"], 100 * r["ticket"]["mean"]),
                    textcoords="offset points", xytext=(5, 5), fontsize=7)
    ax.axhline(100 * (dense["mean"] - 0.005), color="k", lw=0.8, ls=":", label="dense − 0.5 points")
    ax.set_xlabel("CPU throughput, compacted / dense (batch 64, measured)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{summary.get('model', '')} on {summary.get('dataset', '')}: accuracy vs measured speed-up")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)
