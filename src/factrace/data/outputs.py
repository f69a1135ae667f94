"""Checks of output locations and numeric options, made before any model is loaded.

Every command checks where it will write, and the options that bound its work, first: an output
that cannot be written, or that would replace an existing one without ``--overwrite``, is a
one-line :class:`~factrace.errors.FactraceError` before minutes of encoding, not a traceback
(or a silently replaced file) after them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from factrace.errors import FactraceError

OVERWRITE_HINT = "pass --overwrite to replace it, or choose another path"


META_SUFFIX = ".meta.json"
"""Beside a rankings file ``F``: ``F.meta.json``, how the rankings were made."""


def meta_path(out: str | os.PathLike) -> Path:
    return Path(str(out) + META_SUFFIX)


def check_at_least(minimum: int, **options: int | None) -> None:
    """Refuse an option below ``minimum`` (``None`` means unset and passes); keyword names are
    the options' names with ``_`` for ``-``: ``check_at_least(1, top_k=0)`` names ``--top-k``."""
    for name, value in options.items():
        if value is not None and value < minimum:
            flag = "--" + name.replace("_", "-")
            raise FactraceError(f"{flag} must be at least {minimum}, got {value}")


def _writable_parent(path: Path) -> None:
    """Refuse a path whose nearest existing ancestor is not a writable directory."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor.parent != ancestor:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise FactraceError(f"{path}: cannot be created, {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise FactraceError(f"{path}: cannot be written, directory {ancestor} is not writable")


def check_output_file(
    path: str | os.PathLike[str], companions: Iterable[str] = (), overwrite: bool = False
) -> None:
    """Check that file ``path``, and ``path + suffix`` for each of ``companions`` (files written
    beside it), can be written, and replace nothing unless ``overwrite``."""
    path = Path(path)
    for target in [path, *(Path(str(path) + suffix) for suffix in companions)]:
        if target.is_dir():
            raise FactraceError(f"{target}: is a directory; --out names the file to write")
        if target.exists() and not overwrite:
            raise FactraceError(f"{target}: already exists; {OVERWRITE_HINT}")
        _writable_parent(target)


def check_output_dir(
    path: str | os.PathLike[str], contents: Iterable[str] = (), overwrite: bool = False
) -> None:
    """Check that directory ``path`` can be created, or written into if it exists, and that none
    of the entries ``contents`` it will hold is there already unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FactraceError(f"{path}: exists and is not a directory; --out names a directory")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise FactraceError(f"{path}: cannot be written, the directory is not writable")
        existing = [name for name in contents if (path / name).exists()]
        if existing and not overwrite:
            shown = ", ".join(existing)
            raise FactraceError(f"{path}: already holds {shown}; {OVERWRITE_HINT}")
    else:
        _writable_parent(path)
