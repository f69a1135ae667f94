"""Tokenisation and loss masks (docs/design.md § "Loss").

A tokenised example carries a loss mask over its tokens: ``loss_mask[j] = 1`` when token ``j`` is
a prediction target, i.e. contributes ``CE(logits[j - 1], input_ids[j])``. Position 0 is never a
target. A passage is trained on every real token; a query (prompt ⊕ target) on its target tokens
only.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from factrace.data.records import Passage, Query, as_passage, as_query, with_target_space
from factrace.errors import FactraceError, FactraceWarning


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids and the loss mask that selects the tokens the loss is taken on."""

    id: str
    input_ids: tuple[int, ...]
    loss_mask: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.input_ids)


def _encode(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"])


def tokenize_passage(
    tokenizer, passage: Passage, max_length: int, overflow: str = "window"
) -> list[TokenizedExample]:
    """Tokenise a training passage; ``overflow`` is ``"window"`` or ``"truncate"``.

    A passage longer than ``max_length`` tokens is split into consecutive windows, each its own
    example with id ``<doc>#<n>`` (n from 0), unless truncation is asked for. With special tokens
    (BOS) added by the tokenizer, every window after the first starts with the same prefix of
    special tokens, so each window reads like a fresh sequence.
    """
    ids = _encode(tokenizer, passage.text, special=True)
    if len(ids) < 2:
        raise FactraceError(f"passage {passage.id!r} has fewer than 2 tokens: nothing to predict")
    if len(ids) <= max_length:
        return [TokenizedExample(passage.id, tuple(ids), (0,) + (1,) * (len(ids) - 1))]
    if overflow == "truncate":
        ids = ids[:max_length]
        return [TokenizedExample(passage.id, tuple(ids), (0,) + (1,) * (len(ids) - 1))]
    if overflow != "window":
        raise ValueError(f"overflow must be 'window' or 'truncate', not {overflow!r}")
    prefix = _special_prefix(tokenizer, ids)
    body = ids[len(prefix) :]
    step = max_length - len(prefix)
    windows = []
    for n, start in enumerate(range(0, len(body), step)):
        chunk = prefix + body[start : start + step]
        if len(chunk) - len(prefix) < 1 or len(chunk) < 2:
            continue
        mask = (0,) * max(len(prefix), 1) + (1,) * (len(chunk) - max(len(prefix), 1))
        windows.append(TokenizedExample(f"{passage.id}#{n}", tuple(chunk), mask))
    return windows


def _special_prefix(tokenizer, ids: list[int]) -> list[int]:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    prefix = []
    for t in ids:
        if t not in special:
            break
        prefix.append(t)
    return prefix


def tokenize_query(tokenizer, query: Query, max_length: int) -> TokenizedExample:
    """Tokenise prompt ⊕ target; the mask selects the target tokens only.

    The prompt is tokenised with the tokenizer's special tokens (BOS), the target without, and the
    two are concatenated, so the target's tokens are exactly the tokens of ``query.target``.
    """
    prompt = _encode(tokenizer, query.prompt, special=True)
    target = _encode(tokenizer, query.target, special=False)
    if not target:
        raise FactraceError(f"query {query.id!r}: target {query.target!r} has no tokens")
    if not prompt:
        raise FactraceError(
            f"query {query.id!r}: prompt has no tokens; the first target "
            "token needs at least one token before it"
        )
    ids = prompt + target
    if len(ids) > max_length:
        keep = max_length - len(target)
        if keep < 1:
            raise FactraceError(
                f"query {query.id!r}: target alone is longer than {max_length} tokens"
            )
        ids = prompt[-keep:] + target
    mask = (0,) * (len(ids) - len(target)) + (1,) * len(target)
    return TokenizedExample(query.id, tuple(ids), mask)


def tokenize_passages(
    tokenizer,
    passages: Iterable[Passage | Mapping[str, Any]],
    max_length: int,
    overflow: str = "window",
) -> Iterator[TokenizedExample]:
    """Stream :func:`tokenize_passage` over passages (or mappings with ``id`` and ``text``)."""
    for passage in passages:
        yield from tokenize_passage(tokenizer, as_passage(passage), max_length, overflow)


def tokenize_queries(
    tokenizer, queries: Iterable[Query | Mapping[str, Any]], max_length: int
) -> list[TokenizedExample]:
    """:func:`tokenize_query` over queries (or mappings with ``id``, ``prompt``, ``target``).

    A target lacking the space that joins it to its prompt gets one, with one warning (see
    :func:`~factrace.data.records.needs_space`); queries read from a file are repaired already.
    """
    given = [as_query(q) for q in queries]
    joined = [with_target_space(q) for q in given]
    repaired = [q.id for q, j in zip(given, joined, strict=True) if q is not j]
    if repaired:
        warnings.warn(
            f"{len(repaired)} of {len(given)} query targets had no leading space after a prompt "
            f"not ending in one (first: query {repaired[0]!r}); a space was prepended",
            FactraceWarning,
            stacklevel=3,
        )
    return [tokenize_query(tokenizer, q, max_length) for q in joined]
