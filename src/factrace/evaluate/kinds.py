"""What kind of passage a proponent is, relative to the fact its query asks.

The paper's second finding: many influential passages directly entail the fact, others support
the same output by reinforcing priors on the relation, on common entities, on names. Each top-k
proponent of a query that carries its fact (``subject``, ``relation``, ``object``; ``target``
stands in for ``object`` when absent) gets exactly one kind, by the first rule that applies:

1. ``entails``: a gold passage of the query (its qrels, a window of one included), or a passage
   that mentions the subject and the object together;
2. ``object``: mentions the object (the answer) but not the subject;
3. ``subject``: mentions the subject but not the object;
4. ``relation``: mentions neither, but uses the relation's wording;
5. ``other``.

A *mention* is the name as whole words: case and runs of whitespace do not matter, a name inside
another word is not a mention ("Sarn" is not in "Sarnville"; "Vem" is in "Vem's" and
"Vem-born"), and an occurrence of one name inside an occurrence of the other, longer one is not
a mention of the shorter ("Sarn" in "New Sarn", when the subject is "New Sarn" and the object
"Sarn").

The relation's wording comes from the query's ``relation_text`` field (a phrase or a list of
phrases) when it has one, else from the fact world's templates when ``relation`` names one of
its relations (each template's text between its slots, without the fragments made only of
function words: "{s} is a native of {o}." gives "is a native of"). Without either, no
passage is of kind ``relation``, and the summary says so.

Shares: per query, the fraction of its top-k proponents of each kind (the five add up to 1);
per method, the mean over queries with a fact and its standard error.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from factrace.data.sources import Source, as_source
from factrace.evaluate.metrics import bare_id, is_gold, mean_stderr, ranked_ids

KINDS = ("entails", "object", "subject", "relation", "other")
"""Every kind, in the order of the rules."""
KIND_CUTOFFS = (1, 10)
"""The top-k cut-offs whose shares are reported."""
FACT_FIELDS = ("subject", "relation", "object", "relation_text")
_FUNCTION_WORDS = frozenset(
    "a an the of in on at to by for from with as is are was were be its it his her their "
    "and or s".split())
_SLOT = re.compile(r"\{[A-Za-z_]+\}")


@dataclass(frozen=True)
class Fact:
    """The fact a query asks.

    Attributes:
        subject: the subject's name.
        object: the answer's name (the query's ``object``, else its target, stripped).
        relation: the relation's name, if given.
        wording: phrases that express the relation (may be empty).
        wording_source: where ``wording`` came from: ``"relation_text"``, ``"fact world
            templates"`` or ``"none"``.
    """

    subject: str
    object: str
    relation: str | None = None
    wording: tuple[str, ...] = ()
    wording_source: str = "none"


def template_wording(template: str) -> list[str]:
    """The phrases of one relation template: its text between slots, stripped of punctuation
    and a leading possessive, without fragments made only of function words."""
    phrases = []
    for piece in _SLOT.split(template):
        piece = piece.strip().removeprefix("'s").strip(string.punctuation + " ")
        words = piece.lower().split()
        if words and any(w not in _FUNCTION_WORDS for w in words):
            phrases.append(piece)
    return phrases


def relation_wording(relation: str | None, relation_text=None) -> tuple[tuple[str, ...], str]:
    """``(phrases, source)`` of a relation: ``relation_text`` (a string or a list of strings)
    when given, else the fact world's templates of ``relation``, else nothing."""
    if isinstance(relation_text, str) and relation_text.strip():
        return (relation_text.strip(),), "relation_text"
    if isinstance(relation_text, list | tuple):
        phrases = tuple(p.strip() for p in relation_text if isinstance(p, str) and p.strip())
        if phrases:
            return phrases, "relation_text"
    from factrace.factworld.templates import RELATION_BY_NAME

    known = RELATION_BY_NAME.get(relation) if isinstance(relation, str) else None
    if known is None:
        return (), "none"
    phrases = dict.fromkeys(p for t in known.templates for p in template_wording(t))
    return tuple(phrases), "fact world templates"


def _pattern(name: str) -> re.Pattern | None:
    words = name.split()
    if not words:
        return None
    return re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, words)) + r"(?!\w)", re.IGNORECASE)


def _spans(text: str, name: str) -> list[tuple[int, int]]:
    pattern = _pattern(name)
    return [m.span() for m in pattern.finditer(text)] if pattern else []


def _outside(spans: list[tuple[int, int]], others: list[tuple[int, int]]) -> bool:
    """Whether some span is not inside any of ``others``."""
    return any(not any(a <= s and e <= b for a, b in others) for s, e in spans)


def mentions(text: str, subject: str, obj: str) -> tuple[bool, bool]:
    """Whether ``text`` mentions the subject, and the object, as whole words; an occurrence of
    the shorter name inside one of the longer is not a mention of it."""
    subj, objs = _spans(text, subject), _spans(text, obj)
    if len(subject) >= len(obj):
        return bool(subj), _outside(objs, subj)
    return _outside(subj, objs), bool(objs)


def passage_kind(text: str, fact: Fact, gold: bool = False) -> str:
    """The kind of one passage for ``fact`` (the rules of this module's docstring)."""
    if gold:
        return "entails"
    has_subject, has_object = mentions(text, fact.subject, fact.object)
    if has_subject and has_object:
        return "entails"
    if has_object:
        return "object"
    if has_subject:
        return "subject"
    if any(_spans(text, phrase) for phrase in fact.wording):
        return "relation"
    return "other"


