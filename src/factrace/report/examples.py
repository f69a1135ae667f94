"""Worked examples for the report: a query, its gold passages and each method's top passages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from factrace.data.records import Query
from factrace.evaluate.metrics import RankingsLike, bare_id, is_gold
from factrace.evaluate.tail_patch import PassageTexts, lookup_text

MAX_CHARS = 300


@dataclass(frozen=True)
class ShownPassage:
    """A passage as the report shows it.

    Attributes:
        id: the passage id (a window id ``<doc>#<n>`` shows its document's text).
        text: its text, shortened to a few hundred characters.
        score: the method's score, when the ranking has one.
        gold: whether it is a gold passage of the query.
    """

    id: str
    text: str
    score: float | None = None
    gold: bool = False


@dataclass(frozen=True)
class ReportExample:
    """One query shown in the report.

    Attributes:
        query_id, prompt, target: the query.
        gold: its gold passages.
        columns: method name → that method's top passages, best first (shown side by side).
    """

    query_id: str
    prompt: str
    target: str
    gold: list[ShownPassage] = field(default_factory=list)
    columns: dict[str, list[ShownPassage]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def shorten(text: str, max_chars: int = MAX_CHARS) -> str:
    """``text`` cut to ``max_chars`` characters, with an ellipsis when cut."""
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


def _scored(rankings: RankingsLike) -> dict[str, list[tuple[str, float | None]]]:
    if isinstance(rankings, Mapping):
        return {q: [(d, None) for d in ids] for q, ids in rankings.items()}
    return {r.query_id: list(zip(r.doc_ids, r.scores, strict=True)) for r in rankings}


def _text(passages: PassageTexts, doc_id: str, max_chars: int) -> str:
    text = lookup_text(passages, doc_id)
    if text is None:
        text = lookup_text(passages, bare_id(doc_id))
    return shorten(text, max_chars) if text is not None else "(text not available)"


def build_examples(
    queries: Sequence[Query],
    qrels: Mapping[str, set[str]],
    rankings: Mapping[str, RankingsLike],
    passages: PassageTexts,
    methods: Sequence[str] = ("trackstar", "bm25"),
    n: int = 5,
    top: int = 5,
    max_chars: int = MAX_CHARS,
) -> list[ReportExample]:
    """The first ``n`` queries (file order) that have gold passages, each with the top ``top``
    passages of each of ``methods`` (those present in ``rankings``) and its gold passages."""
    present = [m for m in methods if m in rankings]
    scored = {m: _scored(rankings[m]) for m in present}
    examples = []
    for query in queries:
        gold = qrels.get(query.id) or set()
        if not gold:
            continue
        columns = {
            m: [ShownPassage(d, _text(passages, d, max_chars), s, is_gold(d, gold))
                for d, s in scored[m].get(query.id, [])[:top]]
            for m in present
        }
        shown_gold = [ShownPassage(g, _text(passages, g, max_chars), None, True)
                      for g in sorted(gold)]
        examples.append(ReportExample(query.id, query.prompt, query.target, shown_gold, columns))
        if len(examples) == n:
            break
    return examples
