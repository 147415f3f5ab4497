"""The user-error type every HELIOS command raises for bad input."""


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""
