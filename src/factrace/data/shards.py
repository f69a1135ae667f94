"""Corpus shards: finding them and streaming rows out of each, whatever its format.

A corpus (or query set) path is one of

- a JSON Lines file (``*.jsonl``, ``*.ndjson``, anything else not listed below; ``*.gz`` is
  gunzipped): one object per line with ``id`` (string or integer) and ``text`` (string);
- a Parquet file (``*.parquet``) or an Arrow IPC file (``*.arrow``, the stream or the file
  format) with columns ``id`` and ``text`` (other columns are ignored and never read);
- a directory saved by ``datasets.Dataset.save_to_disk`` (``state.json`` + Arrow files);
- a directory of shards: its ``*.jsonl``, ``*.jsonl.gz``, ``*.ndjson``, ``*.parquet`` and
  ``*.arrow`` files, in order of file name. Names starting with ``.`` or ``_`` are skipped.

Fields kept under other names are read through a :class:`~factrace.data.sources.Source`
(``Source(path, {"text": "body"})``); each shard carries the renames of its source.

Readers stream: JSON Lines line by line, Parquet in small record batches, Arrow one record
batch at a time, so memory does not grow with the corpus. Rows are numbered from 1 in error
messages: the line number for JSON Lines (blank lines are skipped but counted), the row number
otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factrace.data.jsonl import (
    PathLike,
    as_id,
    as_text,
    count_lines,
    iter_lines,
    located_error,
    parse_line,
    shown,
)
from factrace.data.records import Passage
from factrace.data.sources import CORPUS_FIELDS, FIELD_OPTIONS, Source, as_source
from factrace.errors import FactraceError, one_line

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
_KINDS = {"id": "string or integer", "str": "string"}

#: What a shard reader yields, ``(number, passage)``, and returns: the rows it went through.
PassageStream = Generator[tuple[int, Passage], None, int]
#: What :func:`read_rows` yields, ``(number, values)``, and returns.
RowStream = Generator[tuple[int, tuple[Any, ...]], None, int]


@dataclass(frozen=True)
class Shard:
    """One corpus file; ``format`` is ``"jsonl"``, ``"parquet"`` or ``"arrow"``; ``renamed``:
    the ``(field, column)`` pairs of its :class:`~factrace.data.sources.Source`."""

    path: Path
    format: str
    renamed: tuple[tuple[str, str], ...] = ()

    def where(self, number: int) -> str:
        """How an error names row ``number`` (1-based): ``file:17`` or ``file: row 17``."""
        return f"{self.path}:{number}" if self.format == "jsonl" else f"{self.path}: row {number}"

    def column(self, name: str) -> str:
        """The column (JSON Lines: the key) that holds field ``name``."""
        return dict(self.renamed).get(name, name)


def shard_format(name: str) -> str | None:
    """The shard format a file name implies in a directory of shards, or ``None``."""
    for suffix, kind in _SHARD_SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    return None


def corpus_shards(path: PathLike | Source) -> list[Shard]:
    """The shards of the corpus at ``path``, in global row order (see the module docstring)."""
    source = as_source(path)
    return [Shard(path, kind, source.renamed) for path, kind in _files(Path(source.path))]


def _files(path: Path) -> list[tuple[Path, str]]:
    if not path.exists():
        raise FactraceError(f"{path}: no such file or directory")
    if not path.is_dir():
        return [(path, shard_format(path.name) or "jsonl")]
    if (path / "dataset_dict.json").is_file():
        splits = sorted(child.name for child in path.iterdir() if child.is_dir())
        raise FactraceError(
            f"{path}: is a Hugging Face DatasetDict with splits {', '.join(splits) or '(none)'}; "
            f"pass one split's directory, e.g. {path / (splits[0] if splits else 'train')}"
        )
    if (path / "state.json").is_file():
        return _saved_dataset_files(path)
    files = [
        (child, kind)
        for child in sorted(path.iterdir(), key=lambda child: child.name)
        if child.name[:1] not in (".", "_")
        and (kind := shard_format(child.name)) is not None
        and child.is_file()
    ]
    if not files:
        raise FactraceError(
            f"{path}: no corpus files in this directory (expected *.jsonl, *.jsonl.gz, *.parquet "
            "or *.arrow shards, or a dataset saved with datasets' save_to_disk)"
        )
    return files


def _saved_dataset_files(path: Path) -> list[tuple[Path, str]]:
    """The Arrow files of a ``save_to_disk`` directory, in the order ``state.json`` lists them."""
    state_path = path / "state.json"
    expected = "expected a dataset saved with datasets' Dataset.save_to_disk"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        files = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FactraceError(
            f"{state_path}: cannot read its list of data files ({one_line(error)}); {expected}"
        ) from None
    for name in files:
        if not (path / name).is_file():
            raise FactraceError(f"{path / name}: listed in {state_path} but missing; {expected}")
    return [(path / name, "arrow") for name in files]


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
    except (pa.ArrowException, OSError, UnicodeDecodeError) as error:
        raise _unreadable(shard, error) from None


def read_shard(shard: Shard, start: int = 0, stop: int | None = None) -> PassageStream:
    """Stream ``(number, passage)`` for the shard's rows ``[start, stop)`` (0-based).

    ``number`` is the 1-based line (JSON Lines) or row number used in error messages. Returns
    the number of rows gone through: the shard's row count when read to the end, else ``stop``.
    """
    rows = read_rows(shard, CORPUS_FIELDS, start, stop)
    while True:
        try:
            number, (passage_id, text) = next(rows)
        except StopIteration as done:
            return done.value
        yield number, Passage(passage_id, text)


def read_rows(shard: Shard, fields: Mapping[str, str], start: int = 0,
              stop: int | None = None) -> RowStream:
    """Stream ``(number, values)`` for rows ``[start, stop)``: the values of ``fields`` (name →
    ``"id"`` or ``"str"``, see :data:`~factrace.data.sources.CORPUS_FIELDS`), each read from its
    column and checked (an id as a string). Returns as :func:`read_shard`.

    Raises:
        FactraceError: a missing or mistyped column (naming the columns there are), a null,
            a malformed line.
    """
    if shard.format == "jsonl":
        return (yield from _read_jsonl(shard, fields, start, stop))
    import pyarrow as pa

    try:
        if shard.format == "parquet":
            return (yield from _read_parquet(shard, fields, start, stop))
        return (yield from _read_arrow(shard, fields, start, stop))
    except (pa.ArrowException, OSError, UnicodeDecodeError) as error:
        raise _unreadable(shard, error) from None


def iter_records(path: PathLike | Source) -> Iterator[dict[str, Any]]:
    """Every row of every shard as a dict of all its fields (columns), in order: for small
    tables such as queries, whose fields beyond the required ones are shown."""
    for shard in corpus_shards(path):
        if shard.format == "jsonl":
            for number, raw in iter_lines(shard.path):
                yield parse_line(shard.where(number), raw)
            continue
        import pyarrow as pa

        try:
            if shard.format == "parquet":
                with _open_parquet(shard.path) as parquet:
                    for batch in parquet.iter_batches(batch_size=_BATCH_ROWS):
                        yield from batch.to_pylist()
                continue
            _, _, batches = _arrow_batches(shard.path, 0)
            with closing(batches):
                for batch in batches:
                    yield from batch.to_pylist()
        except (pa.ArrowException, OSError, UnicodeDecodeError) as error:
            raise _unreadable(shard, error) from None


def _open_parquet(path: Path) -> pq.ParquetFile:
    """Open a Parquet file for streaming: no pre-buffering of whole row groups."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, buffer_size=_READ_BUFFER, pre_buffer=False)


