"""Gap to dense against measured speed-up, pooled over separate one-seed `find` studies.

Long CPU studies run one seed per session, so a ticket's "mean of seeds" is spread over several
`find --json` outputs and `bench --json` rounds. This script pools them per arm (for example one
refill rate): the mean gap to dense on test and validation (mean ticket minus mean dense over the
seeds) with its standard error over the seeds, each seed's gaps, and the median compacted/dense
throughput over every bench round. It prints a markdown table (or `--json`) and draws the gap
against the speed-up as a PNG.

    python benchmarks/seed_tradeoff.py --plot FIG.png --title "..." \\
        --arm "r = 0" "DIR/*_r0_find.json" "DIR/*_r0_turns_*.json" \\
        --arm "r = 0.1" "DIR/*_r0.1_find.json" "DIR/*_r0.1_turns_*.json"
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
from pathlib import Path
from typing import Any, NoReturn

import matplotlib.pyplot as plt
from matplotlib.transforms import offset_copy

from ticketlab.report.plots import save_png  # sets the headless backend


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _files(pattern: str) -> list[Path]:
    files = sorted(Path(p) for p in glob.glob(pattern))
    if not files:
        _fail(f"no file matches {pattern!r}; check the path and the quoting of the pattern")
    return files


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        _fail(f"{path} is not a readable JSON file ({e}); pass `find --json` and `bench --json` outputs")


def seed_gaps(study: dict[str, Any], level: int) -> dict[str, float]:
    """One study's dense and ticket accuracies (test and validation) at `level`, in points."""
    rows = [r for r in study["levels"] if r["level"] == level]
    if len(rows) != 1:
        raise ValueError(f"study {study.get('study_id')} has no level {level}")
    row = rows[0]
    return {"dense": 100 * study["dense"]["mean"], "ticket": 100 * row["ticket"]["mean"],
            "dense_val": 100 * study["dense_validation"]["mean"],
            "ticket_val": 100 * row["validation"]["ticket"]["mean"],
            "parameters_left": row["compacted_parameters"] / row["parameters"],
            "flops_left": row["compacted_flops"] / row["flops"]}


def bench_ratio(bench: dict[str, Any], batch_size: int) -> float:
    """Compacted/dense throughput of one `bench --json` round."""
    for t in bench["timings"]:
        if t["variant"] == "compacted" and t["batch_size"] == batch_size:
            return t["ratio"]
    raise ValueError(f"{bench.get('model_file')}: no compacted timing at batch {batch_size}")


def standard_error(values: list[float]) -> float | None:
    """Standard error of the mean over seeds; None for one seed, which gives no spread to judge by."""
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else None


def pool(label: str, studies: list[dict[str, Any]], ratios: list[float], level: int) -> dict[str, Any]:
    """The arm's mean gaps over seeds (mean ticket − mean dense) and its median measured speed-up.

    Each seed's ticket is paired with its own dense run, so the mean gap is the mean of the per-seed
    gaps and its standard error is theirs: the noise a "within 0.5 points" claim must clear.
    """
    seeds = [seed_gaps(s, level) for s in studies]
    mean = {k: statistics.fmean(s[k] for s in seeds) for k in seeds[0]}
    gaps = {split: [s[f"ticket{suffix}"] - s[f"dense{suffix}"] for s in seeds]
            for split, suffix in (("test", ""), ("val", "_val"))}
    se = {split: standard_error(g) for split, g in gaps.items()}
    return {"arm": label, "seeds": len(seeds),
            "gap_test": round(mean["ticket"] - mean["dense"], 2),
            "gap_val": round(mean["ticket_val"] - mean["dense_val"], 2),
            "gap_test_se": None if se["test"] is None else round(se["test"], 2),
            "gap_val_se": None if se["val"] is None else round(se["val"], 2),
            "seed_gaps_test": [round(g, 2) for g in gaps["test"]],
            "seed_gaps_val": [round(g, 2) for g in gaps["val"]],
            "dense_test": round(mean["dense"], 2), "dense_val": round(mean["dense_val"], 2),
            "ticket_test": round(mean["ticket"], 2), "ticket_val": round(mean["ticket_val"], 2),
            "parameters_left": round(mean["parameters_left"], 4), "flops_left": round(mean["flops_left"], 4),
            "speedup_median": round(statistics.median(ratios), 2), "speedup_rounds": len(ratios),
            "speedup_min": round(min(ratios), 2), "speedup_max": round(max(ratios), 2)}


