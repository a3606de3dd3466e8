"""Errors that mean "the user asked for something we cannot do"."""


class UserError(ValueError):
    """Bad input from the command line or the file system.

    The entry scripts catch it, log its message as one line and exit with status 2,
    so the message must name the problem, what was expected and how to fix it.
    """


EXIT_USER_ERROR = 2
