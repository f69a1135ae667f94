"""Every (query, passage) score, not only the top-k: the input of LDS (``eval --lds``).

A scores file is a NumPy ``.npz`` (no pickled objects) holding

- ``scores``: ``[queries, passages]`` float32, row i the scores of query ``query_ids[i]``;
- ``query_ids``, ``doc_ids``: strings (a passage split into windows has one column per window,
  ``<doc>#<n>``);
- ``method``: a string naming what made the scores (optional when read).

Its size is known before any work (4 bytes a score): :func:`check_size` refuses a file larger
than a stated limit or than the free disk, with the size it would take.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from factrace.data.atomic import atomic_path
from factrace.errors import FactraceError

DEFAULT_MAX_BYTES = 4 << 30
"""Largest scores file written unless a larger limit is given (4 GiB)."""


@dataclass
class FullScores:
    """Scores ``[queries, passages]`` float32 with the ids of both axes."""

    scores: np.ndarray
    query_ids: list[str]
    doc_ids: list[str]
    method: str = ""

    def __post_init__(self) -> None:
        if self.scores.shape != (len(self.query_ids), len(self.doc_ids)):
            raise ValueError(f"scores {list(self.scores.shape)} for {len(self.query_ids)} "
                             f"queries and {len(self.doc_ids)} passages")


def from_kept(kept: Sequence[tuple[int, np.ndarray, np.ndarray]], query_ids: Sequence[str],
              method: str = "") -> FullScores:
    """Assemble :attr:`TopK.kept <factrace.search.topk.TopK.kept>` chunks (any order) into
    one matrix in row order."""
    chunks = sorted(kept, key=lambda c: c[0])
    if not chunks:
        return FullScores(np.zeros((len(query_ids), 0), np.float32), list(query_ids), [],
                          method)
    scores = np.concatenate([c[2][: len(query_ids)] for c in chunks], axis=1)
    doc_ids = [str(d) for c in chunks for d in c[1]]
    return FullScores(scores.astype(np.float32, copy=False), list(query_ids), doc_ids, method)


def estimate_bytes(n_queries: int, n_passages: int) -> int:
    """Size of a scores file: 4 bytes a score (ids add little)."""
    return 4 * n_queries * n_passages


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def check_size(path: str | Path, n_queries: int, n_passages: int,
               max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Refuse, before any work, a scores file above ``max_bytes`` or above the free disk where
    it goes; returns its estimated size."""
    need = estimate_bytes(n_queries, n_passages)
    if need > max_bytes:
        raise FactraceError(
            f"--scores-out {path}: {n_queries} queries x {n_passages} passages take "
            f"{_size(need)}, above the limit of {_size(max_bytes)}; raise --scores-max-gib, "
            "or trace fewer queries")
    parent = Path(path).resolve().parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if need > free:
        raise FactraceError(f"--scores-out {path}: {n_queries} queries x {n_passages} passages "
                            f"take {_size(need)}, more than the {_size(free)} free on that disk")
    return need


def write_scores(path: str | Path, full: FullScores) -> None:
    """Write ``full`` to ``path`` (``.npz``), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, scores=full.scores.astype(np.float32, copy=False),
                 query_ids=np.asarray(full.query_ids, dtype=str),
                 doc_ids=np.asarray(full.doc_ids, dtype=str),
                 method=np.asarray(full.method, dtype=str))


def read_scores(path: str | Path) -> FullScores:
    """Read a scores file; anything but the documented arrays is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise FactraceError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("scores", "query_ids", "doc_ids") if k not in data.files]
            if missing:
                raise FactraceError(f"{path}: not a scores file (missing {', '.join(missing)}; "
                                    "expected scores, query_ids, doc_ids)")
            scores = data["scores"]
            query_ids = [str(q) for q in data["query_ids"].reshape(-1)]
            doc_ids = [str(d) for d in data["doc_ids"].reshape(-1)]
            method = str(data["method"]) if "method" in data.files else ""
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise FactraceError(f"{path}: not a readable .npz scores file ({e})") from None
    if scores.ndim != 2 or scores.shape != (len(query_ids), len(doc_ids)):
        raise FactraceError(f"{path}: scores are {list(scores.shape)} but there are "
                            f"{len(query_ids)} query ids and {len(doc_ids)} doc ids")
    if not np.issubdtype(scores.dtype, np.floating):
        raise FactraceError(f"{path}: scores must be floating point, not {scores.dtype}")
    for name, ids in (("query_ids", query_ids), ("doc_ids", doc_ids)):
        if len(set(ids)) != len(ids):
            raise FactraceError(f"{path}: {name} repeat an id")
    if not np.isfinite(scores).all():
        raise FactraceError(f"{path}: scores contain NaN or inf")
    return FullScores(scores.astype(np.float32, copy=False), query_ids, doc_ids, method)
