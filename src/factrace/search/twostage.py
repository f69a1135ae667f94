"""Two-stage search: approximate candidates from a saved FAISS index, exact scores for them.

First stage: each query's ``u = R⁻¹q / ‖R^{-1/2} q‖`` is searched in the store's saved
inner-product index (:meth:`~factrace.search.approx.ApproxIndex.save`, codes of the stored rows:
rotated, unit norm) for its top ``C`` rows and its bottom ``C`` (opponents): from one scan of
every row with the default grouped fast-scan codes (:mod:`factrace.search.fastscan`), else by
searching ``u`` and ``−u``. The index ignores each row's norm under R, and its codes are
approximate: the candidates are.

Second stage: the candidate rows, read by position from the memory-mapped shards (a compact
store's re-encoded from their passages), are scored by
the same :class:`~factrace.encode.whitening.TaskScorer` as exact search (row norms under the
task from the rows themselves, or the task's kept norms at those positions), and the top-k and
bottom-k of each query's own candidates (both lists) are kept, ties going to the earlier row as in
:func:`~factrace.search.topk.exact_topk`. Every score returned is exact; a row missed by the
first stage is missing from the answer. No other row is read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from factrace.data.io import Ranking
from factrace.search.topk import top_indices
from factrace.store.encodings import EncodingStore

if TYPE_CHECKING:  # FAISS loads only when a saved index is used
    from factrace.search.approx import ApproxIndex


#: Queries whose scores over every row are held at once by a first stage that scores every row.
QUERY_CHUNK = 16


def first_stage_queries(scorer) -> np.ndarray:
    """The vectors searched in the first stage: ``R⁻¹q / ‖R^{-1/2} q‖`` (``R⁻¹q`` when scores
    are plain products), float32 ``[Q, d]``."""
    u = scorer.u if not scorer.task.normalize else scorer.u / scorer.qn[:, None]
    return np.ascontiguousarray(u.float().numpy())


def candidates(approx: ApproxIndex, u: np.ndarray, c: int, opponents: bool = True
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """First stage: the row positions of each query's top ``c`` (and, with ``opponents``, of
    ``−u``'s top ``c``), int64 ``[Q, c]``, ``-1`` where the index has fewer rows."""
    index = approx.index
    c = min(c, index.ntotal)
    if not hasattr(index, "all_scores"):
        _, top = index.search(u, c)
        bottom = index.search(np.ascontiguousarray(-u), c)[1] if opponents else None
        return top, bottom
    # one scan scores every row: both sides from it, a few queries at a time
    tops, bottoms = [], []
    for start in range(0, u.shape[0], QUERY_CHUNK):
        scores = index.all_scores(u[start:start + QUERY_CHUNK])
        tops.append(np.argpartition(-scores, c - 1, axis=1)[:, :c])
        if opponents:
            bottoms.append(np.argpartition(scores, c - 1, axis=1)[:, :c])
    return np.concatenate(tops), np.concatenate(bottoms) if opponents else None


def rerank(scorer, rows_of: EncodingStore | Callable[[np.ndarray], torch.Tensor],
           ids: list[str], top: np.ndarray, bottom: np.ndarray | None, k: int,
           chunk_rows: int = 4096) -> tuple[list[tuple], int]:
    """Second stage: exact scores of the candidate rows, the top-k and the bottom-k of each
    query's candidates (``top`` and ``bottom`` together). ``rows_of``: the store whose rows are
    read, or a function giving the rows (float32 ``[n, d]``) at positions (a compact store's,
    re-encoded). Returns per query ``(doc_ids, scores, opponent_ids, opponent_scores)`` and the
    number of distinct rows read."""
    if isinstance(rows_of, EncodingStore):
        store = rows_of
        rows_of = lambda positions: torch.from_numpy(store.rows(positions)).float()  # noqa: E731
    lists = [top] if bottom is None else [top, bottom]
    union = np.unique(np.concatenate([a.ravel() for a in lists]))
    union = union[union >= 0]  # sorted: column order is row order (ties to the earlier row)
    n_queries = top.shape[0]
    scores = torch.empty(n_queries, union.size)
    for start in range(0, union.size, chunk_rows):
        positions = union[start:start + chunk_rows]
        scores[:, start:start + positions.size] = scorer.at(rows_of(positions), positions)
    # both sides choose among all of a query's candidates: a row the first stage misplaced
    # (a fast-scan sum wrapped around, say) is still found on its side
    chosen = top if bottom is None else np.concatenate([top, bottom], axis=1)
    best = _side(scores, union, chosen, k, largest=True)
    worst = _side(scores, union, chosen, k, largest=False) if bottom is not None else None
    out = []
    for q in range(n_queries):
        positions, values = best[q]
        found = ([ids[i] for i in positions], values)
        if worst is None:
            out.append((*found, None, None))
        else:
            out.append((*found, [ids[i] for i in worst[q][0]], worst[q][1]))
    return out, int(union.size)


def _side(scores: torch.Tensor, union: np.ndarray, chosen: np.ndarray, k: int,
          largest: bool) -> list[tuple[np.ndarray, list[float]]]:
    """Per query, the best ``k`` of its ``chosen`` rows (positions) by ``scores`` over
    ``union``: ``(positions, scores)``."""
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    for q, row in enumerate(chosen):
        mask[q, np.searchsorted(union, row[row >= 0])] = True
    fill = -torch.inf if largest else torch.inf
    values, index = top_indices(scores.masked_fill(~mask, fill), min(k, union.size), largest)
    kept = []
    for q in range(scores.shape[0]):
        real = torch.isfinite(values[q])
        positions, found = union[index[q][real].numpy()], values[q][real].numpy()
        # equal scores in row order, as exact search gives them (topk orders ties anyhow)
        order = np.lexsort((positions, -found if largest else found))
        kept.append((positions[order], found[order].tolist()))
    return kept


def two_stage(scorer, store: EncodingStore, approx: ApproxIndex, c: int, k: int,
              query_ids: list[str], opponents: bool = True,
              rows_of: Callable[[np.ndarray], torch.Tensor] | None = None
              ) -> tuple[list[Ranking], dict]:
    """Both stages for the queries of ``scorer``: rankings, and a record of the search
    (spec, ``candidates``, rows read, each stage's seconds). ``rows_of``: where the second
    stage gets rows (default: the store's; see :func:`rerank`)."""
    t = time.perf_counter()
    top, bottom = candidates(approx, first_stage_queries(scorer), c, opponents)
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    found, rows_read = rerank(scorer, rows_of or store, approx.ids, top, bottom, k)
    second_s = time.perf_counter() - t
    rankings = [Ranking(q, *f) for q, f in zip(query_ids, found, strict=True)]
    return rankings, {"spec": approx.spec, "candidates": c, "rows_read": rows_read,
                      "rows_from": "store" if rows_of is None else "re-encoded passages",
                      "rows": int(approx.index.ntotal), "first_stage_s": first_s,
                      "second_stage_s": second_s, "description": approx.describe()}
