"""One writer per store: ``index build``, ``index add`` and ``index task add`` hold an exclusive
lock on ``STORE/.write.lock`` while they write. A second writer fails at once with a one-line
error and touches nothing; the lock goes with the process that holds it (a killed writer leaves
no stale lock)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from factrace.errors import FactraceError
from factrace.store.manifest import LOCK


@contextlib.contextmanager
def write_lock(store: str | os.PathLike) -> Iterator[None]:
    """Hold the store's write lock for the ``with`` body (the directory is created if needed)."""
    path = Path(store)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise FactraceError(f"encoding store {path} is being written by {holder}; wait for "
                                "it to finish (or stop it) and try again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)
