"""Exact retrieval: streaming top-k (proponents) and bottom-k (opponents) over all encodings.

Influence is ``I(z_m, z_q) = ψ(z_m) · ψ(z_q)``; scores for a chunk of stored rows are one matrix
product ``[q, d] @ [d, rows]``. :class:`TopK` keeps, per query, the k best and k worst rows
seen so far, so memory is O(q·k) whatever the corpus size. Rows are ordered by (score, then
global row position): ties go to the earlier row, so results do not depend on how rows were
chunked, batched or split across workers (partial :class:`TopK` per shard, merged on a driver).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from factrace.data.io import Ranking
from factrace.errors import FactraceError
from factrace.store.encodings import EncodingStore

#: Every product is computed at a padded shape (rows a multiple of ROW_QUANTUM, at least
#: MIN_QUERIES query rows) so that BLAS takes the same kernel path for every chunk; then a
#: score's bits do not depend on chunk size or on which other queries share the batch.
ROW_QUANTUM = 64
MIN_QUERIES = 8
#: Default chunk: about this many bytes of float32 encodings at a time (16 MiB: 1024 rows
#: at d = 4096, 64 at d = 2^16), large enough to amortise per-chunk thread synchronisation.
CHUNK_BYTES = 16 << 20


@runtime_checkable
class Scorer(Protocol):
    """Scores of a chunk of stored rows: ``scorer(rows [n, d], start) → [n_queries, n]``, where
    ``start`` is the index of the chunk's first row in the source (rows may be zero-padded at
    the end; their scores are discarded)."""

    n_queries: int
    dim: int

    def __call__(self, rows: torch.Tensor, start: int) -> torch.Tensor: ...


def top_indices(
    scores: torch.Tensor, k: int, largest: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest (or smallest) entries of each row of ``scores`` ``[q, n]`` and their
    column indices, ties going to the smaller index: ``([q, min(k, n)], [q, min(k, n)])``."""
    q, n = scores.shape
    if k >= n:
        return scores, torch.arange(n).expand(q, n)
    values, index = torch.topk(scores, k + 1, dim=1, largest=largest)
    # the choice is ambiguous only where the k-th and (k+1)-th values are equal
    tied = values[:, k - 1] == values[:, k]
    values, index = values[:, :k], index[:, :k]
    if tied.any():
        rows = tied.nonzero().squeeze(1)
        ordered = torch.sort(scores[rows], dim=1, descending=largest, stable=True)
        values[rows] = ordered.values[:, :k]
        index[rows] = ordered.indices[:, :k]
    return values, index


