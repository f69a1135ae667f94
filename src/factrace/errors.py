"""User-facing errors and warnings.

A :class:`FactraceError` is a problem with the user's input or environment (a malformed file, a
mismatched store, an optimizer state that does not fit the model). The CLI prints its message on
one line and exits with code 2; anything else is a bug and keeps its traceback.

A :class:`FactraceWarning` is something the user should know but that does not stop the work
(an input repaired by a documented rule, qrels that cover only some queries). It is raised with
:func:`warnings.warn`; the CLI prints it as one line, ``factrace: warning: ...``.
"""

import errno


class FactraceError(Exception):
    """An error the user can fix; the message says what is wrong and what to do."""


def one_line(text: object, limit: int = 200) -> str:
    """``str(text)`` for an error message: whitespace runs (newlines included) made one space,
    cut to ``limit`` characters. Library messages (pyarrow's, numpy's) may span lines or quote
    a whole damaged header."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


class FactraceWarning(UserWarning):
    """A one-line notice for the user: the work goes on, but something was repaired or skipped."""


#: errno values of a full disk (or quota): one line and a resumable store, never a traceback.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
