"""Approximate retrieval with FAISS (inner product), and its recall against exact search.

An :class:`ApproxIndex` is built from a FAISS factory spec such as ``"IVF256,Flat"`` (inverted
lists over full vectors) or ``"IVF256,PQ16"`` (inverted lists over 16-byte product-quantized
codes): trained on a random sample of stored rows, then filled with every row, chunk by chunk.
FAISS labels are global row positions, mapped back to example ids. Opponents (bottom-k) are the
top-k of the negated queries. Approximate results are only trusted with their measured
:func:`recall_at_k` against :func:`factrace.search.topk.exact_search`.

:meth:`ApproxIndex.save` keeps an index in its store (``index approx``), :meth:`ApproxIndex.load`
checks it, and :func:`extend_saved` adds the codes of rows appended since (``index add``): the
first stage of :mod:`factrace.search.twostage`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from factrace.data.io import Ranking
from factrace.errors import FactraceError
from factrace.search.fastscan import MAGIC, GroupedFastScan, fast_scan_holding
from factrace.store import manifest as mf
from factrace.store.encodings import EncodingStore

#: The saved index's file name (by the rows it covers), and its manifest key.
INDEX_FILE = "approx-{rows:010d}.faiss"
INDEX_GLOB = "approx-*.faiss"
MANIFEST_KEY = "approx"
#: FAISS wants at least this many training points per IVF centroid.
MIN_POINTS_PER_LIST = 39
#: Default cap on the float32 training sample.
TRAIN_BYTES = 2 << 30

Source = EncodingStore | Sequence[tuple[Sequence[str], np.ndarray]]


def _shards(source: Source) -> Iterator[tuple[Sequence[str], np.ndarray]]:
    return source.iter_shards() if isinstance(source, EncodingStore) else iter(source)


def _rows(source: Source) -> int:
    return (
        source.n_rows if isinstance(source, EncodingStore) else sum(len(ids) for ids, _ in source)
    )


def supported_spec(spec: str, n_train: int) -> tuple[str, list[str]]:
    """``spec`` cut to what ``n_train`` training rows support, and what was cut, in words.

    k-means wants :data:`MIN_POINTS_PER_LIST` points per centroid (FAISS prints a warning per
    clustering otherwise, and the centroids are noise). So ``IVF{nlist}`` is lowered to
    ``n_train // 39`` lists (at least 1), and ``PQ{m}x{nbits}`` (8 bits when not given) to the
    bits whose ``2^nbits`` centroids per sub-quantizer have 39 points each; with fewer than 78
    rows the codes stay uncompressed (``Flat``); fast-scan codes (``PQ{m}x4fs``, 4 bits only)
    become 4-bit scalar codes (``SQ4``) with fewer than 624.
    """
    notes = []
    match = re.search(r"IVF(\d+)", spec)
    if match is not None:
        nlist = int(match.group(1))
        fitting = max(1, n_train // MIN_POINTS_PER_LIST)
        if nlist > fitting:
            lists = "list" if fitting == 1 else "lists"
            notes.append(f"{n_train} training rows support {fitting} IVF {lists}, not {nlist}")
            spec = spec[: match.start(1)] + str(fitting) + spec[match.end(1) :]
    match = re.search(r"PQ(\d+)(?:x(\d+))?(fs)?", spec)
    if match is not None:
        m, nbits = int(match.group(1)), int(match.group(2) or 8)
        fast_scan = match.group(3) is not None
        fitting = (n_train // MIN_POINTS_PER_LIST).bit_length() - 1  # floor(log2), -1 for 0
        if nbits > fitting:
            if fast_scan:  # 4 bits only: 4-bit scalar codes train on any number of rows
                notes.append(f"{n_train} training rows are too few for PQ{m}x{nbits}fs codes: "
                             "4-bit scalar codes (SQ4) instead")
                replacement = "SQ4"
            elif fitting < 1:
                notes.append(f"{n_train} training rows are too few for PQ{m} codes: kept Flat")
                replacement = "Flat"
            else:
                notes.append(f"{n_train} training rows support {fitting}-bit PQ codes, not "
                             f"{nbits}-bit")
                replacement = f"PQ{m}x{fitting}"
            spec = spec[: match.start()] + replacement + spec[match.end() :]
    return spec, notes


def _check_pq(spec: str, dim: int) -> None:
    match = re.search(r"PQ(\d+)", spec)
    if match is not None and dim % int(match.group(1)):
        m = int(match.group(1))
        raise FactraceError(
            f"FAISS spec {spec!r}: PQ{m} needs a dimension divisible by {m}, got {dim}"
        )


def _factory(dim: int, spec: str) -> faiss.Index | GroupedFastScan:
    """An empty inner-product index of ``spec`` (checked first); ``PQ{m}x4fs`` is a
    :class:`~factrace.search.fastscan.GroupedFastScan` (FAISS's fast scan in groups)."""
    _check_pq(spec, dim)
    match = re.fullmatch(r"PQ(\d+)x4fs", spec)
    if match is not None:
        return GroupedFastScan.empty(dim, int(match.group(1)))
    try:
        return faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise FactraceError(f"FAISS cannot build index {spec!r}: {str(e).splitlines()[-1]}") from e


def _trained(spec: str, rows: np.ndarray, seed: int
             ) -> tuple[faiss.Index | GroupedFastScan, str, list[str]]:
    """``spec`` checked, cut by :func:`supported_spec` to the rows, built and trained on
    ``rows`` (float32 ``[n, d]``): the index, the spec built, what was cut."""
    _check_pq(spec, rows.shape[1])
    spec, notes = supported_spec(spec, rows.shape[0])
    index = _factory(rows.shape[1], spec)
    _configure_training(index, seed)
    index.train(rows)
    return index, spec, notes


def _sample(source: Source, positions: np.ndarray, dim: int) -> np.ndarray:
    """Rows at sorted global ``positions``, float32 ``[len(positions), dim]``."""
    out = np.empty((len(positions), dim), dtype=np.float32)
    start = filled = 0
    for _, encodings in _shards(source):
        stop = start + encodings.shape[0]
        local = positions[(positions >= start) & (positions < stop)] - start
        out[filled : filled + len(local)] = np.asarray(encodings[local], dtype=np.float32)
        filled += len(local)
        start = stop
    return out


def _configure_training(index: faiss.Index, seed: int) -> None:
    """Seed k-means, and skip IVF-PQ's polysemous training (it only serves Hamming-filtered
    search, which is not used, and costs 10-30x the rest of training)."""
    if isinstance(index, GroupedFastScan):
        for group in index.groups:
            group.pq.cp.seed = seed
        return
    ivf = _ivf(index)
    if ivf is None:
        return
    ivf = faiss.downcast_index(ivf)
    ivf.cp.seed = seed
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False
    if hasattr(ivf, "pq"):
        ivf.pq.cp.seed = seed


class ApproxIndex:
    """A FAISS inner-product index over a store's rows, answering with example ids."""

    def __init__(self, index: faiss.Index, ids: Sequence[str], spec: str,
                 notes: Sequence[str] = ()):
        if index.ntotal != len(ids):
            raise FactraceError(
                f"FAISS index holds {index.ntotal} rows but there are {len(ids)} ids; rebuild it"
            )
        self.index = index
        self.ids = list(ids)
        self.spec = spec
        """The index actually built (see :func:`supported_spec`)."""
        self.notes = list(notes)
        """How it differs from the spec asked for, in words (empty when it does not)."""
        self.trained_rows: int | None = None
        """Rows the index was trained on (None: not known)."""

    def describe(self) -> str:
        """One line naming the index built, its probing, and what was changed from the request."""
        line = f"FAISS {self.spec} over {self.index.ntotal} rows"
        if self.nlist is not None:
            line += f", {self.nprobe} of {self.nlist} lists probed per query"
        return line + (f" ({'; '.join(self.notes)})" if self.notes else "")

    @classmethod
    def build(
        cls,
        source: Source,
        spec: str = "IVF256,Flat",
        nprobe: int = 16,
        train_rows: int | None = None,
        seed: int = 0,
        chunk_rows: int = 16384,
    ) -> ApproxIndex:
        """Train ``spec`` on ``train_rows`` random rows and add every row of ``source`` (an
        :class:`EncodingStore` or a list of ``(ids, encodings)``) in chunks of ``chunk_rows``.

        The training rows are held as float32 (``train_rows · dim · 4`` bytes). By default
        ``max(64·nlist, 10000)`` rows, cut to about 2 GiB but not below 39·nlist, and all rows
        when the store has fewer."""
        n_rows = _rows(source)
        if n_rows == 0:
            raise FactraceError("cannot build an approximate index over an empty store")
        dim = source.dim if isinstance(source, EncodingStore) else next(iter(source))[1].shape[1]
        nlist = int(m.group(1)) if (m := re.search(r"IVF(\d+)", spec)) else 1
        if train_rows is None:
            by_memory = TRAIN_BYTES // (4 * dim)
            train_rows = max(MIN_POINTS_PER_LIST * nlist, min(max(64 * nlist, 10_000), by_memory))
        n_train = min(n_rows, train_rows)
        _check_pq(spec, dim)  # before the sample is read
        rng = np.random.default_rng(seed)
        positions = np.sort(rng.choice(n_rows, size=n_train, replace=False))
        index, spec, notes = _trained(spec, _sample(source, positions, dim), seed)
        ids: list[str] = []
        for shard_ids, encodings in _shards(source):
            ids.extend(shard_ids)
            for start in range(0, encodings.shape[0], chunk_rows):
                chunk = torch.from_numpy(np.array(encodings[start : start + chunk_rows]))
                index.add(np.ascontiguousarray(chunk.float().numpy()))
        approx = cls(index, ids, spec, notes)
        approx.nprobe = nprobe
        approx.trained_rows = int(n_train)
        return approx

    @property
    def nlist(self) -> int | None:
        """Number of inverted lists, or None for an index without them."""
        ivf = _ivf(self.index)
        return None if ivf is None else ivf.nlist

    @property
    def nprobe(self) -> int | None:
        """Inverted lists visited per query (more: slower and closer to exact)."""
        ivf = _ivf(self.index)
        return None if ivf is None else ivf.nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"nprobe must be at least 1, got {value}")
        ivf = _ivf(self.index)
        if ivf is not None:
            ivf.nprobe = min(value, ivf.nlist)

    def search(
        self, queries: torch.Tensor | np.ndarray, k: int, opponents: bool = False,
        query_ids: Sequence[str] | None = None,
    ) -> list[Ranking]:
        """Approximate top-``k`` per query ``[q, d]`` (ids ``query_ids``, default ``"0"``, …);
        with ``opponents``, also bottom-``k`` (searched with the negated queries). Fewer than
        ``k`` come back when the probed lists hold fewer rows."""
        x = np.ascontiguousarray(torch.as_tensor(queries).to(torch.float32).numpy())
        if x.ndim != 2 or x.shape[1] != self.index.d:
            raise FactraceError(f"queries must be [q, {self.index.d}], got {list(x.shape)}")
        if query_ids is None:
            query_ids = [str(i) for i in range(len(x))]
        if len(query_ids) != len(x):
            raise ValueError(f"{len(query_ids)} query ids for {len(x)} queries")
        top = self._search(x, k)
        if not opponents:
            return [Ranking(q, ids, scores.tolist())
                    for q, (ids, scores) in zip(query_ids, top, strict=True)]
        bottom = self._search(-x, k)
        return [
            Ranking(q, ids, scores.tolist(), low_ids, (-low_scores).tolist())
            for q, (ids, scores), (low_ids, low_scores) in zip(query_ids, top, bottom, strict=True)
        ]

    def _search(self, x: np.ndarray, k: int) -> list[tuple[list[str], np.ndarray]]:
        scores, labels = self.index.search(x, k)
        out = []
        for row_scores, row_labels in zip(scores, labels, strict=True):
            found = row_labels >= 0
            out.append(
                ([self.ids[i] for i in row_labels[found]], row_scores[found].astype(np.float32))
            )
        return out

    def save(self, store: EncodingStore,
             record: Callable[[str, Any], None] | None = None) -> dict:
        """Write the index into the store directory (atomically, as ``approx-ROWS.faiss``) and
        record it in the manifest under ``approx`` (file, sha256, spec, rows covered, training
        rows, nprobe); the file of an earlier version is removed after. ``record(key, value)``
        writes the manifest (default: the store's; a writer passes its own). The caller holds
        the store's write lock. Returns the manifest entry."""
        if self.index.ntotal != store.n_rows:
            raise ValueError("this index was not built over this store")
        entry = {"spec": self.spec, "notes": self.notes, "nprobe": self.nprobe,
                 "trained_rows": self.trained_rows}
        return _write(store, self.index, entry, record)

    @classmethod
    def load(cls, store: EncodingStore) -> ApproxIndex:
        """The index saved in ``store`` by :meth:`save`, checked against its checksum and
        required to cover every row of the store; for a compact store, its codec with every
        shard's codes (:class:`Codec`)."""
        if store.compact:
            return Codec.store_index(store)
        entry = store.manifest.get(MANIFEST_KEY)
        rebuild = f"`factrace index approx --index {store.path}`"
        if entry is None:
            raise FactraceError(f"encoding store {store.path} has no approximate index; build "
                                f"one with {rebuild}")
        if entry["rows"] != store.n_rows:
            raise FactraceError(f"the approximate index of {store.path} covers {entry['rows']} "
                                f"of its {store.n_rows} rows; rebuild it with {rebuild}")
        index = _read(store, entry)
        approx = cls(index, store.ids, entry["spec"], entry.get("notes", ()))
        approx.trained_rows = entry.get("trained_rows")
        if entry.get("nprobe"):
            approx.nprobe = entry["nprobe"]
        return approx


