"""Where a corpus or a query set is kept, and which of its columns holds each field.

A corpus row has the fields ``id`` and ``text``; a query has ``id``, ``prompt`` and ``target``.
Files that name them otherwise (a saved dataset with ``doc_id`` and ``body``, queries with
``question`` and ``answer``) are read through a :class:`Source`, a path with its renamed
columns::

    Source("wiki_saved/", {"id": "doc_id", "text": "body"})

A :class:`Source` is a path wherever one is expected (``os.fspath`` and ``str`` give its
path), so every reader of a corpus or a query set takes either. The command line builds one
from ``--id-field``/``--text-field`` (the corpus) and ``--query-id-field``,
``--query-prompt-field``, ``--query-target-field`` (the queries).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The fields of a corpus row and what each holds: ``id`` (a string or an integer) or ``str``.
CORPUS_FIELDS: dict[str, str] = {"id": "id", "text": "str"}
#: The fields of a query.
QUERY_FIELDS: dict[str, str] = {"id": "id", "prompt": "str", "target": "str"}
#: The command-line options that rename each kind of data set's fields.
FIELD_OPTIONS: dict[tuple[str, ...], dict[str, str]] = {
    tuple(CORPUS_FIELDS): {"id": "--id-field", "text": "--text-field"},
    tuple(QUERY_FIELDS): {"id": "--query-id-field", "prompt": "--query-prompt-field",
                          "target": "--query-target-field"},
}


@dataclass(frozen=True)
class Source:
    """A data set's path, and the columns that hold fields under other names than their own.

    Attributes:
        path: the file or directory (the forms of :mod:`factrace.data.shards`).
        renamed: ``(field, column)`` pairs, sorted; a field not listed is its own column.
            Given as a mapping or pairs; identity renames are dropped.
    """

    path: str
    renamed: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        pairs = self.renamed.items() if isinstance(self.renamed, Mapping) else self.renamed
        kept = tuple(sorted((str(f), str(c)) for f, c in pairs if c is not None and f != c))
        object.__setattr__(self, "path", os.fspath(self.path))
        object.__setattr__(self, "renamed", kept)

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def column(self, name: str) -> str:
        """The column that holds field ``name``."""
        return dict(self.renamed).get(name, name)


def as_source(data: str | os.PathLike[str] | Source) -> Source:
    """``data`` as a :class:`Source` (a plain path: every field under its own name)."""
    return data if isinstance(data, Source) else Source(os.fspath(data))


def with_columns(data: str | os.PathLike[str] | Source | None, **columns: str | None
                 ) -> str | Source | None:
    """``data`` with fields renamed (``id="doc_id"``); unchanged (a plain path stays one) when
    no column is given. ``None`` stays ``None``."""
    if data is None:
        return None
    renamed = {name: column for name, column in columns.items() if column is not None}
    if not renamed:
        return data if isinstance(data, Source) else os.fspath(data)
    base = as_source(data)
    return Source(base.path, {**dict(base.renamed), **renamed})


def source_meta(key: str, data: str | os.PathLike[str] | Source, path: str | None = None
                ) -> dict[str, Any]:
    """How an output's metadata records the data set ``data`` under ``key``: its path (``path``
    when given, e.g. made absolute) and, when it renames fields, ``<key>_columns``."""
    source = as_source(data)
    meta: dict[str, Any] = {key: source.path if path is None else path}
    if source.renamed:
        meta[f"{key}_columns"] = dict(source.renamed)
    return meta


def source_from_meta(meta: Mapping[str, Any], key: str) -> str | Source | None:
    """The data set an output's metadata records under ``key`` (see :func:`source_meta`)."""
    path = meta.get(key)
    if not isinstance(path, str):
        return None
    columns = meta.get(f"{key}_columns")
    if isinstance(columns, Mapping) and columns:
        return Source(path, {str(f): str(c) for f, c in columns.items()})
    return path