def _unreadable(shard: Shard, error: Exception) -> FactraceError:
    kind = "a Parquet" if shard.format == "parquet" else "an Arrow"
    return FactraceError(f"{shard.path}: not readable as {kind} file ({one_line(error)})")


def _object_hint(shard: Shard, fields: Mapping[str, str]) -> str:
    """``a JSON object with "id" and "text"``, in the shard's own column names."""
    names = [f'"{shard.column(name)}"' for name in fields]
    return "a JSON object with " + (", ".join(names[:-1]) + " and " + names[-1])


def _read_jsonl(shard: Shard, fields: Mapping[str, str], start: int, stop: int | None
                ) -> RowStream:
    """JSON Lines rows ``[start, stop)``; rows before ``start`` are counted, not parsed."""
    row = 0
    for number, raw in iter_lines(shard.path):
        if stop is not None and row >= stop:
            return row
        if row >= start:
            yield number, line_values(shard, fields, shard.where(number), raw)
        row += 1
    return row


def line_values(shard: Shard, fields: Mapping[str, str], where: str, raw: bytes
                ) -> tuple[Any, ...]:
    """The values of ``fields`` in one JSON Lines row; ``where`` (``"file:line"``) prefixes any
    error. A missing key is named with the keys the line has."""
    hint = _object_hint(shard, fields)
    expected = f"each line must be {hint}"
    value = parse_line(where, raw, hint)
    values = []
    for name, kind in fields.items():
        key = shard.column(name)
        if key not in value:
            present = ", ".join(shown(k) for k in list(value)[:8]) or "none"
            present += ", ..." if len(value) > 8 else ""
            raise located_error(where, f'missing field "{key}"',
                                f"the line has: {present}; {expected}")
        if kind == "id":
            values.append(as_id(value[key], key, where, expected))
        else:
            values.append(as_text(value[key], key, where, expected))
    return tuple(values)


