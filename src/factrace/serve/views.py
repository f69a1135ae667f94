"""The JSON of each view, computed from the loaded data (no web framework here).

- :func:`query_list`: a set's queries, searched and filtered (metadata fields, and correct /
  incorrect: whether a gold passage is among the top k, when qrels are given).
- :func:`query_detail`: one query's proponents and opponents, each with its passage text and
  marked gold or missing (a proponent also with its kind, when the query carries its fact),
  and its gold passages with their texts and ranks.
- :func:`comparison`: one query's proponents in two sets side by side, the shared ones marked.
- :func:`listed`: where a set lists a passage for a query, and with what score (the score an
  explanation of the pair is set beside).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from factrace.data.io import Ranking
from factrace.errors import FactraceError
from factrace.evaluate.kinds import KINDS, fact_of, passage_kind
from factrace.evaluate.metrics import hit_at, is_gold
from factrace.serve.data import MAX_FILTER_VALUES, Passages, QueryInfo, RankingSet
from factrace.serve.limits import shown

DEFAULT_K = 10


def find_set(sets: list[RankingSet], name: str) -> RankingSet:
    for s in sets:
        if s.name == name:
            if s.error:
                raise FactraceError(f"rankings set {shown(name)} did not load: "
                                    f"{s.summary()['error']}")
            return s
    raise FactraceError(f"no rankings set {shown(name)} (sets: "
                        f"{', '.join(s.name for s in sets)})")


def default_set(sets: list[RankingSet]) -> str | None:
    """The set the page opens on: TrackStar's (named so, else of that method) when loaded,
    else the first loaded one."""
    loaded = [s for s in sets if not s.error]
    for chosen in ([s for s in loaded if s.name == "trackstar"],
                   [s for s in loaded if s.method == "trackstar"], loaded):
        if chosen:
            return chosen[0].name
    return None


def is_correct(ranking: Ranking, gold: set[str] | None, k: int) -> bool | None:
    """Whether a gold passage is among the top ``k`` (``None``: the query has no qrels).

    A window ``<doc>#<n>`` of a gold document counts as the document."""
    if not gold:
        return None
    return hit_at(ranking.doc_ids, gold, k) == 1.0


def filters_of(queries: Mapping[str, QueryInfo]) -> dict[str, list]:
    """Metadata fields usable as filters: those with 2 to MAX_FILTER_VALUES distinct values."""
    values: dict[str, set] = {}
    for q in queries.values():
        for key, value in q.fields.items():
            values.setdefault(key, set()).add(value)
    return {key: sorted(v, key=str) for key, v in sorted(values.items())
            if 2 <= len(v) <= MAX_FILTER_VALUES}


def query_list(s: RankingSet, qrels: Mapping[str, set[str]], search: str = "",
               correct: str = "", field_filters: Mapping[str, str] | None = None,
               k: int = DEFAULT_K) -> dict:
    """The queries of ``s`` that match ``search`` (in id, prompt, target or completion, any
    case), ``correct`` (``"yes"``, ``"no"`` or ``""`` for any) and every ``field=value``."""
    if correct not in ("", "yes", "no"):
        raise FactraceError(f"correct must be yes, no or empty; got {shown(correct)}")
    needle = search.strip().lower()
    field_filters = dict(field_filters or {})
    rows = []
    for qid, ranking in s.rankings.items():
        q = s.queries[qid]
        ok = is_correct(ranking, qrels.get(qid), k)
        if needle and not any(needle in (t or "").lower()
                              for t in (q.id, q.prompt, q.target, q.completion)):
            continue
        if correct and ok is not (correct == "yes"):
            continue
        if any(str(q.fields.get(key)) != value for key, value in field_filters.items()):
            continue
        top = ({"id": ranking.doc_ids[0], "score": ranking.scores[0]}
               if ranking.doc_ids else None)
        rows.append({**q.to_json(), "correct": ok, "top": top})
    return {"set": s.summary(), "queries": rows, "total": len(s.rankings),
            "filters": filters_of(s.queries), "has_qrels": bool(qrels), "k": k}


def _entries(ids: list[str], scores: list[float], passages: Passages, gold: set[str],
             tokens: list | None = None) -> list[dict]:
    out = []
    for n, (doc_id, score) in enumerate(zip(ids, scores, strict=True), 1):
        entry: dict[str, Any] = {"rank": n, "score": score, **passages.get(doc_id),
                                 "gold": is_gold(doc_id, gold)}
        if tokens is not None and n - 1 < len(tokens) and tokens[n - 1]:
            entry["top_tokens"] = tokens[n - 1]
        out.append(entry)
    return out


