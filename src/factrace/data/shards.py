"""Corpus shards: finding them and streaming passages out of each, whatever its format.

A corpus path is one of

- a JSON Lines file (``*.jsonl``, ``*.ndjson``, anything else not listed below; ``*.gz`` is
  gunzipped): one object per line with ``id`` (string or integer) and ``text`` (string);
- a Parquet file (``*.parquet``) or an Arrow IPC file (``*.arrow``) with columns ``id`` and
  ``text`` (other columns are ignored and never read);
- a directory saved by ``datasets.Dataset.save_to_disk`` (``state.json`` + Arrow files);
- a directory of shards: its ``*.jsonl``, ``*.jsonl.gz``, ``*.ndjson``, ``*.parquet`` and
  ``*.arrow`` files, in order of file name. Names starting with ``.`` or ``_`` are skipped.

Readers stream: JSON Lines line by line, Parquet in small record batches, Arrow memory-mapped,
so memory does not grow with the corpus. Rows are numbered from 1 in error messages: the line
number for JSON Lines (blank lines are skipped but counted), the row number otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from factrace.data.jsonl import (
    PathLike,
    as_id,
    as_text,
    count_lines,
    field,
    iter_lines,
    parse_line,
)
from factrace.data.records import Passage
from factrace.errors import FactraceError

if TYPE_CHECKING:  # pyarrow is imported by the readers of Parquet and Arrow shards
    import pyarrow as pa
    import pyarrow.parquet as pq

CORPUS_OBJECT = 'a JSON object with "id" and "text"'
CORPUS_EXPECTED = f"each line must be {CORPUS_OBJECT}"
COLUMNS_EXPECTED = 'a corpus needs columns "id" (string or integer) and "text" (string)'

_SHARD_SUFFIXES = {
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
    ".ndjson": "jsonl",
    ".ndjson.gz": "jsonl",
    ".parquet": "parquet",
    ".arrow": "arrow",
}
_BATCH_ROWS = 1024  # Parquet rows decoded at a time: bounds memory for long documents.
_READ_BUFFER = 1 << 20  # Parquet column chunks are read through a buffer this size, never whole.

#: What a shard reader yields, ``(number, passage)``, and returns: the rows it went through.
PassageStream = Generator[tuple[int, Passage], None, int]


@dataclass(frozen=True)
class Shard:
    """One corpus file; ``format`` is ``"jsonl"``, ``"parquet"`` or ``"arrow"``."""

    path: Path
    format: str

    def where(self, number: int) -> str:
        """How an error names row ``number`` (1-based): ``file:17`` or ``file: row 17``."""
        return f"{self.path}:{number}" if self.format == "jsonl" else f"{self.path}: row {number}"


def shard_format(name: str) -> str | None:
    """The shard format a file name implies in a directory of shards, or ``None``."""
    for suffix, kind in _SHARD_SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    return None


def corpus_shards(path: PathLike) -> list[Shard]:
    """The shards of the corpus at ``path``, in global row order (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FactraceError(f"{path}: no such file or directory")
    if not path.is_dir():
        return [Shard(path, shard_format(path.name) or "jsonl")]
    if (path / "dataset_dict.json").is_file():
        splits = sorted(child.name for child in path.iterdir() if child.is_dir())
        raise FactraceError(
            f"{path}: is a Hugging Face DatasetDict with splits {', '.join(splits) or '(none)'}; "
            f"pass one split's directory, e.g. {path / (splits[0] if splits else 'train')}"
        )
    if (path / "state.json").is_file():
        return _saved_dataset_shards(path)
    shards = [
        Shard(child, kind)
        for child in sorted(path.iterdir(), key=lambda child: child.name)
        if child.name[:1] not in (".", "_")
        and (kind := shard_format(child.name)) is not None
        and child.is_file()
    ]
    if not shards:
        raise FactraceError(
            f"{path}: no corpus files in this directory (expected *.jsonl, *.jsonl.gz, *.parquet "
            "or *.arrow shards, or a dataset saved with datasets' save_to_disk)"
        )
    return shards


def _saved_dataset_shards(path: Path) -> list[Shard]:
    """The Arrow files of a ``save_to_disk`` directory, in the order ``state.json`` lists them."""
    state_path = path / "state.json"
    expected = "expected a dataset saved with datasets' Dataset.save_to_disk"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        files = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FactraceError(
            f"{state_path}: cannot read its list of data files ({error}); {expected}"
        ) from None
    shards = [Shard(path / name, "arrow") for name in files]
    for shard in shards:
        if not shard.path.is_file():
            raise FactraceError(f"{shard.path}: listed in {state_path} but missing; {expected}")
    return shards


def shard_rows(shard: Shard) -> int:
    """The number of rows of a shard: from metadata for Parquet and Arrow, a line count otherwise."""
    if shard.format == "jsonl":
        return count_lines(shard.path)
    import pyarrow as pa

    try:
        if shard.format == "parquet":
            with _open_parquet(shard.path) as parquet:
                return parquet.metadata.num_rows
        with pa.memory_map(str(shard.path), "r") as source:
            return sum(batch.num_rows for batch in _ipc_reader(source)[1])
    except (pa.ArrowException, OSError) as error:
        raise _unreadable(shard, error) from None


def read_shard(shard: Shard, start: int = 0, stop: int | None = None) -> PassageStream:
    """Stream ``(number, passage)`` for the shard's rows ``[start, stop)`` (0-based).

    ``number`` is the 1-based line (JSON Lines) or row number used in error messages. Returns
    the number of rows gone through: the shard's row count when read to the end, else ``stop``.
    """
    if shard.format == "jsonl":
        return (yield from _read_jsonl(shard, start, stop))
    import pyarrow as pa

    try:
        if shard.format == "parquet":
            return (yield from _read_parquet(shard, start, stop))
        return (yield from _read_arrow(shard, start, stop))
    except (pa.ArrowException, OSError) as error:
        raise _unreadable(shard, error) from None


def _open_parquet(path: Path) -> pq.ParquetFile:
    """Open a Parquet file for streaming: no pre-buffering of whole row groups."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, buffer_size=_READ_BUFFER, pre_buffer=False)


def _unreadable(shard: Shard, error: Exception) -> FactraceError:
    kind = "a Parquet" if shard.format == "parquet" else "an Arrow"
    return FactraceError(f"{shard.path}: not readable as {kind} file ({error})")


def _read_jsonl(shard: Shard, start: int, stop: int | None) -> PassageStream:
    """JSON Lines rows ``[start, stop)``; rows before ``start`` are counted, not parsed."""
    row = 0
    for number, raw in iter_lines(shard.path):
        if stop is not None and row >= stop:
            return row
        if row >= start:
            yield number, passage_from_line(shard.where(number), raw)
        row += 1
    return row


def passage_from_line(where: str, raw: bytes) -> Passage:
    """One JSON Lines corpus row; ``where`` (``"file:line"``) prefixes any error."""
    value = parse_line(where, raw, CORPUS_OBJECT)
    passage_id = as_id(field(value, "id", where, CORPUS_EXPECTED), "id", where, CORPUS_EXPECTED)
    text = as_text(field(value, "text", where, CORPUS_EXPECTED), "text", where, CORPUS_EXPECTED)
    return Passage(passage_id, text)


def _read_parquet(shard: Shard, start: int, stop: int | None) -> PassageStream:
    """Parquet rows ``[start, stop)``, skipping whole row groups before ``start``."""
    with _open_parquet(shard.path) as parquet:
        _check_schema(shard, parquet.schema_arrow)
        metadata = parquet.metadata
        first_group, offset = 0, 0
        while first_group < metadata.num_row_groups:
            size = metadata.row_group(first_group).num_rows
            if offset + size > start:
                break
            offset += size
            first_group += 1
        groups = list(range(first_group, metadata.num_row_groups))
        if not groups:
            return offset
        batches = parquet.iter_batches(
            batch_size=_BATCH_ROWS, row_groups=groups, columns=["id", "text"]
        )
        return (yield from _passages(shard, batches, start, stop, offset))


def _read_arrow(shard: Shard, start: int, stop: int | None) -> PassageStream:
    """Arrow IPC rows ``[start, stop)``, memory-mapped: skipped batches are never decoded."""
    import pyarrow as pa

    with pa.memory_map(str(shard.path), "r") as source:
        schema, batches = _ipc_reader(source)
        _check_schema(shard, schema)
        return (yield from _passages(shard, batches, start, stop, 0))


def _ipc_reader(source: pa.NativeFile) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Schema and record batches of an Arrow IPC stream (what ``save_to_disk`` writes) or file."""
    import pyarrow as pa
    import pyarrow.ipc

    try:
        stream = pyarrow.ipc.open_stream(source)
        return stream.schema, iter(stream)
    except pa.ArrowInvalid:
        source.seek(0)
        reader = pyarrow.ipc.open_file(source)
        return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))