def _best(
    scores: torch.Tensor, positions: torch.Tensor, ids: np.ndarray, k: int
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Keep the ``k`` best candidates per row, ordered by score (descending) then position
    (ascending). ``scores``, ``positions``, ``ids``: ``[q, c]``."""
    by_position = torch.argsort(positions, dim=1, stable=True)
    scores = scores.gather(1, by_position)
    by_score = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    order = by_position.gather(1, by_score)
    return (
        scores.gather(1, by_score),
        positions.gather(1, order),
        np.take_along_axis(ids, order.numpy(), 1),
    )


class _Side:
    """The k best candidates of one side (proponents, or opponents with negated scores)."""

    def __init__(self, n_queries: int, k: int):
        self.k = k
        self.scores = torch.empty(n_queries, 0)
        self.positions = torch.empty(n_queries, 0, dtype=torch.int64)
        self.ids = np.empty((n_queries, 0), dtype=object)

    def add(self, scores: torch.Tensor, positions: torch.Tensor, ids: np.ndarray) -> None:
        self.scores, self.positions, self.ids = _best(
            torch.cat([self.scores, scores], 1),
            torch.cat([self.positions, positions], 1),
            np.concatenate([self.ids, ids], 1),
            self.k,
        )


class TopK:
    """Streaming top-k and bottom-k of ``n_queries`` score rows.

    ``update`` rows get consecutive global positions starting at ``row_offset``: give each
    worker's partial the offset of its first row, then ``merge`` the partials in any order.
    """

    def __init__(self, n_queries: int, k: int, opponents: bool = True, row_offset: int = 0):
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.n_queries = n_queries
        self.k = k
        self.next_row = row_offset
        self._top = _Side(n_queries, k)
        self._bottom = _Side(n_queries, k) if opponents else None
        self.kept: list[tuple[int, np.ndarray, np.ndarray]] | None = None
        """Every score, when asked for (``exact_topk(keep_scores=True)``): chunks of
        ``(first row position, ids [n], scores [n_queries, n] float32)``; see
        :mod:`factrace.search.full`."""

    def update(self, scores: torch.Tensor | np.ndarray, ids: Sequence[str] | np.ndarray) -> None:
        """Add rows: ``scores`` ``[n_queries, n]`` (float), ``ids`` the ``n`` row ids."""
        scores = torch.as_tensor(scores, dtype=torch.float32)
        if scores.ndim != 2 or scores.shape[0] != self.n_queries:
            raise ValueError(f"scores must be [{self.n_queries}, n], got {list(scores.shape)}")
        ids = np.asarray(ids, dtype=object)
        if ids.shape != (scores.shape[1],):
            raise ValueError(f"{ids.shape[0]} ids for {scores.shape[1]} score columns")
        first = self.next_row
        values, index = top_indices(scores, self.k)
        if torch.isnan(values).any():  # topk ranks NaN above everything
            raise ValueError("scores contain NaN")
        self._top.add(values, index + first, ids[index.numpy()])
        if self._bottom is not None:
            values, index = top_indices(scores, self.k, largest=False)
            self._bottom.add(-values, index + first, ids[index.numpy()])
        self.next_row += scores.shape[1]

    def merge(self, other: TopK) -> TopK:
        """Fold in a partial over other rows (disjoint positions); returns self."""
        if (other.n_queries, other.k) != (self.n_queries, self.k):
            raise ValueError("merged TopK must have the same n_queries and k")
        if (other._bottom is None) != (self._bottom is None):
            raise ValueError("merged TopK must agree on opponents")
        self._top.add(other._top.scores, other._top.positions, other._top.ids)
        if self._bottom is not None:
            self._bottom.add(other._bottom.scores, other._bottom.positions, other._bottom.ids)
        self.next_row = max(self.next_row, other.next_row)
        if other.kept is not None:
            self.kept = [*(self.kept or []), *other.kept]
        return self

    def result(self, query_ids: Sequence[str] | None = None) -> list[Ranking]:
        """Per query (``query_ids``, default ``"0"``, ``"1"``, …): proponents (best first) and,
        when kept, opponents (lowest first); at most k each."""
        if query_ids is None:
            query_ids = [str(i) for i in range(self.n_queries)]
        if len(query_ids) != self.n_queries:
            raise ValueError(f"{len(query_ids)} query ids for {self.n_queries} queries")
        top, bottom = self._top, self._bottom
        rankings = []
        for i, query_id in enumerate(query_ids):
            rankings.append(Ranking(
                query_id, list(top.ids[i]), top.scores[i].tolist(),
                list(bottom.ids[i]) if bottom else None,
                (-bottom.scores[i]).tolist() if bottom else None))
        return rankings


Shards = EncodingStore | Iterable[tuple[Sequence[str], np.ndarray | torch.Tensor]]


def iter_source(source: Shards) -> Iterable[tuple[Sequence[str], np.ndarray | torch.Tensor]]:
    """``(ids, encodings)`` pairs of an :class:`EncodingStore` or of an iterable of such pairs."""
    return source.iter_shards() if isinstance(source, EncodingStore) else source


def default_chunk_rows(dim: int) -> int:
    """Rows per chunk so a float32 chunk is about :data:`CHUNK_BYTES` (a multiple of 64)."""
    rows = CHUNK_BYTES // (4 * dim)
    return max(ROW_QUANTUM, rows // ROW_QUANTUM * ROW_QUANTUM)


def _as_queries(queries: torch.Tensor | np.ndarray) -> torch.Tensor:
    queries = torch.as_tensor(queries).to(torch.float32)
    if queries.ndim != 2:
        raise ValueError(f"queries must be [q, d], got {list(queries.shape)}")
    if not torch.isfinite(queries).all():
        raise ValueError("queries contain NaN or inf")
    padded = torch.zeros(max(queries.shape[0], MIN_QUERIES), queries.shape[1])
    padded[: queries.shape[0]] = queries
    return padded


def _load(dst: torch.Tensor, staging: torch.Tensor, src: np.ndarray | torch.Tensor) -> None:
    """Copy ``src`` ``[n, d]`` into float32 ``dst``; float16 numpy goes through a float16 torch
    buffer (a plain copy, then torch's vectorised conversion: ~10x numpy's ``astype``)."""
    if isinstance(src, torch.Tensor):
        dst.copy_(src)
    elif src.dtype == np.float16:
        staging.numpy()[...] = src
        dst.copy_(staging)
    else:
        dst.numpy()[...] = src


def exact_topk(
    queries: torch.Tensor | np.ndarray | Scorer,
    source: Shards,
    k: int,
    chunk_rows: int | None = None,
    opponents: bool = True,
    row_offset: int = 0,
    keep_scores: bool = False,
) -> TopK:
    """Score every stored row against ``queries`` ``[q, d]`` and keep the top/bottom ``k``.

    ``queries`` may also be a :class:`Scorer` (scores of a chunk of rows other than a plain
    product, e.g. cosines under a query-time R: :class:`factrace.encode.whitening.TaskScorer`).

    ``source``: an :class:`EncodingStore` or an iterable of ``(ids, encodings [rows, d])``.
    Chunks of ``chunk_rows`` rows (default: about 16 MiB of float32) are converted from float16
    to float32 and multiplied with ``torch.matmul``; memory is bounded by one chunk.
    ``row_offset``: global position of the first row (for partials merged later).
    ``keep_scores``: also keep every score in ``TopK.kept`` (the full ``[q, rows]`` matrix, for
    ``--scores-out``).
    """
    if isinstance(queries, Scorer):
        scorer, n_queries, dim = queries, queries.n_queries, queries.dim
    else:
        n_queries = int(torch.as_tensor(queries).shape[0])
        padded = _as_queries(queries)
        dim = padded.shape[1]
        scorer = None
    row = 0  # index of the next row in the source
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(dim)
    chunk_rows = max(ROW_QUANTUM, -(-chunk_rows // ROW_QUANTUM) * ROW_QUANTUM)
    topk = TopK(n_queries, k, opponents=opponents, row_offset=row_offset)
    if keep_scores:
        topk.kept = []
    buffer = torch.zeros(chunk_rows, dim)
    staging = torch.empty(chunk_rows, dim, dtype=torch.float16)
    for ids, encodings in iter_source(source):
        if encodings.ndim != 2 or encodings.shape[1] != dim:
            raise FactraceError(
                f"queries have dimension {dim} but the stored encodings are {list(encodings.shape)}; "
                "encode queries with the encoder that built the store"
            )
        ids = np.asarray(ids, dtype=object)
        for start in range(0, encodings.shape[0], chunk_rows):
            n = min(chunk_rows, encodings.shape[0] - start)
            padded_n = -(-n // ROW_QUANTUM) * ROW_QUANTUM
            chunk = buffer[:padded_n]
            _load(chunk[:n], staging[:n], encodings[start : start + n])
            chunk[n:] = 0
            if scorer is None:
                scores = torch.matmul(padded, chunk.T)[:n_queries, :n]
            else:
                scores = scorer(chunk, row)[:, :n]
            row += n
            if keep_scores:
                topk.kept.append((topk.next_row, ids[start : start + n].astype(str),
                                  scores.numpy().astype(np.float32, copy=True)))
            topk.update(scores, ids[start : start + n])
    return topk


def exact_search(
    queries: torch.Tensor | np.ndarray,
    source: Shards,
    k: int,
    chunk_rows: int | None = None,
    opponents: bool = True,
    query_ids: Sequence[str] | None = None,
) -> list[Ranking]:
    """Exact proponents and opponents of each query: :func:`exact_topk` then ``result()``."""
    return exact_topk(queries, source, k, chunk_rows=chunk_rows,
                      opponents=opponents).result(query_ids)
