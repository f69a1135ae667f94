"""Readers and writers of the file formats of docs/design.md § "Data formats", with strict
validation.

- corpus: JSON Lines, Parquet, Arrow, a ``save_to_disk`` dataset or a directory of shards; rows
  with ``id`` (string or integer) and ``text`` — see :mod:`factrace.data.shards` and
  :mod:`factrace.data.corpus`.
- queries: JSON Lines (or any form a corpus takes) with ``id``, ``prompt``, ``target`` (the
  target keeps its leading space).
- a :class:`~factrace.data.sources.Source` reads a corpus or queries whose fields are kept
  under other names (``Source("saved/", {"text": "body"})``).
- qrels: JSON Lines with ``query_id``, ``doc_id``, one row per gold passage.
- rankings: JSON Lines with ``query_id``, ``doc_ids`` (best first), ``scores``; optionally
  ``opponent_ids`` and ``opponent_scores``; other fields are kept as :attr:`Ranking.extra`.

Ids are strings everywhere inside factrace: an integer id ``7`` is read as ``"7"``. Every problem
with a file is a :class:`~factrace.errors.FactraceError` naming the file, the line and what was
expected. Writers are atomic: the file appears complete or not at all.

This module is the one to import from; the work is done in :mod:`~factrace.data.jsonl`,
:mod:`~factrace.data.shards`, :mod:`~factrace.data.corpus` and :mod:`~factrace.data.atomic`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from factrace.data.atomic import atomic_dir, atomic_path, atomic_write
from factrace.data.corpus import (
    CorpusInfo,
    ShardInfo,
    corpus_size,
    iter_corpus,
    iter_located,
    validate_corpus,
)
from factrace.data.jsonl import (
    PathLike,
    as_id,
    as_ids,
    as_scores,
    iter_jsonl,
    located_error,
    read_jsonl,
    shown,
    write_jsonl,
)
from factrace.data.jsonl import field as required
from factrace.data.records import Query, needs_space
from factrace.data.shards import Shard, corpus_shards, iter_records, read_rows
from factrace.data.sources import QUERY_FIELDS, Source, as_source, with_columns
from factrace.errors import FactraceError, FactraceWarning

__all__ = [
    "CorpusInfo",
    "Ranking",
    "Shard",
    "ShardInfo",
    "Source",
    "as_source",
    "atomic_dir",
    "atomic_path",
    "atomic_write",
    "corpus_shards",
    "corpus_size",
    "iter_corpus",
    "iter_jsonl",
    "iter_located",
    "iter_records",
    "read_jsonl",
    "read_qrels",
    "read_queries",
    "read_rankings",
    "validate_corpus",
    "with_columns",
    "write_jsonl",
    "write_queries",
    "write_qrels",
    "write_rankings",
]

QUERY_OBJECT = 'a JSON object with "id", "prompt" and a non-empty "target"'
QRELS_OBJECT = 'a JSON object with "query_id" and "doc_id"'
RANKING_OBJECT = 'a JSON object with "query_id", "doc_ids" and "scores" of equal length'
_RANKING_KEYS = ("query_id", "doc_ids", "scores", "opponent_ids", "opponent_scores")


@dataclass(frozen=True)
class Ranking:
    """The passages retrieved for one query.

    Attributes:
        query_id: the query's id.
        doc_ids: passage ids, best (most influential, most relevant) first.
        scores: one score per entry of ``doc_ids``.
        opponent_ids: optionally, the most negative passages, most negative first.
        opponent_scores: their scores; present exactly when ``opponent_ids`` is.
        extra: any other fields of the row, written back unchanged.
    """

    query_id: str
    doc_ids: list[str]
    scores: list[float]
    opponent_ids: list[str] | None = None
    opponent_scores: list[float] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = _ranking_problem(
            self.doc_ids, self.scores, self.opponent_ids, self.opponent_scores, self.extra
        )
        if problem:
            raise ValueError(f"Ranking for query {self.query_id!r}: {problem}")


def _ranking_problem(
    doc_ids: list[str],
    scores: list[float],
    opponent_ids: list[str] | None,
    opponent_scores: list[float] | None,
    extra: Mapping[str, Any],
) -> str | None:
    """What is inconsistent in a ranking's fields, or ``None``."""
    if len(doc_ids) != len(scores):
        return f'"doc_ids" has {len(doc_ids)} entries but "scores" has {len(scores)}'
    if (opponent_ids is None) != (opponent_scores is None):
        return '"opponent_ids" and "opponent_scores" must be given together'
    if opponent_ids is not None and opponent_scores is not None:
        if len(opponent_ids) != len(opponent_scores):
            return (
                f'"opponent_ids" has {len(opponent_ids)} entries but "opponent_scores" '
                f"has {len(opponent_scores)}"
            )
    for key, ids in (
        ("doc_ids", doc_ids),
        ("opponent_ids", [] if opponent_ids is None else opponent_ids),
    ):
        repeated = _first_repeat(ids)
        if repeated is not None:
            return f'"{key}" lists {shown(str(repeated))} twice'
    clash = set(extra) & set(_RANKING_KEYS)
    if clash:
        return f"extra fields {sorted(clash)} clash with the ranking's own fields"
    return None


