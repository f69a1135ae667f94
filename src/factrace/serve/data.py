"""What ``factrace serve`` shows, loaded once at startup: rankings, queries, qrels, passages.

- A *rankings set* is one rankings file (``scan``, ``trace``, ``ask``, or one method of
  ``compare``'s ``rankings/`` directory, named by its file). A directory given as rankings
  stands for its ``*.jsonl`` files (``compare``'s output directory for its ``rankings/``). A file
  that cannot be read becomes a set holding only its error: the page shows it, the rest works.
- Queries come from the set's ``.meta.json`` (the ``queries`` path ``scan``, ``trace`` and
  ``compare`` record), or from ``--queries``; their other fields (relation, ...) become filters, as do the
  fields of a ``facts.jsonl`` beside them (the fact world's per-query record). ``ask`` rows carry
  their own prompt and completion. Qrels come from ``--qrels``, else from the file the sets'
  metadata name (``compare``'s).
- Passage texts are read once into an id → text map from the store's corpora (or
  ``--corpus``, or the corpus the sets' metadata name); an id that is neither in the store nor in the corpora is *missing*, and shown so.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factrace.data.io import Ranking, read_qrels, read_queries, read_rankings
from factrace.data.jsonl import iter_jsonl
from factrace.data.outputs import meta_path
from factrace.data.shards import iter_records
from factrace.data.sources import QUERY_FIELDS, Source, as_source, source_from_meta
from factrace.errors import FactraceError, FactraceWarning
from factrace.store.ids import passage_of
from factrace.store.locations import Locations

# A metadata field becomes a filter when it takes at most this many distinct values.
MAX_FILTER_VALUES = 50

_ABSOLUTE = re.compile(r"(?<![\w.~])/(?:[^\s/'\":]+/)*([^\s/'\":]+)")


def file_name(path: str | None) -> str | None:
    """What the page shows of a file's path: its name (no directory of the server's)."""
    return None if path is None else Path(path).name


def without_directories(message: str) -> str:
    """``message`` with each absolute path in it cut to its file name."""
    return _ABSOLUTE.sub(r"\1", message)


@dataclass
class QueryInfo:
    """A query as the page shows it: prompt, target (``None`` for an ``ask`` row, which has a
    completion instead, and the span of it traced) and metadata fields."""

    id: str
    prompt: str | None = None
    target: str | None = None
    completion: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    span: list[int] | None = None
    """An ``ask`` row's traced characters of the completion, ``[start, end]``."""

    def to_json(self) -> dict:
        return {"id": self.id, "prompt": self.prompt, "target": self.target,
                "completion": self.completion, "fields": self.fields, "span": self.span}


@dataclass
class RankingSet:
    """One rankings file: its rankings by query id (file order), metadata and queries, or the
    error that kept it from loading."""

    name: str
    path: str
    method: str = ""
    rankings: dict[str, Ranking] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    queries: dict[str, QueryInfo] = field(default_factory=dict)
    queries_path: str | Source | None = None
    """The queries (a :class:`~factrace.data.sources.Source` when read from renamed columns)."""
    error: str | None = None

    def summary(self) -> dict:
        """The set as the page lists it: its files by name only."""
        error = self.error and without_directories(
            self.error.replace(self.path, file_name(self.path)))
        return {"name": self.name, "path": file_name(self.path), "method": self.method,
                "command": self.meta.get("command"), "queries": len(self.rankings),
                "queries_path": file_name(None if self.queries_path is None
                                          else str(self.queries_path)), "error": error}


def rankings_files(paths: list[str]) -> list[Path]:
    """Each rankings path given, a directory standing for its ``*.jsonl`` files (a ``compare``
    output directory for those of its ``rankings/``)."""
    out: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            inner = path / "rankings" if (path / "rankings").is_dir() else path
            found = sorted(p for p in inner.glob("*.jsonl") if p.is_file())
            if not found:
                raise FactraceError(f"{given}: a directory without rankings (*.jsonl) files")
            out.extend(found)
        else:
            out.append(path)
    return out


def method_of(path: Path, meta: dict) -> str:
    """A set's method: the one its metadata names (``compare``'s), else the variant in its
    metadata, else the command that wrote it, else the file's name."""
    if isinstance(meta.get("method"), str) and meta["method"]:
        return meta["method"]
    variant = (meta.get("encoder") or {}).get("config", {}).get("variant")
    command = meta.get("command")
    if command == "ask":
        return f"ask ({variant})" if variant else "ask"
    if variant:
        return variant
    return command or path.stem


