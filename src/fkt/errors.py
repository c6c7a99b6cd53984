"""One exception type for user mistakes: the CLI prints it as one line and exits non-zero."""


class UserError(Exception):
    """Bad input (a file, a field or a flag); the message names it."""
