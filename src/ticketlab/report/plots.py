"""PNG figures of study results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: E402

from ticketlab.store.files import atomic_write  # noqa: E402

_STYLE = {"ticket": dict(color="C0", marker="o", lw=2), "reinit": dict(color="C3", marker="s"),
          "random": dict(color="C2", marker="^"), "shuffle": dict(color="C4", marker="v"),
          "oneshot": dict(color="C1", marker="D"), "finetune": dict(color="C5", marker="x")}


def plot_study(summary: dict[str, Any], path: Path) -> Path:
    """Test accuracy against weights remaining (log scale, sparser to the right), mean ± std."""
    levels = summary["levels"]
    dense = summary["dense"]
    x = [100 * row["density"] for row in levels]
    arms = [k for k in _STYLE if levels and k in levels[0]]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.axhline(100 * dense["mean"], color="k", lw=1, ls="--", label="dense")
    ax.axhspan(100 * (dense["mean"] - dense["std"]), 100 * (dense["mean"] + dense["std"]), color="k", alpha=0.08)
    for arm in arms:
        ax.errorbar(x, [100 * r[arm]["mean"] for r in levels], yerr=[100 * r[arm]["std"] for r in levels],
                    capsize=3, label=arm, **_STYLE[arm])
    wins = [100 * r["density"] for r in levels if r["winning"]]
    if wins:
        ax.axvline(min(wins), color="C0", lw=0.8, ls=":", label=f"sparsest winning ({min(wins):.1f}%)")
    ax.set_xscale("log")
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
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
