"""Row ids: a passage's own id, or ``<doc>#<n>`` for window ``n`` of a passage longer than the
model's context (:func:`factrace.data.tokenize.tokenize_passages` makes them).

A passage id may itself contain ``#`` (``"faq#2"``), so a row id is never split blindly: it is
first looked up as a passage id, and only an id no passage has is read as a window — the last
``#`` followed by digits (:func:`passage_of`). A corpus in which one passage's window id equals
another passage's id (passage ``"a"`` in windows ``a#0``, ``a#1`` beside a passage ``"a#1"``)
would give a store two rows of one id: :func:`first_repeat` finds it, and a build refuses it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Iterable

import numpy as np

from factrace.data.corpus import id_digest

SEPARATOR = "#"
_WINDOW = re.compile(r"(.*)#(\d+)", re.S)


def window_id(doc_id: str, n: int) -> str:
    """The id of window ``n`` (0-based) of passage ``doc_id``."""
    return f"{doc_id}{SEPARATOR}{n}"


def split_window(row_id: str) -> tuple[str, int | None]:
    """``"doc#3"`` → ``("doc", 3)``; an id of no window form → ``(row_id, None)``. Reads the
    form only: use :func:`passage_of` where the passage ids are known."""
    match = _WINDOW.fullmatch(row_id)
    return (match.group(1), int(match.group(2))) if match else (row_id, None)


def passage_of(row_id: str, is_passage: Container[str] | Callable[[str], bool]
               ) -> tuple[str, int | None]:
    """The passage a row id belongs to and its window (``None``: the whole passage): the id
    itself when it is a passage's id, else the window form's passage."""
    known = is_passage if callable(is_passage) else is_passage.__contains__
    if known(row_id):
        return row_id, None
    return split_window(row_id)


def first_repeat(ids: Iterable[str]) -> str | None:
    """The first id seen twice, or ``None`` (8-byte digests in memory; a digest collision is
    checked on the ids themselves)."""
    ids = list(ids)
    digests = np.fromiter((id_digest(i) for i in ids), dtype=np.uint64, count=len(ids))
    order = np.argsort(digests, kind="stable")
    same = np.flatnonzero(digests[order][1:] == digests[order][:-1])
    suspects = {int(digests[order][k]) for k in same}
    if not suspects:
        return None
    seen = set()
    for i, digest in zip(ids, digests.tolist(), strict=True):
        if digest in suspects:
            if i in seen:
                return i
            seen.add(i)
    return None