class Codec:
    """The codes of a compact store (``index build --compact``): an empty index of a FAISS spec
    trained once on the build's first rows, which turns each shard's rows into codes (FAISS's
    standalone codes, kept per shard as the shard is written). The store's first stage is the
    codec holding every shard's codes (:meth:`store_index`)."""

    def __init__(self, index: faiss.Index, spec: str, notes: Sequence[str] = (),
                 trained_rows: int | None = None):
        self.index, self.spec, self.notes = index, spec, list(notes)
        self.trained_rows = trained_rows

    @classmethod
    def train(cls, rows: np.ndarray, spec: str, seed: int = 0) -> Codec:
        """``spec`` (cut by :func:`supported_spec` to the rows) trained on ``rows`` ``[n, d]``;
        the float32 copy FAISS trains on is ``n · d · 4`` bytes."""
        if len(rows) == 0:
            raise FactraceError("cannot train the codes of a compact store on no rows")
        rows = np.ascontiguousarray(torch.from_numpy(np.asarray(rows)).float().numpy())
        index, spec, notes = _trained(spec, rows, seed)
        return cls(index, spec, notes, len(rows))

    def to_bytes(self) -> bytes:
        return _serialize(self.index)

    @classmethod
    def from_bytes(cls, data: bytes, entry: dict | None = None) -> Codec:
        entry = entry or {}
        return cls(_deserialize(data), entry.get("spec", ""), entry.get("notes", ()),
                   entry.get("trained_rows"))

    def entry(self) -> dict:
        """What the manifest records of the codec (beside its file and checksum)."""
        return {"spec": self.spec, "notes": self.notes, "trained_rows": self.trained_rows,
                "code_bytes": int(self.index.sa_code_size())}

    def encode(self, rows: np.ndarray | torch.Tensor, chunk_rows: int = 16384) -> np.ndarray:
        """The codes of ``rows`` ``[n, d]``: uint8 ``[n, code_bytes]`` (FAISS's standalone
        codes, what a shard of a compact store keeps)."""
        rows = rows if isinstance(rows, torch.Tensor) else torch.from_numpy(np.asarray(rows))
        out = np.empty((rows.shape[0], self.index.sa_code_size()), np.uint8)
        for start in range(0, rows.shape[0], chunk_rows):
            chunk = np.ascontiguousarray(rows[start:start + chunk_rows].float().numpy())
            out[start:start + chunk.shape[0]] = self.index.sa_encode(chunk)
        return out

    def holding(self, codes: np.ndarray) -> faiss.Index:
        """An index of the codec's kind holding ``codes`` (from :meth:`encode`)."""
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        if isinstance(self.index, GroupedFastScan):
            return self.index.holding(codes)
        if isinstance(self.index, faiss.IndexPQFastScan):
            return fast_scan_holding(self.index, codes)
        index = _clone(self.index)
        try:
            index.add_sa_codes(codes)
        except RuntimeError as e:
            raise FactraceError(f"FAISS index {self.spec!r} cannot take stored codes; choose "
                                "PQ, PQ…fs, SQ or Flat codes for a compact store") from e
        return index

    @classmethod
    def load(cls, directory: Path, entry: dict, advice: str) -> Codec:
        """The codec a compact store's manifest ``entry`` records, checked against its
        checksum (``advice``: what the refusal tells the user to do)."""
        path = Path(directory) / entry["file"]
        return cls.from_bytes(_checked_bytes(path, entry["sha256"], advice), entry)

    @staticmethod
    def store_index(store: EncodingStore) -> ApproxIndex:
        """A compact store's first stage: its codec with each shard's codes added, in row
        order (memory: the codes of every row, and one shard's twice)."""
        entry = store.manifest[COMPACT_KEY]
        codec = Codec.load(store.path, entry, f"the compact store {store.path} cannot be "
                                               "searched: rebuild it")
        index = _clone(codec.index)
        for shard in range(store.n_shards):
            part = codec.holding(store.shard_codes(shard))
            # inverted lists keep ids (shifted to global rows); flat codes are numbered in order
            index.merge_from(part, index.ntotal if _ivf(index) is not None else 0)
        approx = ApproxIndex(index, store.ids, entry["spec"], entry.get("notes", ()))
        approx.trained_rows = entry.get("trained_rows")
        return approx