def rank_of(doc_id: str, ids: list[str]) -> int | None:
    """The 1-based rank of passage ``doc_id`` (or of a window of it) among ``ids``."""
    for n, ranked in enumerate(ids, 1):
        if is_gold(ranked, {doc_id}):
            return n
    return None


def gold_entries(ranking: Ranking, gold: set[str], passages: Passages) -> list[dict]:
    """The gold passages of a query, each with its text and its rank in ``ranking``
    (``None``: not among its ``len(ranking.doc_ids)``) and among the opponents."""
    return [{**passages.get(g), "rank": rank_of(g, ranking.doc_ids),
             "opponent_rank": rank_of(g, ranking.opponent_ids or [])} for g in sorted(gold)]


def query_detail(s: RankingSet, qid: str, qrels: Mapping[str, set[str]], passages: Passages,
                 k: int = DEFAULT_K, kind: str = "") -> dict:
    """One query of ``s``: the query, its proponents and opponents (with texts, gold and
    missing marks) and its gold passages (with texts and their ranks: ``ranked`` are
    listed). When the query carries its fact (:mod:`factrace.evaluate.kinds`), each proponent
    has its ``kind``, ``kinds`` lists them all, and ``kind`` keeps the proponents of one."""
    if qid not in s.rankings:
        raise FactraceError(f"rankings set {s.name!r} has no query {shown(qid)}")
    if kind and kind not in KINDS:
        raise FactraceError(f"kind must be one of {', '.join(KINDS)}; got {shown(kind)}")
    r = s.rankings[qid]
    gold = qrels.get(qid, set())
    tokens = r.extra.get("proponent_tokens")
    info = s.queries[qid]
    proponents = _entries(r.doc_ids, r.scores, passages, gold,
                          tokens if isinstance(tokens, list) else None)
    fact = fact_of(info.fields, info.target)
    if fact is not None:
        for e in proponents:
            e["kind"] = passage_kind(e["text"] or "", fact, e["gold"])
        if kind:
            proponents = [e for e in proponents if e["kind"] == kind]
    return {
        "set": s.summary(), "query": info.to_json(),
        "correct": is_correct(r, gold, k), "k": k,
        "kinds": list(KINDS) if fact is not None else [], "kind": kind or None,
        "proponents": proponents,
        "opponents": _entries(r.opponent_ids or [], r.opponent_scores or [], passages, gold),
        "gold": gold_entries(r, gold, passages), "ranked": len(r.doc_ids),
        "span": r.extra.get("span"),
    }


def comparison(a: RankingSet, b: RankingSet, qid: str, qrels: Mapping[str, set[str]],
               passages: Passages, k: int = DEFAULT_K) -> dict:
    """One query's proponents in ``a`` and ``b``, each marked ``shared`` when the other set
    ranks it too."""
    left = query_detail(a, qid, qrels, passages, k)
    right = query_detail(b, qid, qrels, passages, k)
    ids_a = {e["id"] for e in left["proponents"]}
    ids_b = {e["id"] for e in right["proponents"]}
    shared = ids_a & ids_b
    for side in (left, right):
        for e in side["proponents"]:
            e["shared"] = e["id"] in shared
    return {"query": left["query"], "a": left, "b": right,
            "shared": [e["id"] for e in left["proponents"] if e["id"] in shared]}


def listed(ranking: Ranking, doc_id: str, method: str, set_name: str | None = None) -> dict:
    """Where ``ranking`` (of ``method``; of set ``set_name``, or of an answer) lists
    ``doc_id``: ``{"set", "method", "list", "rank", "score"}``, ``list`` being ``proponents``
    or ``opponents`` (``None``, with no rank or score, when it lists it in neither)."""
    out: dict[str, Any] = {"set": set_name, "method": method, "list": None, "rank": None,
                           "score": None}
    for name, ids, scores in (("proponents", ranking.doc_ids, ranking.scores),
                              ("opponents", ranking.opponent_ids or [],
                               ranking.opponent_scores or [])):
        if doc_id in ids:
            n = ids.index(doc_id)
            return {**out, "list": name, "rank": n + 1, "score": scores[n]}
    return out


def common_queries(a: RankingSet, b: RankingSet) -> list[str]:
    """The query ids both sets rank, in ``a``'s order."""
    return [q for q in a.rankings if q in b.rankings]
