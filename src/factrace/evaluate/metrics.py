"""Fact-tracing attribution metrics: MRR and Recall@10 against gold passages (docs/design.md §
"Attribution: MRR and recall@10").

A ranking is judged by its passage ids, best first. A passage id counts as gold when it is in the
query's qrels or when it is a window ``<doc>#<n>`` of a gold passage ``<doc>`` (see
:func:`factrace.data.tokenize.tokenize_passage`). Every metric is a mean over queries, reported
with its standard error ``std / sqrt(n)`` (``ddof=1``; 0 when fewer than two queries).

Which queries count: every query of the qrels that has at least one gold passage. A query of the
qrels with no ranking scores 0; a ranked query that is not in the qrels (or has no gold) is
skipped and listed in :attr:`AttributionMetrics.skipped`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from factrace.data.io import Ranking
from factrace.errors import FactraceError, FactraceWarning
from factrace.store import ids

RECALL_K = 10

RankingsLike = Iterable[Ranking] | Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class MeanSE:
    """A mean over ``n`` values and its standard error (``std(ddof=1) / sqrt(n)``)."""

    mean: float
    stderr: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.stderr:.4f}"


@dataclass(frozen=True)
class AttributionMetrics:
    """MRR and Recall@k of one method's rankings against the qrels.

    Attributes:
        mrr: mean reciprocal rank of the first gold passage (0 for a query with none ranked).
        recall: Recall@k, the fraction of queries with a gold passage among the top ``k``.
        k: the cut-off of ``recall`` (10 in the paper).
        reciprocal_ranks: per query id, ``1 / (1 + index of the first gold passage)`` or 0.
        hits: per query id, 1.0 if a gold passage is in the top ``k``, else 0.0.
        missing: query ids of the qrels without a ranking (each counted as 0).
        skipped: ranked query ids that have no gold passage in the qrels (not counted).
    """

    mrr: MeanSE
    recall: MeanSE
    k: int
    reciprocal_ranks: dict[str, float] = field(default_factory=dict)
    hits: dict[str, float] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready dictionary of every field."""
        return asdict(self)


def mean_stderr(values: Sequence[float]) -> MeanSE:
    """Mean and standard error of ``values``: ``std(ddof=1) / sqrt(n)``, 0 when ``n < 2``.

    An empty sequence gives ``MeanSE(0.0, 0.0, 0)``.
    """
    n = len(values)
    if n == 0:
        return MeanSE(0.0, 0.0, 0)
    mean = math.fsum(values) / n
    if n < 2:
        return MeanSE(float(mean), 0.0, n)
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return MeanSE(float(mean), math.sqrt(var / n), n)


def split_window(doc_id: str) -> tuple[str, int | None]:
    """A passage id and its window: ``"doc#3"`` → ``("doc", 3)``, ``"doc"`` → ``("doc", None)``."""
    return ids.split_window(doc_id)


def bare_id(doc_id: str) -> str:
    """The passage id without a trailing window suffix: ``"doc#3"`` → ``"doc"``."""
    return split_window(doc_id)[0]


def is_gold(doc_id: str, gold: set[str] | frozenset[str]) -> bool:
    """Whether ``doc_id``, or the passage it is a window of, is among ``gold``."""
    return doc_id in gold or bare_id(doc_id) in gold


def reciprocal_rank(doc_ids: Sequence[str], gold: set[str] | frozenset[str]) -> float:
    """``1 / (1 + index of the first gold passage in doc_ids)``, 0 if none is gold."""
    for index, doc_id in enumerate(doc_ids):
        if is_gold(doc_id, gold):
            return 1.0 / (1 + index)
    return 0.0


def hit_at(doc_ids: Sequence[str], gold: set[str] | frozenset[str], k: int = RECALL_K) -> float:
    """1.0 if any of the first ``k`` passages is gold, else 0.0."""
    return 1.0 if any(is_gold(d, gold) for d in doc_ids[:k]) else 0.0


def ranked_ids(rankings: RankingsLike) -> dict[str, list[str]]:
    """Query id → passage ids, best first, from :class:`Ranking` objects or a plain mapping."""
    if isinstance(rankings, Mapping):
        return {str(q): list(ids) for q, ids in rankings.items()}
    return {r.query_id: list(r.doc_ids) for r in rankings}


def attribution_metrics(
    rankings: RankingsLike, qrels: Mapping[str, Iterable[str]], k: int = RECALL_K
) -> AttributionMetrics:
    """MRR and Recall@``k`` of ``rankings`` against ``qrels`` (query id → gold passage ids).

    Queries are taken in qrels order; rankings of queries outside the qrels are skipped.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    ranked = ranked_ids(rankings)
    gold_by_query = {q: frozenset(g) for q, g in qrels.items()}
    rr: dict[str, float] = {}
    hits: dict[str, float] = {}
    missing: list[str] = []
    for query_id, gold in gold_by_query.items():
        if not gold:
            continue
        doc_ids = ranked.get(query_id)
        if doc_ids is None:
            missing.append(query_id)
            doc_ids = []
        rr[query_id] = reciprocal_rank(doc_ids, gold)
        hits[query_id] = hit_at(doc_ids, gold, k)
    skipped = [q for q in ranked if not gold_by_query.get(q)]
    return AttributionMetrics(
        mrr=mean_stderr(list(rr.values())),
        recall=mean_stderr(list(hits.values())),
        k=k,
        reciprocal_ranks=rr,
        hits=hits,
        missing=missing,
        skipped=skipped,
    )


def check_coverage(
    query_ids: Iterable[str], qrels: Mapping[str, Iterable[str]], source: str, qrels_source: str
) -> None:
    """Check that the qrels judge the queries of ``source`` (rankings or a queries file).

    Raises:
        FactraceError: no query of ``source`` has gold passages in the qrels (every metric
            would be 0, which says nothing about the method).

    Warns (:class:`~factrace.errors.FactraceWarning`) when only some of them have (the others
    are not scored), and when queries of the qrels are absent from ``source`` (each scores 0).
    """
    ids = list(dict.fromkeys(query_ids))
    judged = [q for q, gold in qrels.items() if gold]
    matched = set(ids) & set(judged)
    if not matched:
        raise FactraceError(
            f"{qrels_source}: none of its {len(judged)} queries (e.g. {_listed(judged[:1])}) is "
            f"among the {len(ids)} queries of {source} (e.g. {_listed(ids[:1])}); "
            "are these the qrels of these queries?"
        )
    unjudged = len(ids) - len(matched)
    if unjudged:
        warnings.warn(
            f"{qrels_source}: {unjudged} of the {len(ids)} queries of {source} have no gold "
            "passages there and are not scored",
            FactraceWarning,
            stacklevel=2,
        )
    absent = len(judged) - len(matched)
    if absent:
        warnings.warn(
            f"{source}: {absent} of the {len(judged)} queries of {qrels_source} are not there "
            "and score 0",
            FactraceWarning,
            stacklevel=2,
        )


def _listed(ids: list[str]) -> str:
    return ", ".join(repr(i) for i in ids) or "none"
