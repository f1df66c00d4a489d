"""What commands print: plain-text tables for people (no dependency for what a few lines do) and `--json`'s
object for scripts."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence


def fmt(value: Any) -> str:
    """Four decimals where they carry the value; else four significant figures (a density of 5e-05 is no 0.0000),
    and whole seconds as whole numbers (19430, not 1.943e+04)."""
    if isinstance(value, float):
        if abs(value) >= 1e4:
            return f"{value:.0f}"
        return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.4g}"
    return "-" if value is None else str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


def key_values(pairs: dict[str, Any]) -> str:
    return table(("", ""), [(k, v) for k, v in pairs.items()]).split("\n", 2)[2]


def print_json(args: argparse.Namespace, obj: Any) -> None:
    """`--json`'s object, on the stdout `main` set aside: a command's other output goes to stderr with `--json`,
    so stdout is this one line alone (`> out.json`, `| jq`)."""
    print(json.dumps(obj, sort_keys=True), file=getattr(args, "json_stdout", sys.stdout))
