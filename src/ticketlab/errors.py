"""The one exception type for mistakes a user can fix."""


class TicketlabError(Exception):
    """A user error whose message names the cause and the fix.

    The CLI prints it as one line on stderr and exits with code 2; anything else
    that escapes is a bug in ticketlab and keeps its traceback.
    """


def state_mismatch(error: RuntimeError) -> str:
    """The first concrete problem of `load_state_dict`'s error (its first line only names the class)."""
    lines = [line.strip() for line in str(error).strip().splitlines()]
    return lines[1] if len(lines) > 1 else lines[0] if lines else type(error).__name__


def first_line(error: BaseException) -> str:
    """An exception's first line: torch's and numpy's messages go on for pages, and a user error is one line."""
    return next(iter(str(error).strip().splitlines()), "")
