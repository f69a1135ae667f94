"""The persistent encoding store: unit-norm encodings ψ of training examples, in float16 shards.

:class:`StoreWriter` builds a store shard by shard and resumes an interrupted build at the
first missing shard; :class:`EncodingStore` opens a finished one, checks every shard against
the manifest and refuses a store made by a different model or encoder. The file layout is in
:mod:`factrace.store.manifest`.

Typical build::

    writer = StoreWriter.create_or_resume(path, fingerprints, dim, config)
    for index, (ids, encodings) in enumerate(shards):
        if index < writer.next_shard:
            continue  # written before an interruption
        writer.write_shard(index, ids, encodings)
    writer.finish()
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from factrace.data.records import Passage
from factrace.errors import FactraceError
from factrace.store import manifest as mf
from factrace.store.locations import Locations, load_arrays, save_arrays, table_problem

if TYPE_CHECKING:  # imported by the writer, which rounds with it (reading needs numpy only)
    import torch


class StoreWriter:
    """Writes the shards of one store in order; the manifest is rewritten after every shard."""

    def __init__(self, path: Path, manifest: dict[str, Any], over: str | None = None):
        self.path = path
        self._manifest = manifest
        self._over = over  # an addition: the sha256 of the committed manifest it grows

    def _save(self) -> None:
        """Write the manifest being built: ``manifest.json`` for a build, the pending manifest
        for an addition (readers keep the committed one until :meth:`finish`)."""
        if self._over is None:
            mf.write_manifest(self.path, self._manifest)
        else:
            mf.write_pending(self.path, self._manifest, self._over)

    @classmethod
    def create_or_resume(
        cls,
        path: str | Path,
        fingerprints: Mapping[str, str],
        dim: int,
        config: Mapping[str, Any] | None = None,
    ) -> StoreWriter:
        """Start a store at ``path``, or resume the one there if it was made with the same
        ``fingerprints`` (a complete store is left as it is: ``complete`` is then True).

        ``fingerprints``: opaque ``str -> str`` identities of what made the encodings (model
        weights, tokenizer, encoder configuration, projection seed, R). ``config``: the encoder
        configuration as a JSON-able dict, stored verbatim for people to read.
        A store made with different fingerprints or dimension is a :class:`FactraceError`.
        """
        path = Path(path)
        fingerprints = mf.check_fingerprints(fingerprints)
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if (path / mf.MANIFEST).is_file():
            return cls._resume(path, fingerprints, dim)
        if path.exists() and not path.is_dir():
            raise FactraceError(f"{path} exists and is not a directory; choose another store path")
        if path.is_dir() and any(not mf.is_bookkeeping(p) for p in path.iterdir()):
            raise FactraceError(
                f"{path} is not empty and has no {mf.MANIFEST}; choose an empty or new directory"
            )
        manifest = {
            "format_version": mf.FORMAT_VERSION,
            "dtype": mf.DTYPE,
            "dim": int(dim),
            "fingerprints": fingerprints,
            "config": dict(config or {}),
            "shards": [],
            "complete": False,
        }
        json.dumps(manifest)  # a config that is not JSON-able fails here, before any file
        path.mkdir(parents=True, exist_ok=True)
        _remove_temporaries(path)
        mf.write_manifest(path, manifest)
        return cls(path, manifest)

    @classmethod
    def _resume(cls, path: Path, fingerprints: dict[str, str], dim: int,
                manifest: dict[str, Any] | None = None) -> StoreWriter:
        manifest = mf.read_manifest(path) if manifest is None else manifest
        stored = manifest["fingerprints"]
        phrases = mf.fingerprint_differences(stored, fingerprints, both_ways=True)
        if manifest["dim"] != dim:
            phrases.append(f"encoding dimension (store: {manifest['dim']}, now: {dim})")
        if phrases:
            advice = "choose another directory, or delete this one to rebuild it"
            raise FactraceError(mf.mismatch_message(path, phrases, advice))
        if not manifest["complete"]:
            _remove_temporaries(path)
            _remove_unlisted_shards(path, manifest)
            for entry in manifest["shards"]:
                _check_layout(path, entry, manifest["dim"])
        return cls(path, manifest)

    @classmethod
    def reopen(cls, path: str | Path, fingerprints: Mapping[str, str], dim: int) -> StoreWriter:
        """Open a store to append shards (``index add``), resuming an unfinished addition: a
        complete store's growth is recorded in its pending manifest, and readers see the store
        as it was until :meth:`finish` commits it (:mod:`factrace.store.manifest`)."""
        path = Path(path)
        fingerprints = mf.check_fingerprints(fingerprints)
        pending = mf.read_pending(path)
        if pending is not None:
            return cls(path, cls._resume(path, fingerprints, dim, pending)._manifest,
                       mf.sha256_file(path / mf.MANIFEST))
        (path / mf.PENDING).unlink(missing_ok=True)  # stale: its addition was committed
        writer = cls._resume(path, fingerprints, dim)
        if writer._manifest["complete"]:  # else: a store interrupted before snapshots
            writer._over = mf.sha256_file(path / mf.MANIFEST)
            writer._manifest["complete"] = False
            _remove_temporaries(path)
            _remove_unlisted_shards(path, writer._manifest)
            writer._save()
        return writer

    def set(self, key: str, value: Any) -> None:
        """Record ``value`` (JSON-able) under ``key`` of the manifest, now."""
        self._manifest[key] = json.loads(json.dumps(value))
        self._save()

    @property
    def complete(self) -> bool:
        """Whether :meth:`finish` has been called (now or by an earlier build)."""
        return bool(self._manifest["complete"])

    @property
    def done_shards(self) -> int:
        """Number of shards already written (by this writer or before an interruption)."""
        return len(self._manifest["shards"])

    @property
    def next_shard(self) -> int:
        """Index of the next shard to write (== :attr:`done_shards`)."""
        return self.done_shards

    @property
    def n_rows(self) -> int:
        """Rows written so far."""
        return sum(entry["rows"] for entry in self._manifest["shards"])

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._manifest))

    def write_shard(
        self,
        index: int,
        ids: Sequence[str],
        encodings: np.ndarray | torch.Tensor,
        inputs: str | None = None,
    ) -> None:
        """Write shard ``index`` (must equal :attr:`next_shard`): ``ids`` (``rows`` strings) and
        ``encodings`` ``[rows, dim]`` (any float dtype; stored as float16). Both files are
        renamed into place before the manifest records the shard. ``inputs``, a fingerprint of
        the rows the shard was encoded from, is recorded as ``inputs_sha256`` so that a resumed
        build can tell whether they changed since."""
        array = _as_float16(encodings, self._manifest["dim"])
        if self.compact:
            raise FactraceError(f"encoding store {self.path} is compact: it keeps codes, not "
                                "rows")
        self._write_entry(index, ids, array.shape[0], inputs, "encodings", ".npy",
                          lambda file: mf.write_npy_atomic(file, array))

    def write_code_shard(self, index: int, ids: Sequence[str], codes: np.ndarray,
                         inputs: str | None = None) -> None:
        """Write shard ``index`` of a compact store: ``ids`` and ``codes``, uint8 ``[rows,
        code_bytes]`` (:class:`~factrace.search.approx.Codec`); as :meth:`write_shard`
        otherwise."""
        if not self.compact:
            raise FactraceError(f"encoding store {self.path} keeps rows, not codes")
        codes = np.ascontiguousarray(codes)
        if codes.dtype != np.uint8 or codes.ndim != 2:
            raise ValueError(f"codes must be uint8 [rows, bytes], got {codes.dtype} "
                             f"{list(codes.shape)}")
        self._write_entry(index, ids, codes.shape[0], inputs, "codes", ".codes.npy",
                          lambda file: mf.write_npy_atomic(file, codes))

    def _write_entry(self, index: int, ids: Sequence[str], rows: int, inputs: str | None,
                     kind: str, suffix: str, write) -> None:
        if self.complete:
            raise FactraceError(f"encoding store {self.path} is complete; it takes no more shards")
        if index != self.next_shard:
            raise ValueError(f"shard {index} written out of order: next shard is {self.next_shard}")
        ids = list(ids)
        if len(ids) != rows:
            raise ValueError(f"{len(ids)} ids for {rows} encoding rows")
        if not all(isinstance(i, str) for i in ids):
            raise TypeError("example ids must be str")
        name = mf.shard_name(index)
        entry = {"name": name, "rows": int(rows), kind: f"{name}{suffix}",
                 "ids": f"{name}.ids.json", "sha256": {}}
        entry["sha256"][kind] = write(self.path / entry[kind])
        ids_bytes = (json.dumps(ids, ensure_ascii=False) + "\n").encode("utf-8")
        entry["sha256"]["ids"] = mf.write_bytes_atomic(self.path / entry["ids"], ids_bytes)
        if inputs is not None:
            entry["inputs_sha256"] = inputs
        self._manifest["shards"].append(entry)
        self._save()

    @property
    def compact(self) -> bool:
        """Whether the store keeps codes instead of rows (``index build --compact``)."""
        return "compact" in self._manifest

    def record_locations(self, position: int, locations: Locations) -> None:
        """Save the location table of the store's corpus number ``position`` (0: the build's,
        k: the k-th addition's) as ``locations-K.npz`` and record it in the manifest."""
        entries = list(self._manifest.get("locations", []))
        if position > len(entries):
            raise ValueError(f"locations of corpus {position} recorded before those of "
                             f"corpus {len(entries)}")
        name = f"locations-{position:05d}.npz"
        entry = {**locations.entry(), "file": name,
                 "sha256": mf.write_bytes_atomic(self.path / name,
                                                 save_arrays(locations.arrays()))}
        self.set("locations", [*entries[:position], entry])

    def finish(self) -> None:
        """Mark the store complete; only then can :meth:`EncodingStore.open` read it (an
        addition: commit it, by one atomic write of ``manifest.json``)."""
        if not self.complete:
            self._manifest["complete"] = True
            if self._over is None:
                mf.write_manifest(self.path, self._manifest)
            else:
                mf.commit(self.path, self._manifest)
                self._over = None