def read_queries(path: PathLike | Source) -> list[Query]:
    """Read queries; ids must be unique, ``prompt`` and ``target`` non-empty strings.

    ``path`` is JSON Lines, or any form a corpus takes (Parquet, Arrow, a ``save_to_disk``
    directory, a directory of shards: :mod:`factrace.data.shards`); a
    :class:`~factrace.data.sources.Source` reads fields kept under other names. Other fields
    (subject, relation, ...) are allowed and ignored. A target that lacks the space joining it
    to its prompt (``"capital of"`` + ``"France"``, see
    :func:`~factrace.data.records.needs_space`) gets one prepended, with one
    :class:`~factrace.errors.FactraceWarning` giving the count and the first such line.

    Raises:
        FactraceError: malformed line, missing or mistyped field or column (naming those
            there are), empty prompt or target, repeated id, or a file without queries.
    """
    queries: list[Query] = []
    first: dict[str, tuple[Shard, int]] = {}
    repaired: list[str] = []
    for shard in corpus_shards(path):
        expected = f"each {'line' if shard.format == 'jsonl' else 'row'} must be {QUERY_OBJECT}"
        for number, (query_id, prompt, target) in read_rows(shard, QUERY_FIELDS):
            where = shard.where(number)
            for name, value in (("prompt", prompt), ("target", target)):
                if not value:
                    column = shard.column(name)
                    raise located_error(where, f'field "{column}" is empty', expected)
            if query_id in first:
                earlier, line = first[query_id]
                seen = (f"on line {line}" if earlier == shard and shard.format == "jsonl"
                        else f"at row {line}" if earlier == shard else f"at {earlier.where(line)}")
                raise FactraceError(f"{where}: duplicate id {shown(query_id)} (first seen "
                                    f"{seen}); query ids must be unique")
            first[query_id] = (shard, number)
            if needs_space(prompt, target):
                repaired.append(where)
                target = " " + target
            queries.append(Query(query_id, prompt, target))
    if not queries:
        raise FactraceError(f"{path}: no queries (expected one line per query, {QUERY_OBJECT})")
    if repaired:
        warnings.warn(
            f"{repaired[0]}: {len(repaired)} of {len(queries)} targets had no leading "
            "space after a prompt not ending in one; a space was prepended (targets keep their "
            "leading space, see File formats in the README)",
            FactraceWarning,
            stacklevel=2,
        )
    return queries


def write_queries(path: PathLike, queries: Iterable[Query]) -> int:
    """Write queries as JSON Lines, atomically; return how many were written."""
    return write_jsonl(
        path, ({"id": q.id, "prompt": q.prompt, "target": q.target} for q in queries)
    )


