"""Numbers as the tables, logs and figure labels print them."""


def percent(fraction: float, decimals: int = 2) -> str:
    """A fraction as a percentage with `decimals` decimals, or three significant figures below 1%: a ticket
    with 0.003% of its weights left is no 0.00%."""
    value = 100 * fraction
    return f"{value:.{decimals}f}%" if value == 0 or abs(value) >= 1 else f"{value:.3g}%"