class EncodingStore:
    """A finished, verified store opened for reading; shards are memory-mapped on demand."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self._manifest = manifest
        self._ids: list[str] | None = None
        self._locations: list[Locations] | None = None

    @classmethod
    def open(
        cls,
        path: str | Path,
        expect: Mapping[str, str] | None = None,
        verify: bool | str = True,
        labels: Mapping[str, str] | None = None,
    ) -> EncodingStore:
        """Open the store at ``path``.

        ``expect``: fingerprints the caller's model and encoder have now; any that differ from
        the store's is a :class:`FactraceError` naming the part (``labels`` may rename keys).
        ``verify``: ``True`` checks every shard's sha256 against the manifest (reads every byte);
        ``"once"`` hashes only the shard files not verified before at their present size and
        modification time (recorded in ``verified.json``); ``False`` checks only the row
        counts and file sizes.
        """
        path = Path(path)
        manifest = mf.read_manifest(path)
        if not manifest["complete"]:
            raise FactraceError(
                f"encoding store {path} is incomplete ({len(manifest['shards'])} shards written); "
                "resume the build to finish it"
            )
        if expect is not None:
            phrases = mf.fingerprint_differences(manifest["fingerprints"], expect, labels)
            if phrases:
                advice = "rebuild the store with the current settings or open a matching one"
                raise FactraceError(mf.mismatch_message(path, phrases, advice))
        seen = _read_verified(path) if verify == "once" else {}
        checked = {}
        for entry in manifest["shards"]:
            if verify:
                checked.update(_check_checksums(path, entry, seen))
            _check_layout(path, entry, manifest["dim"])
        if verify == "once" and checked != seen:
            _write_verified(path, checked)
        if verify is True:  # also the saved approximate index, or a compact store's codec
            for key in ("approx", "compact"):
                entry = manifest.get(key, {})
                if "file" in entry and (not (path / entry["file"]).is_file() or
                                        mf.sha256_file(path / entry["file"]) != entry["sha256"]):
                    raise FactraceError(f"{path / entry['file']} is missing or damaged "
                                        f"(checksum); rebuild it")
        return cls(path, manifest)

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the manifest."""
        return json.loads(json.dumps(self._manifest))

    @property
    def dim(self) -> int:
        return int(self._manifest["dim"])

    @property
    def fingerprints(self) -> dict[str, str]:
        return dict(self._manifest["fingerprints"])

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._manifest.get("config", {})))

    @property
    def corpora(self) -> list[str | None]:
        """The corpora the rows were encoded from: the build's, then each addition's."""
        return [self.config.get("corpus")] + [a["corpus"] for a in
                                              self._manifest.get("additions", [])]

    def locations(self) -> list[Locations]:
        """The location table of each corpus (:attr:`corpora`'s order), loaded on first use and
        checked against its checksum; corpus files are checked when a passage is first read."""
        if self._locations is None:
            entries = self._manifest.get("locations", [])
            if len(entries) != len(self.corpora):
                raise FactraceError(f"{self.path}: the store records where the passages of "
                                    f"{len(entries)} of its {len(self.corpora)} corpora are; "
                                    "resume its build or addition to finish it")
            tables = []
            for entry in entries:
                file = self.path / entry["file"]
                if mf.sha256_file(file) != entry["sha256"]:
                    raise FactraceError(f"{file} does not match its checksum in the manifest; "
                                        "rebuild the store")
                arrays = load_arrays(file)
                problem = table_problem(entry, arrays)
                if problem:
                    raise FactraceError(f"{file} {problem}; rebuild the store")
                tables.append(Locations.from_saved(entry, arrays))
            self._locations = tables
        return self._locations

    def passage(self, passage_id: str) -> Passage | None:
        """The passage of this id from the corpora the store records (``None``: none has it)."""
        for table in self.locations():
            found = table.find(passage_id)
            if found is not None:
                return found
        return None

    def is_passage(self, passage_id: str) -> bool:
        """Whether some corpus of the store has a passage of this id."""
        return any(passage_id in table for table in self.locations())

    @property
    def n_shards(self) -> int:
        return len(self._manifest["shards"])

    @property
    def shard_rows(self) -> list[int]:
        """Row count of each shard."""
        return [int(entry["rows"]) for entry in self._manifest["shards"]]

    @property
    def n_rows(self) -> int:
        return sum(self.shard_rows)

    def __len__(self) -> int:
        return self.n_rows

    @property
    def ids(self) -> list[str]:
        """All example ids in row order (read on first use)."""
        if self._ids is None:
            self._ids = [i for index in range(self.n_shards) for i in self.shard_ids(index)]
        return self._ids

    def shard_ids(self, index: int) -> list[str]:
        """The ids of shard ``index``, ``rows`` strings."""
        entry = self._manifest["shards"][index]
        path = self.path / entry["ids"]
        try:
            ids = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FactraceError(
                f"ids of {entry['name']} in {self.path} are unreadable ({e}); rebuild the store"
            ) from e
        if not isinstance(ids, list) or len(ids) != entry["rows"]:
            raise FactraceError(
                f"ids of {entry['name']} in {self.path} do not match the manifest's {entry['rows']} rows; "
                "rebuild the store"
            )
        return ids

    @property
    def compact(self) -> bool:
        """Whether the store keeps codes instead of rows (``index build --compact``): its rows
        are then re-encoded from their passages when needed (see :mod:`factrace.run.tracer`)."""
        return "compact" in self._manifest

    def shard_codes(self, index: int) -> np.ndarray:
        """Shard ``index`` of a compact store: its rows' codes, uint8 ``[rows, code_bytes]``
        (memory-mapped)."""
        entry = self._manifest["shards"][index]
        if "codes" not in entry:
            raise FactraceError(f"encoding store {self.path} keeps rows, not codes")
        return np.load(self.path / entry["codes"], mmap_mode="r", allow_pickle=False)

    def shard_encodings(self, index: int) -> np.ndarray:
        """Shard ``index`` as a read-only memory map, float16 ``[rows, dim]``."""
        entry = self._manifest["shards"][index]
        if "encodings" not in entry:
            raise FactraceError(
                f"encoding store {self.path} is compact: it keeps codes, not rows (its rows "
                "are re-encoded from their passages for the candidates of a two-stage search)")
        if entry["rows"] == 0:
            return np.zeros((0, self.dim), dtype=np.float16)
        _, _, _, offset = mf.npy_layout(self.path / entry["encodings"])
        return np.memmap(
            self.path / entry["encodings"],
            dtype=np.float16,
            mode="r",
            offset=offset,
            shape=(entry["rows"], self.dim),
        )

    def rows(self, positions: np.ndarray | Sequence[int]) -> np.ndarray:
        """The stored rows at global ``positions`` (any order), float16 ``[n, dim]``, gathered
        from the memory-mapped shards: only those rows' pages are read."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if positions.size and (positions.min() < 0 or positions.max() >= self.n_rows):
            raise IndexError(f"row positions outside [0, {self.n_rows})")
        first = np.concatenate([[0], np.cumsum(self.shard_rows)]).astype(np.int64)
        shard = np.searchsorted(first, positions, side="right") - 1
        out = np.empty((positions.size, self.dim), dtype=np.float16)
        for index in np.unique(shard):
            where = shard == index
            out[where] = self.shard_encodings(int(index))[positions[where] - first[index]]
        return out

    def iter_shards(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """Yield ``(ids, encodings)`` per shard in row order; encodings float16 ``[rows, dim]``,
        memory-mapped."""
        for index in range(self.n_shards):
            yield self.shard_ids(index), self.shard_encodings(index)

    def record(self, key: str, value: Any) -> None:
        """Record ``value`` (JSON-able) under ``key`` of the manifest, on disk now (the caller
        holds the store's write lock)."""
        self.record_all({key: value})

    def record_all(self, values: Mapping[str, Any]) -> None:
        """:meth:`record` of several keys, by one manifest write."""
        self._manifest.update(json.loads(json.dumps(dict(values))))
        mf.write_manifest(self.path, self._manifest)

    def record_approx(self, entry: Mapping[str, Any] | None) -> None:
        """Record (or with None, forget) an approximate index saved in the store directory."""
        if entry is None:
            self._manifest.pop("approx", None)
        else:
            self._manifest["approx"] = dict(entry)
        mf.write_manifest(self.path, self._manifest)


def _as_float16(encodings: np.ndarray | torch.Tensor, dim: int) -> np.ndarray:
    """``encodings`` as a C-contiguous float16 numpy array ``[rows, dim]``, all finite."""
    import torch

    if isinstance(encodings, torch.Tensor):
        encodings = encodings.detach().cpu()
        if encodings.dtype in (torch.bfloat16, torch.float16):  # no numpy bfloat16
            encodings = encodings.to(torch.float16)
        encodings = encodings.numpy()
    array = np.ascontiguousarray(encodings)
    if array.dtype == np.float32:
        # torch rounds float32 to float16 exactly as numpy does (nearest even), 50× faster;
        # not float64, which torch rounds twice (through float32)
        array = torch.from_numpy(array).to(torch.float16).numpy()
    else:  # no copy when the caller converted already
        array = array.astype(np.float16, copy=False)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"encodings must have shape [rows, {dim}], got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError("encodings contain NaN or values outside the float16 range")
    return array


def _remove_temporaries(path: Path) -> None:
    for child in path.iterdir():
        if mf.is_tmp(child) and child.is_file():
            child.unlink()


def _remove_unlisted_shards(path: Path, manifest: Mapping[str, Any]) -> None:
    """Remove shard files renamed into place by a writer killed before it updated the manifest."""
    listed = {entry[key] for entry in manifest["shards"] for key in ("encodings", "codes", "ids")
              if key in entry}
    for child in path.glob("shard-*"):
        if child.is_file() and child.name not in listed:
            child.unlink()


def _corrupt(path: Path, entry: Mapping[str, Any], why: str) -> FactraceError:
    return FactraceError(f"{entry['name']} of encoding store {path} {why}; rebuild the store")


def _stamp(file: Path, sha256: str) -> list:
    st = file.stat()
    return [st.st_size, st.st_mtime_ns, sha256]


def _check_checksums(path: Path, entry: Mapping[str, Any],
                     seen: Mapping[str, list] | None = None) -> dict[str, list]:
    """Hash the shard's files (those not in ``seen`` at their size, time and checksum);
    returns their stamps."""
    stamps = {}
    for kind in _kinds(entry):
        file = path / entry[kind]
        if not file.is_file():
            raise _corrupt(path, entry, f"is missing its file {entry[kind]}")
        expected = entry["sha256"][kind]
        stamp = _stamp(file, expected)
        if (seen or {}).get(entry[kind]) != stamp and mf.sha256_file(file) != expected:
            raise _corrupt(path, entry, f"is damaged: {entry[kind]} does not match its checksum")
        stamps[entry[kind]] = stamp
    return stamps


def _read_verified(path: Path) -> dict[str, list]:
    try:
        record = json.loads((path / mf.VERIFIED).read_text(encoding="utf-8"))
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_verified(path: Path, stamps: Mapping[str, list]) -> None:
    """Record what was verified (best effort: a read-only store is verified every time)."""
    try:
        mf.write_bytes_atomic(path / mf.VERIFIED, (json.dumps(stamps) + "\n").encode())
    except OSError:
        pass


def _kinds(entry: Mapping[str, Any]) -> tuple[str, str]:
    """A shard's files: its rows (``encodings``) or, in a compact store, its ``codes``; ids."""
    return ("codes" if "codes" in entry else "encodings", "ids")


def _check_layout(path: Path, entry: Mapping[str, Any], dim: int) -> None:
    """Cheap checks: both files exist, the header says ``[rows, dim]`` float16 (a compact
    store's codes: uint8 ``[rows, code bytes]``), the size fits."""
    kind = _kinds(entry)[0]
    if any(not (path / entry[k]).is_file() for k in _kinds(entry)):
        raise _corrupt(path, entry, "is missing a file")
    file = path / entry[kind]
    try:
        shape, dtype, fortran, offset = mf.npy_layout(file)
    except (OSError, ValueError) as e:
        raise _corrupt(path, entry, f"has an unreadable header in {entry[kind]} ({e})") from e
    # rows: float16 [rows, dim]; a compact store's codes: uint8 [rows, code bytes]
    want = np.dtype(np.uint8) if kind == "codes" else np.dtype(np.float16)
    width = shape[1] if kind == "codes" and len(shape) == 2 else dim
    if shape != (entry["rows"], width) or dtype != want or fortran:
        raise _corrupt(path, entry, f"holds {dtype} {list(shape)}, expected {want} "
                                    f"[{entry['rows']}, {width}]")
    if file.stat().st_size != offset + entry["rows"] * width * want.itemsize:
        raise _corrupt(path, entry, f"is truncated or padded: {entry[kind]} has the wrong size")
