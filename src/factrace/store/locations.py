"""Where each passage of a corpus is, so that a store reads a passage's text directly.

A store records, for every corpus it encoded (the build's, then each ``index add``'s), a
*location table*: one row per passage in corpus order, ``(file, row, offset)`` — the index of
its corpus file, its row in that file (0-based, blank JSON Lines not counted) and the byte
offset of its line in an uncompressed JSON Lines file (``-1`` for gzip, Parquet and Arrow, read
by row: Parquet by row group, Arrow by record batch, those before the row skipped by their
metadata; gzip by reading up to the row). A corpus read with renamed columns (a
:class:`~factrace.data.sources.Source`) has them recorded with each of its files, so its
passages are read back the same way. Passage ids
are found by their 8-byte digests, sorted (:func:`factrace.data.corpus.id_digest`): 24 bytes a
passage in the table, 16 in the look-up, a few megabytes per million passages, and no text is
held in memory.

Each corpus file is recorded with its size and a sample hash (SHA-256 of its size, first and
last MiB): a file whose size or sample changed since the build is refused with one line naming
it (:meth:`Locations.check`), before any text is read from it.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from factrace.data.corpus import id_digest
from factrace.data.jsonl import shown
from factrace.data.records import Passage
from factrace.data.shards import Shard, corpus_shards, passage_from_line, read_shard
from factrace.data.sources import Source
from factrace.errors import FactraceError

SAMPLE_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"


def file_sample(path: str | Path) -> tuple[int, str]:
    """``(size, sha256 of the size, the first and the last MiB)`` of a file."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        if size > SAMPLE_BYTES:
            f.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            h.update(f.read(SAMPLE_BYTES))
    return size, h.hexdigest()


@dataclass(frozen=True)
class SourceFile:
    """One corpus file as the store saw it; ``columns``: the fields its corpus read under
    other names (``{"text": "body"}``), empty when ``id`` and ``text`` are its own."""

    path: str
    format: str
    size: int
    sample: str
    columns: dict[str, str] = field(default_factory=dict)

    @property
    def shard(self) -> Shard:
        return Shard(Path(self.path), self.format, tuple(sorted(self.columns.items())))

    @property
    def seekable(self) -> bool:
        return self.format == "jsonl" and not self.path.endswith(".gz")

    def to_dict(self) -> dict:
        saved = {"path": self.path, "format": self.format, "size": self.size,
                 "sample": self.sample}
        if self.columns:
            saved["columns"] = dict(self.columns)
        return saved


