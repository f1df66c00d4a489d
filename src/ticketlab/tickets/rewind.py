"""Rewind points as users write them: `0`, `500it` / `500` (iterations) or `2ep` (epochs)."""

from __future__ import annotations

import re

from ticketlab.errors import TicketlabError

_FORMAT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(it|ep)?\s*$")


def rewind_iteration(text: str, steps_per_epoch: int, total_steps: int) -> int:
    """The iteration k whose weights survivors are reset to; must lie inside training."""
    match = _FORMAT.match(str(text))
    if not match:
        raise TicketlabError(f"cannot read rewind point {text!r}; write 0, 500it or 2ep")
    value, unit = float(match.group(1)), match.group(2) or "it"
    if unit == "it" and not value.is_integer():
        raise TicketlabError(f"rewind point {text!r}: iterations must be a whole number")
    k = round(value * steps_per_epoch) if unit == "ep" else int(value)
    if k >= total_steps:
        raise TicketlabError(
            f"rewind point {text!r} is iteration {k}, beyond training ({total_steps} iterations, "
            f"{steps_per_epoch} per epoch); choose an earlier point"
        )
    return k
