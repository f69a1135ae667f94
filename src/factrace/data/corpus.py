"""The training corpus: streamed in global row order, sized, and validated.

Rows are numbered 0, 1, 2, ... across the shards of :func:`~factrace.data.shards.corpus_shards`
in order, so parallel workers can each read a contiguous range ``[start, stop)`` with
:func:`iter_corpus` and together cover the corpus exactly once. A JSON Lines row is a non-blank
line; blank lines are not rows.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from factrace.data.jsonl import PathLike, shown
from factrace.data.records import Passage
from factrace.data.shards import Shard, corpus_shards, read_shard, shard_rows
from factrace.data.sources import Source
from factrace.errors import FactraceError


@dataclass(frozen=True)
class ShardInfo:
    """One corpus file and its number of rows."""

    path: str
    format: str
    n_rows: int


@dataclass(frozen=True)
class CorpusInfo:
    """What a full validation pass learned about a corpus.

    Attributes:
        n_rows: number of passages.
        n_chars: total length of all texts, in characters.
        n_empty: passages whose text is the empty string (they carry no training signal).
        shards: the files, in global row order, with their row counts.
    """

    n_rows: int
    n_chars: int
    n_empty: int
    shards: tuple[ShardInfo, ...]


def iter_corpus(path: PathLike | Source, *, start: int = 0, stop: int | None = None) -> Iterator[Passage]:
    """Stream the passages of rows ``[start, stop)`` (0-based, global across shards).

    Memory stays bounded whatever the corpus size. Rows are validated as they are read; rows
    outside the range are skipped without being parsed: Parquet row groups and Arrow batches
    by their metadata, JSON Lines by counting lines. ``stop=None`` reads to the end; a range past the end is
    cut short, as a slice would be. Errors about the path itself are raised at once, errors in
    rows when the iteration reaches them.

    Raises:
        FactraceError: a missing path, or a malformed row (the message names file and line).
    """
    return (passage for _, _, passage in iter_located(path, start=start, stop=stop))


def iter_located(
    path: PathLike | Source, *, start: int = 0, stop: int | None = None
) -> Iterator[tuple[Shard, int, Passage]]:
    """As :func:`iter_corpus`, yielding ``(shard, number, passage)``.

    ``number`` is the passage's 1-based line (JSON Lines) or row number in its shard, for error
    messages: ``shard.where(number)``.
    """
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
    return _located(corpus_shards(path), start, stop)


def _located(
    shards: list[Shard], start: int, stop: int | None
) -> Iterator[tuple[Shard, int, Passage]]:
    offset = 0  # global index of the current shard's first row
    for shard in shards:
        if stop is not None and offset >= stop:
            return
        if start > offset:
            size = shard_rows(shard)
            if start >= offset + size:
                offset += size
                continue
        local_stop = None if stop is None else stop - offset
        rows = read_shard(shard, max(start - offset, 0), local_stop)
        while True:
            try:
                number, passage = next(rows)
            except StopIteration as done:
                offset += done.value
                break
            yield shard, number, passage


def corpus_size(path: PathLike | Source) -> int:
    """The number of passages, from metadata where the format has it, else by counting lines."""
    return sum(shard_rows(shard) for shard in corpus_shards(path))


def validate_corpus(path: PathLike | Source) -> CorpusInfo:
    """Read the whole corpus once, checking every row and that ids are unique.

    Ids are kept as 8-byte digests (8 bytes per row); only if two digests collide is the corpus
    read a second time, to find and name the first repeated id, or to clear a hash collision.

    Raises:
        FactraceError: a malformed row, a repeated id (naming both places) or an empty corpus.
    """
    shards = corpus_shards(path)
    digests = array("Q")
    rows = dict.fromkeys(shards, 0)
    n_chars = n_empty = 0
    for shard, _, passage in _located(shards, 0, None):
        digests.append(id_digest(passage.id))
        rows[shard] += 1
        n_chars += len(passage.text)
        n_empty += not passage.text
    if not digests:
        raise FactraceError(f'{path}: corpus is empty (expected rows with "id" and "text")')
    ordered = np.sort(np.frombuffer(digests, dtype=np.uint64))
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if repeated.size:
        _raise_first_duplicate(shards, set(repeated.tolist()))
    info = tuple(ShardInfo(str(shard.path), shard.format, count) for shard, count in rows.items())
    return CorpusInfo(n_rows=len(digests), n_chars=n_chars, n_empty=n_empty, shards=info)


def id_digest(passage_id: str) -> int:
    """A passage id's 8-byte digest (blake2b), for compact id sets and look-ups."""
    data = passage_id.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _raise_first_duplicate(shards: list[Shard], suspects: set[int]) -> None:
    """Second pass: raise for the first id seen twice among those whose digest repeats."""
    first: dict[str, tuple[Shard, int]] = {}
    for shard, number, passage in _located(shards, 0, None):
        if id_digest(passage.id) not in suspects:
            continue
        if passage.id in first:
            where = _earlier(*first[passage.id], shard)
            raise FactraceError(
                f"{shard.where(number)}: duplicate id {shown(passage.id)} (first seen {where}); "
                "passage ids must be unique"
            )
        first[passage.id] = (shard, number)


def _earlier(shard: Shard, number: int, current: Shard) -> str:
    """``on line 3`` within the same JSON Lines file, else ``at file:3`` / ``at file: row 3``."""
    if shard == current:
        return f"on line {number}" if shard.format == "jsonl" else f"at row {number}"
    return f"at {shard.where(number)}"