def _ivf(index):
    """The inverted-file part of ``index``, or None (not an IVF index, or not FAISS's own)."""
    if isinstance(index, GroupedFastScan):
        return None
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _serialize(index: faiss.Index | GroupedFastScan) -> bytes:
    if isinstance(index, GroupedFastScan):
        return index.to_bytes()
    return faiss.serialize_index(index).tobytes()


def _deserialize(data: bytes) -> faiss.Index | GroupedFastScan:
    if data.startswith(MAGIC):
        return GroupedFastScan.from_bytes(data)
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def _clone(index: faiss.Index | GroupedFastScan) -> faiss.Index | GroupedFastScan:
    return index.clone() if isinstance(index, GroupedFastScan) else faiss.clone_index(index)


#: A compact store's manifest key and codec file.
COMPACT_KEY = "compact"
CODEC_FILE = "codec.faiss"


def default_spec(dim: int) -> str:
    """The persisted first stage's default: ``PQ{d/2}x4fs``, 4-bit codes of 2 dimensions each
    (1/8 of the float16 rows' bytes), searched with FAISS's fast scan (SIMD look-up tables);
    cut by :func:`supported_spec` to the training rows. At 1/8 the exact top 10 is among 50-100
    candidates for 98-100% of the fact world's queries (8-bit codes of 4 dimensions do as well,
    train 7x slower and search about 10x slower); ``benchmarks/README.md``, section compact."""
    return f"PQ{max(1, dim // 2)}x4fs"