def passage_from_line(where: str, raw: bytes, shard: Shard | None = None) -> Passage:
    """One JSON Lines corpus row; ``where`` (``"file:line"``) prefixes any error; ``shard``:
    the file it is read from, for its column names."""
    shard = shard or Shard(Path(where), "jsonl")
    passage_id, text = line_values(shard, CORPUS_FIELDS, where, raw)
    return Passage(passage_id, text)


def _first_chunk(sizes: Iterable[int], start: int) -> tuple[int, int]:
    """The first of consecutive chunks of rows (row groups, record batches) of ``sizes`` that
    holds row ``start``, and the row it begins at: ``(index, offset)``; past the last chunk,
    ``(number of chunks, rows in all)``. Sizes are read only up to that chunk."""
    index = offset = 0
    for size in sizes:
        if offset + size > start:
            break
        offset += size
        index += 1
    return index, offset


def _read_parquet(shard: Shard, fields: Mapping[str, str], start: int, stop: int | None
                  ) -> RowStream:
    """Parquet rows ``[start, stop)``, skipping whole row groups before ``start``."""
    with _open_parquet(shard.path) as parquet:
        columns = _check_schema(shard, parquet.schema_arrow, fields)
        metadata = parquet.metadata
        first_group, offset = _first_chunk(
            (metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)), start)
        groups = list(range(first_group, metadata.num_row_groups))
        if not groups:
            return offset
        batches = parquet.iter_batches(
            batch_size=_BATCH_ROWS, row_groups=groups, columns=columns, use_threads=False
        )
        return (yield from _values(shard, fields, _released(batches), start, stop, offset))


