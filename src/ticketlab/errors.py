"""The one exception type for mistakes a user can fix."""


class TicketlabError(Exception):
    """A user error whose message names the cause and the fix.

    The CLI prints it as one line on stderr and exits with code 2; anything else
    that escapes is a bug in ticketlab and keeps its traceback.
    """