def fact_of(fields: Mapping, target: str | None = None) -> Fact | None:
    """The :class:`Fact` of a query's fields, or ``None`` when it has no subject, or neither an
    object nor a target."""
    subject = fields.get("subject")
    obj = fields.get("object", target)
    if not isinstance(subject, str) or not subject.strip():
        return None
    if not isinstance(obj, str) or not obj.strip():
        return None
    relation = fields.get("relation")
    wording, source = relation_wording(relation, fields.get("relation_text"))
    return Fact(subject.strip(), obj.strip(), relation if isinstance(relation, str) else None,
                wording, source)


def read_facts(queries: str | Source) -> dict[str, Fact]:
    """Query id → :class:`Fact`, from the fields of the queries file and, as ``factrace serve``
    reads them, those of a ``facts.jsonl`` beside it (rows keyed by ``query_id``). Queries
    without a subject get none."""
    from factrace.data.io import read_queries
    from factrace.data.jsonl import iter_jsonl
    from factrace.data.shards import iter_records
    from factrace.data.sources import QUERY_FIELDS

    source = as_source(queries)
    targets = {q.id: q.target for q in read_queries(source)}
    fields: dict[str, dict] = {qid: {} for qid in targets}
    id_column = source.column(next(iter(QUERY_FIELDS)))
    for row in iter_records(source):
        own = fields.get(str(row.get(id_column)))
        if own is not None:
            own.update({k: row[k] for k in FACT_FIELDS if row.get(k) is not None})
    beside = Path(source.path).parent / "facts.jsonl"
    if beside.is_file() and beside.resolve() != Path(source.path).resolve():
        for _, row in iter_jsonl(beside):
            own = fields.get(str(row.get("query_id")))
            if own is not None:
                own.update({k: row[k] for k in FACT_FIELDS
                            if row.get(k) is not None and k not in own})
    facts = {qid: fact_of(f, targets[qid]) for qid, f in fields.items()}
    return {qid: fact for qid, fact in facts.items() if fact is not None}


def ranking_kinds(
    doc_ids: Sequence[str], texts: Mapping[str, str], fact: Fact, gold: Iterable[str]
) -> list[str]:
    """The kind of each passage of one ranking, in order. A window ``<doc>#<n>`` is judged
    by its passage's whole text; a passage without text is ``other`` unless gold."""
    gold = frozenset(gold)
    return [passage_kind(texts.get(d) or texts.get(bare_id(d)) or "", fact, is_gold(d, gold))
            for d in doc_ids]


def kind_shares(kinds: Sequence[str]) -> dict[str, float]:
    """The fraction of each kind among ``kinds`` (all 0 for an empty list)."""
    n = len(kinds)
    return {k: (sum(x == k for x in kinds) / n if n else 0.0) for k in KINDS}


def kinds_summary(
    rankings,
    facts: Mapping[str, Fact],
    qrels: Mapping[str, set[str]],
    texts: Mapping[str, str],
    cutoffs: Sequence[int] = KIND_CUTOFFS,
) -> dict:
    """Per cut-off k, the mean ± se over queries (those with a fact and a ranking) of each
    kind's share among the top-k proponents::

        {"n_queries": n, "wording": {source: count}, "top1": {kind: {"mean", "se"}}, ...}

    ``n_queries`` is 0 (and the shares absent) when no ranked query carries a fact."""
    ranked = ranked_ids(rankings)
    selected = [q for q in ranked if q in facts]
    out: dict = {"n_queries": len(selected), "wording": {}}
    for qid in selected:
        source = facts[qid].wording_source
        out["wording"][source] = out["wording"].get(source, 0) + 1
    if not selected:
        return out
    per_query = {qid: ranking_kinds(ranked[qid][:max(cutoffs)], texts, facts[qid],
                                    qrels.get(qid, ())) for qid in selected}
    for k in cutoffs:
        shares = [kind_shares(per_query[qid][:k]) for qid in selected]
        out[f"top{k}"] = {}
        for kind in KINDS:
            stats = mean_stderr([s[kind] for s in shares])
            out[f"top{k}"][kind] = {"mean": stats.mean, "se": stats.stderr}
    return out


def no_facts_reason(queries_path) -> str:
    """The one line said when kinds cannot be computed."""
    return (f"proponent kinds not computed: no query of {queries_path} has a subject and an "
            "object (fields subject, relation, object; target stands in for object)")


def add_kinds(rows: Sequence[dict], rankings: Mapping, queries, qrels: Mapping[str, set[str]],
              texts: Mapping[str, str], facts: Mapping[str, Fact] | None = None) -> str | None:
    """Add ``kinds`` (:func:`kinds_summary`) to each row, from ``rankings[row["method"]]``;
    return ``None``, or the one line saying why kinds were not computed. ``facts``: those of
    ``queries`` (:func:`read_facts`), when already read."""
    facts = read_facts(queries) if facts is None else facts
    if not facts:
        return no_facts_reason(queries)
    for row in rows:
        row["kinds"] = kinds_summary(rankings[row["method"]], facts, qrels, texts)
    return None