def _released(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``batches``, the memory pool asked to return what it no longer uses after each: Arrow's
    default allocator keeps freed pages for a while, and the Parquet decoder frees many."""
    import pyarrow as pa

    pool = pa.default_memory_pool()
    for batch in batches:
        yield batch
        pool.release_unused()


def _read_arrow(shard: Shard, fields: Mapping[str, str], start: int, stop: int | None
                ) -> RowStream:
    """Arrow IPC rows ``[start, stop)``: batches before ``start`` are skipped by their
    metadata, the others read one at a time."""
    schema, offset, batches = _arrow_batches(shard.path, start)
    with closing(batches):
        _check_schema(shard, schema, fields)
        return (yield from _values(shard, fields, batches, start, stop, offset))


def _arrow_batches(path: Path, start: int
                   ) -> tuple[pa.Schema, int, Generator[pa.RecordBatch, None, None]]:
    """An Arrow IPC file's schema, the index of the first row of the batch holding row
    ``start``, and the record batches from that one on.

    Batches before it are counted in a memory map, from their metadata: their data is not
    touched. The batches read are read from the file one at a time, into memory freed with
    each (a memory map would keep every page read mapped, and so resident, to the end).
    A stream with dictionary batches is read memory-mapped.
    """
    import pyarrow as pa
    import pyarrow.ipc

    with pa.memory_map(str(path), "r") as mapped:
        try:
            messages = pyarrow.ipc.MessageReader.open_stream(mapped)
            schema = pyarrow.ipc.read_schema(messages.read_next_message())
        except (pa.ArrowInvalid, StopIteration):
            return _arrow_file_batches(path, start)
        offset, position = 0, mapped.tell()
        while True:
            position = mapped.tell()
            try:
                message = messages.read_next_message()
            except StopIteration:
                break
            if message.type != "record batch":
                return schema, 0, _mapped_stream_batches(path)
            size = pyarrow.ipc.read_record_batch(message, schema).num_rows
            if offset + size > start:
                break
            offset += size
    return schema, offset, _stream_batches(path, schema, position)


def _stream_batches(path: Path, schema: pa.Schema, position: int
                    ) -> Generator[pa.RecordBatch, None, None]:
    """The record batches of an Arrow IPC stream from byte ``position`` on, read one by one."""
    import pyarrow as pa
    import pyarrow.ipc

    with pa.OSFile(str(path), "rb") as handle:
        handle.seek(position)
        for message in pyarrow.ipc.MessageReader.open_stream(handle):
            if message.type == "record batch":
                yield pyarrow.ipc.read_record_batch(message, schema)


def _mapped_stream_batches(path: Path) -> Generator[pa.RecordBatch, None, None]:
    import pyarrow as pa

    with pa.memory_map(str(path), "r") as mapped:
        yield from _ipc_reader(mapped)[1]


def _arrow_file_batches(path: Path, start: int
                        ) -> tuple[pa.Schema, int, Generator[pa.RecordBatch, None, None]]:
    """As :func:`_arrow_batches` for the IPC file format (random access: batches by index)."""
    import pyarrow as pa
    import pyarrow.ipc

    with pa.memory_map(str(path), "r") as mapped:
        reader = pyarrow.ipc.open_file(mapped)
        schema = reader.schema
        first, offset = _first_chunk(
            (reader.get_batch(i).num_rows for i in range(reader.num_record_batches)), start)

    def batches() -> Generator[pa.RecordBatch, None, None]:
        with pa.OSFile(str(path), "rb") as handle:
            reader = pyarrow.ipc.open_file(handle)
            for index in range(first, reader.num_record_batches):
                yield reader.get_batch(index)

    return schema, offset, batches()


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


def columns_needed(shard: Shard, fields: Mapping[str, str]) -> str:
    """``a corpus needs columns "id" (string or integer) and "text" (string)``, in the
    shard's column names, and the options that choose others."""
    what = "a corpus needs" if tuple(fields) == tuple(CORPUS_FIELDS) else "queries need"
    names = [f'"{shard.column(name)}" ({_KINDS[kind]})' for name, kind in fields.items()]
    needed = f"{what} columns {', '.join(names[:-1])} and {names[-1]}"
    options = FIELD_OPTIONS.get(tuple(fields))
    if options:
        needed += f"; {', '.join(options.values())} choose others"
    return needed


def _check_schema(shard: Shard, schema: pa.Schema, fields: Mapping[str, str]) -> list[str]:
    """Each field's column exists exactly once, of its type; returns the columns, in order."""
    columns = []
    for name, kind in fields.items():
        column = shard.column(name)
        indices = schema.get_all_field_indices(column)
        listed = ", ".join(schema.names) or "none"
        if not indices:
            raise FactraceError(f'{shard.path}: missing column "{column}" (columns: {listed}; '
                                f"{columns_needed(shard, fields)})")
        if len(indices) > 1:
            raise FactraceError(f'{shard.path}: column "{column}" appears {len(indices)} times')
        found = schema.field(indices[0]).type
        if not (_is_id if kind == "id" else _is_string)(found):
            raise FactraceError(f'{shard.path}: column "{column}" has type {found}, expected '
                                f"{_KINDS[kind]} (columns: {listed})")
        columns.append(column)
    return columns


def _values(shard: Shard, fields: Mapping[str, str], batches: Iterable[pa.RecordBatch],
            start: int, stop: int | None, offset: int) -> RowStream:
    """Rows ``[start, stop)`` of consecutive batches whose first row has index ``offset``."""
    columns = [(shard.column(name), kind) for name, kind in fields.items()]
    for batch in batches:
        end = offset + batch.num_rows
        low, high = max(start, offset), end if stop is None else min(stop, end)
        if low < high:
            piece = batch.slice(low - offset, high - low)
            values = [piece.column(column).to_pylist() for column, _ in columns]
            for index, row in enumerate(zip(*values, strict=True)):
                if None in row:
                    column = columns[row.index(None)][0]
                    raise FactraceError(f'{shard.where(low + index + 1)}: "{column}" is null '
                                        f'(column "{column}" must have no nulls)')
                yield low + index + 1, tuple(
                    str(value) if kind == "id" else value
                    for value, (_, kind) in zip(row, columns, strict=True))
        offset = end
        if stop is not None and offset >= stop:
            return stop
    return offset
