"""User-facing errors.

Anything a user can cause with bad input raises :class:`SpbenchError` with a
one-line message; the CLI prints it and exits with code 2, never a traceback.
"""


class SpbenchError(Exception):
    """A clear, one-line problem with the user's input or environment."""

    exit_code = 2


class UnavailableError(SpbenchError):
    """A backend, GPU, model or dataset the request needs is not available here."""