def _is_string(kind: pa.DataType) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return (
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    )


def _is_id(kind: pa.DataType) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return _is_string(kind) or pa.types.is_integer(kind)


def _check_schema(shard: Shard, schema: pa.Schema) -> None:
    """Columns ``id`` (string or integer) and ``text`` (string) exist exactly once."""
    for name, accepts, wanted in (
        ("id", _is_id, "string or integer"),
        ("text", _is_string, "string"),
    ):
        indices = schema.get_all_field_indices(name)
        if not indices:
            columns = ", ".join(schema.names) or "none"
            message = (
                f'{shard.path}: missing column "{name}" (columns: {columns}; {COLUMNS_EXPECTED})'
            )
            raise FactraceError(message)
        if len(indices) > 1:
            raise FactraceError(f'{shard.path}: column "{name}" appears {len(indices)} times')
        kind = schema.field(indices[0]).type
        if not accepts(kind):
            raise FactraceError(f'{shard.path}: column "{name}" has type {kind}, expected {wanted}')


def _passages(
    shard: Shard, batches: Iterable[pa.RecordBatch], start: int, stop: int | None, offset: int
) -> PassageStream:
    """Rows ``[start, stop)`` of consecutive batches whose first row has index ``offset``."""
    for batch in batches:
        end = offset + batch.num_rows
        low, high = max(start, offset), end if stop is None else min(stop, end)
        if low < high:
            piece = batch.slice(low - offset, high - low)
            ids = piece.column("id").to_pylist()
            texts = piece.column("text").to_pylist()
            for index, (passage_id, text) in enumerate(zip(ids, texts, strict=True)):
                number = low + index + 1
                if passage_id is None or text is None:
                    name = "id" if passage_id is None else "text"
                    message = (
                        f'{shard.where(number)}: "{name}" is null ({COLUMNS_EXPECTED}, no nulls)'
                    )
                    raise FactraceError(message)
                yield number, Passage(str(passage_id), text)
        offset = end
        if stop is not None and offset >= stop:
            return stop
    return offset