def extend_saved(store: EncodingStore, record: Callable[[str, Any], None] | None = None,
                 chunk_rows: int = 16384) -> dict | None:
    """Add the codes of the rows the saved index does not cover yet (rows appended by ``index
    add``) without retraining; returns the new manifest entry (``None``: the store has no
    saved index). Rerun after an interruption, it adds exactly the rows still missing."""
    entry = store.manifest.get(MANIFEST_KEY)
    if entry is None:
        return None
    if entry["rows"] > store.n_rows:
        raise FactraceError(f"the approximate index of {store.path} covers {entry['rows']} rows, "
                            f"more than the store's {store.n_rows}; rebuild it with "
                            f"`factrace index approx --index {store.path}`")
    if entry["rows"] == store.n_rows:
        return entry
    index = _read(store, entry)
    for start in range(entry["rows"], store.n_rows, chunk_rows):
        rows = store.rows(np.arange(start, min(start + chunk_rows, store.n_rows)))
        index.add(np.ascontiguousarray(torch.from_numpy(rows).float().numpy()))
    kept = {k: v for k, v in entry.items() if k not in ("file", "sha256", "rows")}
    return _write(store, index, kept, record)


def _write(store: EncodingStore, index: faiss.Index, entry: dict,
           record: Callable[[str, Any], None] | None) -> dict:
    """Save ``index`` under a name of its row count and record it; recorded in the store's
    manifest (no ``record``), any other index file is removed then, else (an addition's pending
    manifest) when the addition commits (:func:`factrace.store.manifest.commit`)."""
    name = INDEX_FILE.format(rows=int(index.ntotal))
    data = _serialize(index)
    sha = mf.write_atomic(store.path / name, lambda f: f.write(memoryview(data)))
    entry = {**entry, "file": name, "rows": int(index.ntotal), "sha256": sha}
    (record or store.record)(MANIFEST_KEY, entry)
    if record is None:
        for old in store.path.glob(INDEX_GLOB):
            if old.name != name:
                old.unlink()
    return entry