def _gap(arm: dict[str, Any], split: str) -> str:
    se = arm[f"gap_{split}_se"]
    return f"{arm[f'gap_{split}']:+.2f}" + ("" if se is None else f" ± {se:.2f}")


def table(arms: list[dict[str, Any]]) -> str:
    lines = ["| arm | seeds | ticket − dense ± s.e., test (per seed) | validation (per seed) | parameters left "
             "| FLOPs left | CPU speed-up, median (min–max, rounds) |", "|---|---|---|---|---|---|---|"]
    for a in arms:
        per = ", ".join(f"{g:+.2f}" for g in a["seed_gaps_test"])
        per_val = ", ".join(f"{g:+.2f}" for g in a["seed_gaps_val"])
        lines.append(f"| {a['arm']} | {a['seeds']} | {_gap(a, 'test')} ({per}) | {_gap(a, 'val')} ({per_val}) "
                     f"| {100 * a['parameters_left']:.1f}% | {100 * a['flops_left']:.1f}% "
                     f"| {a['speedup_median']:.2f}× ({a['speedup_min']:.2f}–{a['speedup_max']:.2f}, "
                     f"{a['speedup_rounds']}) |")
    return "\n".join(lines)


def plot(arms: list[dict[str, Any]], path: Path, title: str, tolerance: float, speed_target: float) -> Path:
    """Mean gaps (± standard error) as lines through the arms, each seed's gap as a faint point."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    x = [a["speedup_median"] for a in arms]
    for key, name, shift, style in (("test", "test", -3, dict(color="C0", marker="o")),
                                    ("val", "validation", 3, dict(color="C1", marker="s", ls="--"))):
        moved = offset_copy(ax.transData, fig=fig, x=shift, units="points")  # keeps the two splits' bars apart
        errors = [a[f"gap_{key}_se"] or 0.0 for a in arms]
        ax.errorbar(x, [a[f"gap_{key}"] for a in arms], yerr=errors, capsize=3, transform=moved,
                    label=f"ticket − dense, {name} (mean of seeds ± s.e.)", **style)
        for i, a in enumerate(arms):
            ax.scatter([a["speedup_median"]] * a["seeds"], a[f"seed_gaps_{key}"], s=12, alpha=0.35, transform=moved,
                       color=style["color"], marker=style["marker"], label=f"one seed, {name}" if i == 0 else None)
        # artists drawn through an offset transform do not widen the axes: give their data extent by hand
        ax.update_datalim([(a["speedup_median"], g) for a in arms for g in a[f"seed_gaps_{key}"]]
                          + [(a["speedup_median"], a[f"gap_{key}"] + sign * (a[f"gap_{key}_se"] or 0.0))
                             for a in arms for sign in (-1, 1)])
    ax.autoscale_view()
    for a in arms:
        ax.annotate(a["arm"], (a["speedup_median"], a["gap_test"]), textcoords="offset points",
                    xytext=(5, 6), fontsize=8)
    ax.axhline(-tolerance, color="k", lw=0.8, ls=":", label=f"target: within {tolerance:g} points")
    ax.axvline(speed_target, color="grey", lw=0.8, ls="-.", label=f"target: {speed_target:g}×")
    ax.set_xlabel("CPU throughput, compacted / dense (batch 64, median of bench rounds)")
    ax.set_ylabel("accuracy gap to dense (points)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save_png(fig, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arm", nargs=3, action="append", required=True, metavar=("LABEL", "FIND_GLOB", "BENCH_GLOB"),
                   help="one arm: its label, the `find --json` files (one per seed), the `bench --json` rounds")
    p.add_argument("--level", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--tolerance", type=float, default=0.5, help="points behind dense the target allows")
    p.add_argument("--speed-target", type=float, default=2.0)
    p.add_argument("--plot", type=Path)
    p.add_argument("--title", default="")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    arms = []
    for label, finds, benches in args.arm:
        try:
            studies = [_read(f) for f in _files(finds)]
            ratios = [bench_ratio(_read(f), args.batch_size) for f in _files(benches)]
            arms.append(pool(label, studies, ratios, args.level))
        except (KeyError, TypeError, ValueError) as e:
            _fail(f"arm {label!r}: its files are not `find --json` outputs with a level {args.level} "
                  f"and `bench --json` outputs ({type(e).__name__}: {e})")
    arms.sort(key=lambda a: a["speedup_median"])
    if args.plot:
        plot(arms, args.plot, args.title, args.tolerance, args.speed_target)
    print(json.dumps(arms, indent=1) if args.json else table(arms))


if __name__ == "__main__":
    main()