class Locations:
    """The location table of one corpus (see the module docstring)."""

    def __init__(self, corpus: str, files: list[SourceFile], table: np.ndarray,
                 digests: np.ndarray):
        self.corpus, self.files, self.table = corpus, files, table
        self._order = np.argsort(digests, kind="stable")
        self._sorted = digests[self._order]
        self._checked = False

    def __len__(self) -> int:
        return self.table.shape[0]

    @classmethod
    def build(cls, corpus: str | Source) -> Locations:
        """One pass over ``corpus``: every passage's file, row and offset, and its id's digest
        (a :class:`~factrace.data.sources.Source`'s renamed columns are kept with its files)."""
        shards = corpus_shards(corpus)
        files, rows, digests = [], [], []
        for k, shard in enumerate(shards):
            size, sample = file_sample(shard.path)
            files.append(SourceFile(str(Path(shard.path).resolve()), shard.format, size, sample,
                                    dict(shard.renamed)))
            for row, (offset, passage_id) in enumerate(_ids_with_offsets(shard, files[-1])):
                rows.append((k, row, offset))
                digests.append(id_digest(passage_id))
        table = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        return cls(str(Path(corpus).resolve()), files, table, np.asarray(digests, np.uint64))

    # saving --------------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        digests = np.empty_like(self._sorted)
        digests[self._order] = self._sorted
        return {"table": self.table, "digests": digests}

    def entry(self) -> dict:
        """The manifest's record of this table (its file and checksum are added by the saver)."""
        return {"corpus": self.corpus, "passages": len(self),
                "files": [f.to_dict() for f in self.files]}

    @classmethod
    def from_saved(cls, entry: dict, arrays: dict[str, np.ndarray]) -> Locations:
        files = [SourceFile(**f) for f in entry["files"]]
        return cls(entry["corpus"], files, arrays["table"], arrays["digests"])

    # reading -------------------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse a corpus file that is gone or changed since the store recorded it."""
        if self._checked:
            return
        for f in self.files:
            if not os.path.isfile(f.path):
                raise FactraceError(f"{f.path}: a corpus file of this store is not there; the "
                                    "passages' text cannot be read (restore it, or rebuild the "
                                    "store)")
            size, sample = file_sample(f.path)
            if size != f.size or sample != f.sample:
                change = (f"size {f.size} → {size} bytes" if size != f.size
                          else "same size, other contents")
                raise FactraceError(f"{f.path}: this corpus file changed since the store was "
                                    f"built ({change}); restore it or rebuild the store")
        self._checked = True

    def position(self, passage_id: str) -> int | None:
        """The passage's index in the corpus (a digest match, confirmed on reading), or ``None``."""
        digest = np.uint64(id_digest(passage_id))
        lo = int(np.searchsorted(self._sorted, digest, side="left"))
        hi = int(np.searchsorted(self._sorted, digest, side="right"))
        for k in range(lo, hi):
            index = int(self._order[k])
            if hi - lo == 1 or self.read(index).id == passage_id:
                return index
        return None

    def __contains__(self, passage_id: str) -> bool:
        return self.position(passage_id) is not None

    def read(self, index: int) -> Passage:
        """The passage at corpus position ``index``, read from its file."""
        self.check()
        k, row, offset = (int(x) for x in self.table[index])
        f = self.files[k]
        shard = f.shard
        if offset >= 0:
            with open(f.path, "rb") as handle:
                handle.seek(offset)
                raw = handle.readline()
            if offset == 0 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            return passage_from_line(f"{f.path}:{row + 1}", raw, shard)
        if f.format == "parquet":
            return _parquet_row(shard, row)
        for _, passage in read_shard(shard, row, row + 1):
            return passage
        raise FactraceError(f"{f.path}: has no row {row + 1} any more; rebuild the store")

    def find(self, passage_id: str) -> Passage | None:
        """The passage of this id, or ``None`` when this corpus has none."""
        index = self.position(passage_id)
        if index is None:
            return None
        passage = self.read(index)
        if passage.id != passage_id:
            raise FactraceError(f"{self.corpus}: passage {shown(passage_id)} is not where the "
                                "store recorded it; rebuild the store")
        return passage


def _ids_with_offsets(shard: Shard, source: SourceFile):
    """``(byte offset or -1, id)`` of each row of a shard, in order."""
    if not source.seekable:
        for _, passage in read_shard(shard):
            yield -1, passage.id
        return
    with open(shard.path, "rb") as handle:
        offset, number = 0, 0
        for raw in handle:
            number += 1
            line = raw[len(_BOM):] if number == 1 and raw.startswith(_BOM) else raw
            if line and not line.isspace():
                yield offset, passage_from_line(f"{shard.path}:{number}", line, shard).id
            offset += len(raw)


def _parquet_row(shard: Shard, row: int) -> Passage:
    """Row ``row`` of a Parquet file: its row group only is read."""
    import pyarrow.parquet as pq  # only for Parquet corpora

    with pq.ParquetFile(shard.path) as parquet:
        metadata, start = parquet.metadata, 0
        for group in range(metadata.num_row_groups):
            size = metadata.row_group(group).num_rows
            if row < start + size:
                columns = [shard.column("id"), shard.column("text")]
                table = parquet.read_row_group(group, columns=columns)
                got = table.slice(row - start, 1).to_pylist()[0]
                return Passage(str(got[columns[0]]), got[columns[1]])
            start += size
    raise FactraceError(f"{shard.path}: has no row {row + 1} any more; rebuild the store")


def save_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """The ``.npz`` bytes of a table (written by the store's atomic writer)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def table_problem(entry: dict, arrays: dict[str, np.ndarray]) -> str | None:
    """What makes saved arrays unusable as the table of ``entry`` (its manifest record), or
    ``None``: ``table`` int64 ``[rows, 3]`` whose files are among ``entry["files"]``,
    ``digests`` uint64 ``[rows]``."""
    table, digests = arrays.get("table"), arrays.get("digests")
    if (table is None or digests is None or table.dtype != np.int64 or table.ndim != 2
            or table.shape[1] != 3 or digests.dtype != np.uint64
            or digests.shape != (table.shape[0],)):
        return "holds no location table of the expected shape"
    if table.shape[0] and (table[:, 0].min() < 0 or table[:, 0].max() >= len(entry["files"])):
        return f"names corpus files beyond the {len(entry['files'])} its manifest entry lists"
    return None


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as saved:
        return {k: saved[k] for k in saved.files}
