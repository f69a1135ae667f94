"""Atomic outputs: a file or directory appears complete under its final name, or not at all.

Everything factrace writes goes through :func:`atomic_path` (or its helpers :func:`atomic_write`
and :func:`atomic_dir`): the content is built under a hidden temporary name in the destination's
own directory and renamed over the destination only when the ``with`` body finishes. If the body
raises (bad input, Ctrl-C), the temporary is removed and the destination is left exactly as it
was, so an interrupted or failed run never leaves a half-written file behind.

Temporary names start with ``.`` so that readers listing a directory of shards never pick them
up. Created files and directories get the usual permissions (``0o666`` / ``0o777`` minus the
umask), not the owner-only permissions of :mod:`tempfile`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def temporary_name(path: str | os.PathLike[str]) -> Path:
    """A fresh hidden name next to ``path``: ``dir/.name.<random>.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _make_parents(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return the ones created, deepest first."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def _remove(path: Path) -> None:
    """Remove a file or directory tree if it exists; never raises."""
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _fsync_directory(directory: Path) -> None:
    """Persist a rename in ``directory`` (best effort: not every platform allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_directory(source: Path, destination: Path) -> None:
    """Rename directory ``source`` to ``destination``, replacing an existing one.

    POSIX renames a directory only over an empty one, so a non-empty destination is first moved
    aside and deleted after the swap (and put back if the swap fails).
    """
    if not destination.exists() and not destination.is_symlink():
        os.replace(source, destination)
        return
    if destination.is_dir() and not destination.is_symlink():
        aside = temporary_name(destination)
        os.replace(destination, aside)
        try:
            os.replace(source, destination)
        except BaseException:
            os.replace(aside, destination)
            raise
        _remove(aside)
        return
    destination.unlink()
    os.replace(source, destination)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path to build ``path`` under; rename it to ``path`` on success.

    The temporary lies in the same directory as ``path`` (so the final rename is atomic on one
    file system); missing parent directories are created. With ``directory=True`` the temporary
    is an empty directory, created for you; otherwise nothing exists at the temporary path until
    the body creates it, as a file or a directory (a body that creates nothing leaves ``path``
    untouched). A directory replaces an existing one at ``path``, as in :func:`atomic_dir`.

    On any exception, including ``KeyboardInterrupt``, the temporary is removed, parent
    directories created here are removed again if empty, and ``path`` is left as it was.

    Example::

        with atomic_path("out/table.parquet") as tmp:
            pyarrow.parquet.write_table(table, tmp)
    """
    path = Path(path)
    created = _make_parents(path.parent)
    tmp = temporary_name(path)
    if directory:
        os.mkdir(tmp, 0o777)
    try:
        yield tmp
        if tmp.is_dir() and not tmp.is_symlink():
            _replace_directory(tmp, path)
        elif tmp.exists() or tmp.is_symlink():
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        for parent in created:
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    _fsync_directory(path.parent)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", *, encoding: str = "utf-8"
) -> Iterator[IO[Any]]:
    """Open ``path`` for writing atomically: the file appears, complete, when the body ends.

    ``mode`` is ``"w"`` (text, UTF-8, ``"\\n"`` line endings on every platform) or ``"wb"``.
    The data is flushed and fsynced before the rename. See :func:`atomic_path`.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        if mode == "wb":
            handle: IO[Any] = os.fdopen(fd, "wb")
        else:
            handle = os.fdopen(fd, "w", encoding=encoding, newline="\n")
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory atomically: yield an empty temporary directory next to ``path``.

    On success it is renamed to ``path``, replacing any existing directory or file there; on an
    exception it is deleted and ``path`` is left as it was.
    """
    with atomic_path(path, directory=True) as tmp:
        yield tmp