def read_qrels(path: PathLike) -> dict[str, set[str]]:
    """Read relevance judgements: query id -> ids of its gold passages.

    A repeated ``(query_id, doc_id)`` row is harmless and counted once.

    Raises:
        FactraceError: malformed line, missing or mistyped field, or a file without rows.
    """
    expected = f"each line must be {QRELS_OBJECT}"
    qrels: dict[str, set[str]] = {}
    for number, row in iter_jsonl(path, QRELS_OBJECT):
        where = f"{path}:{number}"
        query_id = as_id(required(row, "query_id", where, expected), "query_id", where, expected)
        doc_id = as_id(required(row, "doc_id", where, expected), "doc_id", where, expected)
        qrels.setdefault(query_id, set()).add(doc_id)
    if not qrels:
        raise FactraceError(
            f"{path}: no qrels (expected one line per gold passage, {QRELS_OBJECT})"
        )
    return qrels


def write_qrels(path: PathLike, qrels: Mapping[str, Iterable[str]]) -> int:
    """Write qrels as JSON Lines (queries in the given order, passages sorted); return rows written."""
    rows = (
        {"query_id": query_id, "doc_id": doc_id}
        for query_id, doc_ids in qrels.items()
        for doc_id in sorted(doc_ids)
    )
    return write_jsonl(path, rows)


def read_rankings(path: PathLike) -> list[Ranking]:
    """Read rankings, one line per query, in file order.

    Raises:
        FactraceError: malformed line, missing or mistyped field, lengths that differ, a
            passage listed twice, a repeated query id, or a file without rankings.
    """
    expected = f"each line must be {RANKING_OBJECT}"
    rankings: list[Ranking] = []
    first_line: dict[str, int] = {}
    for number, row in iter_jsonl(path, RANKING_OBJECT):
        where = f"{path}:{number}"
        query_id = as_id(required(row, "query_id", where, expected), "query_id", where, expected)
        doc_ids = as_ids(required(row, "doc_ids", where, expected), "doc_ids", where, expected)
        scores = as_scores(required(row, "scores", where, expected), "scores", where, expected)
        opponent_ids = opponent_scores = None
        if "opponent_ids" in row:
            opponent_ids = as_ids(row["opponent_ids"], "opponent_ids", where, expected)
        if "opponent_scores" in row:
            opponent_scores = as_scores(row["opponent_scores"], "opponent_scores", where, expected)
        extra = {key: value for key, value in row.items() if key not in _RANKING_KEYS}
        problem = _ranking_problem(doc_ids, scores, opponent_ids, opponent_scores, extra)
        if problem:
            raise located_error(where, problem, expected)
        _check_new("query_id", query_id, number, first_line, where, "one ranking per query")
        rankings.append(Ranking(query_id, doc_ids, scores, opponent_ids, opponent_scores, extra))
    if not rankings:
        raise FactraceError(f"{path}: no rankings (expected one line per query, {RANKING_OBJECT})")
    return rankings


def write_rankings(path: PathLike, rankings: Iterable[Ranking]) -> int:
    """Write rankings as JSON Lines, atomically; return how many were written.

    Scores must be finite. Opponent fields are written only when present; ``extra`` fields
    follow the standard ones.
    """
    return write_jsonl(path, (ranking_row(ranking) for ranking in rankings))


def ranking_row(ranking: Ranking) -> dict[str, Any]:
    """The JSON object of one ranking line."""
    row: dict[str, Any] = {
        "query_id": ranking.query_id,
        "doc_ids": list(ranking.doc_ids),
        "scores": [float(score) for score in ranking.scores],
    }
    if ranking.opponent_ids is not None and ranking.opponent_scores is not None:
        row["opponent_ids"] = list(ranking.opponent_ids)
        row["opponent_scores"] = [float(score) for score in ranking.opponent_scores]
    row.update(ranking.extra)
    return row


def _first_repeat(ids: Iterable[str]) -> str | None:
    """The first id that occurs a second time, or ``None``."""
    seen: set[str] = set()
    for doc_id in ids:
        if doc_id in seen:
            return doc_id
        seen.add(doc_id)
    return None


def _check_new(
    name: str, key: str, number: int, first_line: dict[str, int], where: str, rule: str
) -> None:
    """Record ``key`` (field ``name``) as seen on line ``number``; raise if it was seen before."""
    if key in first_line:
        raise FactraceError(
            f"{where}: duplicate {name} {shown(key)} (first seen on line {first_line[key]}); {rule}"
        )
    first_line[key] = number