def _checked_bytes(path: Path, sha256: str, advice: str) -> bytes:
    """The bytes of ``path``, read once, which must have the checksum ``sha256``."""
    data = path.read_bytes() if path.is_file() else None
    if data is None or hashlib.sha256(data).hexdigest() != sha256:
        raise FactraceError(f"{path} is missing or damaged (checksum); {advice}")
    return data


def _read(store: EncodingStore, entry: dict) -> faiss.Index:
    path = Path(store.path) / entry["file"]
    data = _checked_bytes(path, entry["sha256"],
                          f"rebuild it with `factrace index approx --index {store.path}`")
    try:
        index = _deserialize(data)
    except (RuntimeError, ValueError) as e:
        raise FactraceError(f"{path} is unreadable ({e}); rebuild it with `factrace index "
                            f"approx --index {store.path}`") from e
    if index.ntotal != entry["rows"]:
        raise FactraceError(f"{path} holds {index.ntotal} rows, its manifest entry says "
                            f"{entry['rows']}; rebuild it with `factrace index approx --index "
                            f"{store.path}`")
    return index


def recall_at_k(
    approx_ids: Sequence[Sequence[str] | Ranking],
    exact_ids: Sequence[Sequence[str] | Ranking],
    k: int = 10,
) -> float:
    """Mean over queries of ``|approx top-k ∩ exact top-k| / |exact top-k|``. Each argument is a
    list (one per query) of id lists best first, or of :class:`Ranking`."""
    if len(approx_ids) != len(exact_ids):
        raise ValueError(f"{len(approx_ids)} approximate rankings for {len(exact_ids)} exact ones")
    if not exact_ids:
        raise ValueError("recall of no queries")
    total = 0.0
    for approx, exact in zip(approx_ids, exact_ids, strict=True):
        approx = approx.doc_ids if isinstance(approx, Ranking) else approx
        exact = exact.doc_ids if isinstance(exact, Ranking) else exact
        truth = set(exact[:k])
        total += len(truth & set(approx[:k])) / len(truth) if truth else 1.0
    return total / len(exact_ids)
