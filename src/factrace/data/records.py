"""Training passages and (prompt, target) queries: the records of docs/design.md §
"Data formats".

Ids are kept as strings everywhere inside factrace (an integer id ``7`` in a corpus becomes
``"7"``), so corpora, qrels and rankings compare ids the same way whatever their files used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from factrace.errors import FactraceError


@dataclass(frozen=True)
class Passage:
    """One training example: the whole text is trained on."""

    id: str
    text: str


@dataclass(frozen=True)
class Query:
    """A fact asked as a prompt; the loss is taken on ``target`` only (it keeps its leading space)."""

    id: str
    prompt: str
    target: str


def needs_space(prompt: str, target: str) -> bool:
    """Whether ``target`` lacks the space that joins it to ``prompt``.

    True when the prompt does not end in whitespace and the target starts with a letter or a digit
    (``"capital of"`` + ``"France"``): for the BPE tokenizers of language models, the word after
    a space is a different token from the same word glued to the text before it, so such a
    target is almost always meant as ``" France"``. A target starting with whitespace or
    punctuation (``","``, ``"'s"``), or a prompt ending in whitespace, is left as it is.
    """
    return bool(prompt) and bool(target) and not prompt[-1].isspace() and target[0].isalnum()


def with_target_space(query: Query) -> Query:
    """``query`` with a space prepended to its target when :func:`needs_space` says so."""
    if needs_space(query.prompt, query.target):
        return replace(query, target=" " + query.target)
    return query


def _fields(item: Any, kind: str, keys: tuple[str, ...]) -> list[Any]:
    if not isinstance(item, Mapping) or any(k not in item for k in keys):
        shown = repr(item) if len(repr(item)) <= 60 else repr(item)[:60] + "..."
        raise FactraceError(f"a {kind} must be a {kind.title()} or a mapping with "
                            f"{', '.join(repr(k) for k in keys)}; got {shown}")
    values = [item[k] for k in keys]
    if not isinstance(values[0], str | int) or isinstance(values[0], bool):
        raise FactraceError(f"a {kind} id must be a string or an integer; got {values[0]!r}")
    for key, value in zip(keys[1:], values[1:], strict=True):
        if not isinstance(value, str):
            raise FactraceError(f"{kind} {values[0]!r}: {key!r} must be a string; got {value!r}")
    return [str(values[0]), *values[1:]]


def as_passage(item: Passage | Mapping[str, Any]) -> Passage:
    """A :class:`Passage` from itself or a mapping with ``id`` and ``text``."""
    return item if isinstance(item, Passage) else Passage(*_fields(item, "passage", ("id", "text")))


def as_query(item: Query | Mapping[str, Any]) -> Query:
    """A :class:`Query` from itself or a mapping with ``id``, ``prompt`` and ``target``."""
    if isinstance(item, Query):
        return item
    return Query(*_fields(item, "query", ("id", "prompt", "target")))