def read_meta(path: Path) -> dict:
    """``FILE.meta.json`` if there is one (``{}`` otherwise, or when it is not JSON)."""
    meta_file = meta_path(path)
    if not meta_file.is_file():
        return {}
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def read_query_table(path: str | Source) -> dict[str, QueryInfo]:
    """Queries with every field beyond id, prompt and target as metadata, plus the fields of a
    ``facts.jsonl`` beside the file (rows keyed by ``query_id``).

    Raises:
        FactraceError: the queries file is malformed (as :func:`read_queries` says).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FactraceWarning)  # the repair is trace's to report
        queries = read_queries(path)
    table = {q.id: QueryInfo(q.id, q.prompt, q.target) for q in queries}
    source = as_source(path)
    own = tuple(source.column(name) for name in QUERY_FIELDS)
    for row in iter_records(source):
        info = table.get(str(row.get(own[0])))
        if info is not None:
            info.fields.update(_scalars(row, own))
    facts = Path(source.path).parent / "facts.jsonl"
    if facts.is_file() and facts.resolve() != Path(source.path).resolve():
        try:
            for _, row in iter_jsonl(facts):
                info = table.get(str(row.get("query_id")))
                if info is not None:
                    info.fields.update(_scalars(row, ("query_id",)))
        except FactraceError as e:
            warnings.warn(f"{e} (its fields are not shown)", FactraceWarning, stacklevel=2)
    return table


def _scalars(row: dict, skip: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in row.items()
            if k not in skip and isinstance(v, str | int | float | bool)}


def load_set(path: Path, name: str, queries_override: str | None,
             query_tables: dict[str, dict[str, QueryInfo]]) -> RankingSet:
    """One rankings file as a :class:`RankingSet`; a file that cannot be read gives a set with
    its ``error`` (and a :class:`FactraceWarning`: one line on the terminal)."""
    meta = read_meta(path)
    found = RankingSet(name=name, path=str(path), method=method_of(path, meta), meta=meta)
    try:
        rankings = read_rankings(path)
    except FactraceError as e:
        found.error = str(e)
        warnings.warn(f"{e} (the page shows this set as not loaded)", FactraceWarning,
                      stacklevel=2)
        return found
    found.rankings = {r.query_id: r for r in rankings}
    queries_path = queries_override or source_from_meta(meta, "queries")
    table: dict[str, QueryInfo] = {}
    if queries_path:
        if queries_path not in query_tables:
            try:
                query_tables[queries_path] = read_query_table(queries_path)
            except FactraceError as e:
                warnings.warn(f"{e} (the queries of {path} are shown by id only)",
                              FactraceWarning, stacklevel=2)
                query_tables[queries_path] = {}
        table = query_tables[queries_path]
        found.queries_path = queries_path
    for r in rankings:
        info = table.get(r.query_id)
        if info is None:
            info = QueryInfo(r.query_id)
        if "prompt" in r.extra:  # an ask row: its own prompt and completion
            span = r.extra.get("span")
            info = QueryInfo(r.query_id, str(r.extra["prompt"]), None,
                             str(r.extra.get("completion", "")), dict(info.fields),
                             list(span) if isinstance(span, list) else None)
        found.queries[r.query_id] = info
    return found


def load_sets(paths: list[str], queries: str | None = None) -> list[RankingSet]:
    """Every rankings set of ``paths``, named by file stem (made unique)."""
    tables: dict[str, dict[str, QueryInfo]] = {}
    sets: list[RankingSet] = []
    taken: set[str] = set()
    for path in rankings_files(paths):
        name = path.name.removesuffix(".gz").removesuffix(".jsonl")
        base, n = name, 2
        while name in taken:
            name, n = f"{base}-{n}", n + 1
        taken.add(name)
        sets.append(load_set(path, name, queries, tables))
    return sets


class Passages:
    """Passage texts by id, read when asked for through location tables (a store's own, or
    built in one pass over ``corpora`` at start): no text is held in memory. A window id
    ``<doc>#<n>`` is shown as its document's text. ``store``: the store whose rows are the
    known ids (``None``: any id with a text)."""

    def __init__(self, corpora: list[str], store=None):
        self.corpora = list(corpora)
        self.store = store
        if store is not None and self.corpora == [c for c in store.corpora if c is not None]:
            self.tables = store.locations()
        else:
            self.tables = [Locations.build(corpus) for corpus in self.corpora]
        self._rows: set[str] | None = None

    def _text(self, passage_id: str) -> str | None:
        for table in self.tables:
            found = table.find(passage_id)
            if found is not None:
                return found.text
        return None

    def _known(self, doc_id: str) -> bool:
        return self.store is None or self.in_store(doc_id)

    def in_store(self, doc_id: str) -> bool:
        """Whether the store has a row ``doc_id`` (no store: no)."""
        if self.store is None:
            return False
        if self._rows is None:
            self._rows = set(self.store.ids)
        return doc_id in self._rows

    def get(self, doc_id: str) -> dict:
        """``{"id", "text", "window", "missing"}``: missing when the store lacks the id, or no
        corpus has its text."""
        document, window = passage_of(doc_id, lambda i: any(i in t for t in self.tables))
        text = self._text(document)
        missing = text is None or not self._known(doc_id)
        return {"id": doc_id, "text": text, "window": window if text is not None else None,
                "missing": missing}


def load_qrels(path: str | None) -> dict[str, set[str]]:
    return read_qrels(path) if path else {}


def named_in_metadata(sets: list[RankingSet], key: str) -> list[str | Source]:
    """The files the loaded sets' metadata name under ``key`` (``compare`` records its
    ``corpus`` and ``qrels``; with the columns a corpus was read from), each once; one that is
    not there is left out, with a warning."""
    named = dict.fromkeys(source_from_meta(s.meta, key) for s in sets
                          if not s.error and isinstance(s.meta.get(key), str))
    found = [path for path in named if Path(path).exists()]
    for path in named:
        if path not in found:
            warnings.warn(f"the rankings' metadata name the {key} {path}, which is not there "
                          f"(give --{key} FILE)", FactraceWarning, stacklevel=2)
    return found


def qrels_named(sets: list[RankingSet]) -> str | None:
    """The qrels file the sets' metadata name, when they name one; several different ones:
    none (a warning says to choose with ``--qrels``)."""
    named = named_in_metadata(sets, "qrels")
    if len(named) > 1:
        warnings.warn(f"the rankings name different qrels ({', '.join(named)}); give --qrels "
                      "FILE to mark gold passages", FactraceWarning, stacklevel=2)
        return None
    return named[0] if named else None
