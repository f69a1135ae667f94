"""User-facing errors.

A :class:`FactraceError` is a problem with the user's input or environment (a malformed file, a
mismatched store, an optimizer state that does not fit the model). The CLI prints its message on
one line and exits with code 2; anything else is a bug and keeps its traceback.
"""


class FactraceError(Exception):
    """An error the user can fix; the message says what is wrong and what to do."""
