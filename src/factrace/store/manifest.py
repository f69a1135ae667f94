"""The on-disk pieces of an encoding store: manifest, checksums, atomic writes, fingerprints.

A store directory holds ``manifest.json`` and, per shard, ``shard-NNNNN.npy`` (float16
encodings ``[rows, dim]``) and ``shard-NNNNN.ids.json`` (a JSON list of ``rows`` string ids).
A compact store keeps ``shard-NNNNN.codes.npy`` instead (uint8 ``[rows, code bytes]``, the rows'
codes under its ``codec.faiss``; the shard entry's key is ``codes``, not ``encodings``).
Every file is written under a temporary name (``.NAME.<pid>-<random>.tmp``, by
:func:`factrace.data.atomic.atomic_path`) and renamed when complete, so a
reader never sees half a file and a killed writer leaves only temporaries, which are removed
when the build resumes.

Manifest (``FORMAT_VERSION`` 3)::

    {
      "format_version": 3,
      "dtype": "float16",
      "dim": 65536,
      "fingerprints": {"model": "...", "projection_seed": "0", ...},
      "config": {...},               # the encoder configuration as the caller recorded it
      "shards": [{"name": "shard-00000", "rows": 4096,
                  "encodings": "shard-00000.npy", "ids": "shard-00000.ids.json",
                  "sha256": {"encodings": "...", "ids": "..."}}, ...],
      "complete": true,
      "approx": {"file": "approx-0000003000.faiss", "sha256": "...", "spec": "PQ8192x4fs",
                 "rows": 3000, "trained_rows": 3000, ...},   # optional: `index approx`
      "compact": {"file": "codec.faiss", "sha256": "...", "requested": "PQ8192x4fs",
                  "spec": "PQ8192x4fs", "code_bytes": 4096, "trained_rows": 3000, ...},
                                     # `index build --compact`: shards keep codes, not rows
      "state": {"file": "encoder_state.pt", "sha256": "..."},   # the fitted encoder state
      "tasks": {"NAME": {...}},      # query sets defining R_eval, with their files' checksums
      "default_task": "NAME",
      "additions": [...]             # corpora appended by `index add`
    }

Version 2 and later store rows in R_train's eigenbasis (query-time R); version 1 stored them
whitened with the build-time queries' R, which cannot answer other questions exactly. Version 3
fingerprints the encoder configuration without its ``dim`` field (the resolved d has its own
fingerprint), so a store built at the default d opens with the default d; version 2's encoder
fingerprints were computed otherwise.

Beside it: ``.write.lock`` (held by the one process writing the store) and ``verified.json``
(which shard files were hashed, at which size and modification time).

Snapshots: ``manifest.json`` is the store as readers see it, and it changes only by one atomic
rename. While ``index add`` appends a corpus, ``manifest.json`` keeps the last complete store
(``complete`` true, its shards, tasks, locations, approximate index) and the addition's progress
goes to ``manifest.pending.json`` (the manifest the store will have, with ``pending_over``: the
sha256 of the ``manifest.json`` it grows); readers never read it, so a ``trace`` during an
addition sees the store as it was before, and the addition commits by writing ``manifest.json``
once, at its end (:func:`commit`). The addition's new files (shards, a task's longer row norms,
the extended approximate index, its location table) take names no committed manifest uses, so
what a reader opened before an addition knows is never rewritten in place; files the new
manifest no longer names (a replaced index or row norms) are removed after the commit. Shard files
of an unfinished addition may lie beside the committed ones; readers use the listed shards only.
An interrupted addition resumes from the pending manifest; one whose commit happened (its
``pending_over`` no longer matches) leaves a stale file, which the next writer removes. Only a
first ``index build`` leaves ``manifest.json`` itself incomplete: there is no earlier store to
show.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from factrace.data.atomic import atomic_path
from factrace.errors import DISK_FULL, FactraceError, one_line

FORMAT_VERSION = 3
MANIFEST = "manifest.json"
PENDING = "manifest.pending.json"
LOCK = ".write.lock"
VERIFIED = "verified.json"
DTYPE = "float16"
TMP_SUFFIX = ".tmp"

#: Human names for the fingerprint keys the pipeline records; other keys are shown as written.
FINGERPRINT_LABELS: dict[str, str] = {
    "model": "model (weights)",
    "weights": "model (weights)",
    "model_weights": "model (weights)",
    "tokenizer": "tokenizer",
    "encoder": "encoder configuration",
    "encoder_config": "encoder configuration",
    "config": "encoder configuration",
    "optimizer": "optimizer state",
    "second_moment": "optimizer second moment",
    "seed": "projection seed",
    "projection_seed": "projection seed",
    "projection": "projection",
    "r": "R (Hessian approximation)",
    "hessian": "R (Hessian approximation)",
}

_HASH_BLOCK = 1 << 22


def shard_name(index: int) -> str:
    """``shard-00007`` for index 7."""
    return f"shard-{index:05d}"


def is_tmp(path: Path) -> bool:
    """Whether ``path`` is a temporary of :func:`factrace.data.atomic.atomic_path` (e.g. left by
    a killed writer)."""
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)


def is_bookkeeping(path: Path) -> bool:
    """A file that is not store content: a temporary, or the write lock."""
    return is_tmp(path) or path.name == LOCK


class _HashingWriter:
    """A write-only file wrapper that feeds every byte written to a sha256."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.file.write(data)


def write_atomic(path: Path, write: Callable[[Any], None]) -> str:
    """Write ``path`` through ``write(file)`` with :func:`factrace.data.atomic.atomic_path` (a
    temporary renamed into place, the one atomic writer of factrace), synced to disk first.

    Returns the sha256 (hex) of the bytes written. On any error the temporary is removed and
    ``path`` is untouched; a full disk (or quota) is a :class:`DiskFull` naming ``path``.
    """
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            hashing = _HashingWriter(f)
            write(hashing)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.errno in DISK_FULL:
            raise DiskFull(path) from e
        raise
    return hashing.sha256.hexdigest()


class DiskFull(FactraceError):
    """No space left writing a store's file: the file is untouched (its temporary removed), so
    the same command, rerun once there is space, resumes."""

    def __init__(self, path: Path | str):
        self.path = path
        super().__init__(f"no space left on device writing {path}; free space and rerun the "
                         "same command to resume")


def write_bytes_atomic(path: Path, data: bytes) -> str:
    """:func:`write_atomic` for a bytes payload; returns its sha256."""
    return write_atomic(path, lambda f: f.write(data))


def write_npy_atomic(path: Path, array: np.ndarray) -> str:
    """Save ``array`` as a ``.npy`` file (format 1.0, C order) atomically; returns its sha256."""
    return write_atomic(
        path, lambda f: np.lib.format.write_array(f, array, version=(1, 0), allow_pickle=False)
    )


def sha256_file(path: Path) -> str:
    """sha256 (hex) of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """``(shape, dtype, fortran_order, data_offset)`` read from a ``.npy`` header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        return shape, dtype, fortran, f.tell()


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The manifest serialised deterministically (same content, same bytes)."""
    return (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_manifest(directory: Path, manifest: Mapping[str, Any]) -> None:
    """Replace ``directory/manifest.json`` atomically."""
    write_bytes_atomic(directory / MANIFEST, manifest_bytes(manifest))


def write_pending(directory: Path, manifest: Mapping[str, Any], over: str) -> None:
    """Replace ``directory/manifest.pending.json``: the manifest an addition is building,
    growing the committed ``manifest.json`` whose sha256 is ``over``."""
    write_bytes_atomic(directory / PENDING, manifest_bytes({**manifest, "pending_over": over}))


def read_pending(directory: Path) -> dict[str, Any] | None:
    """The manifest of an unfinished addition (without its ``pending_over``), or None: there is
    none, or it is stale (it grows another ``manifest.json`` than the one there now: its commit
    happened)."""
    path = Path(directory) / PENDING
    if not path.is_file() or not (Path(directory) / MANIFEST).is_file():
        return None
    try:
        pending = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # a pending file is written atomically: this one is not factrace's
    if not isinstance(pending, dict) or \
            pending.pop("pending_over", None) != sha256_file(Path(directory) / MANIFEST):
        return None
    return pending


def commit(directory: Path, manifest: Mapping[str, Any]) -> None:
    """Make ``manifest`` the store readers see (one atomic write of ``manifest.json``), forget
    the pending manifest, then remove the files the previous manifest named and this one does
    not (a replaced approximate index or task row norms)."""
    directory = Path(directory)
    before = read_manifest(directory) if (directory / MANIFEST).is_file() else {}
    write_manifest(directory, manifest)
    (directory / PENDING).unlink(missing_ok=True)
    for name in sorted(named_files(before) - named_files(manifest)):
        (directory / name).unlink(missing_ok=True)


def named_files(manifest: Mapping[str, Any]) -> set[str]:
    """The files (relative names) a manifest names: shards, state, codec, approximate index,
    location tables, tasks."""
    names = {entry[key] for entry in manifest.get("shards", [])
             for key in ("encodings", "codes", "ids") if key in entry}
    for key in ("state", "approx", "compact"):
        if "file" in manifest.get(key, {}):
            names.add(manifest[key]["file"])
    names.update(entry["file"] for entry in manifest.get("locations", []))
    for entry in manifest.get("tasks", {}).values():
        names.update(entry[key] for key in ("file", "norms") if key in entry)
    return names


def read_manifest(directory: Path) -> dict[str, Any]:
    """Load and sanity-check ``directory/manifest.json``; a user error if it is unusable."""
    path = directory / MANIFEST
    if not path.is_file():
        raise FactraceError(
            f"no encoding store at {directory} ({MANIFEST} not found); build one first"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FactraceError(
            f"{path} is not a readable store manifest ({one_line(e)}); rebuild the store"
        ) from None
    except (ValueError, RecursionError) as e:  # a number past Python's limits, deep nesting
        raise FactraceError(
            f"{path} is not a usable store manifest ({one_line(e, 80) or 'nested too deeply'}); "
            "rebuild the store"
        ) from None
    required = ("format_version", "dtype", "dim", "fingerprints", "shards", "complete")
    missing = [key for key in required if not isinstance(manifest, dict) or key not in manifest]
    if missing:
        raise FactraceError(
            f"{path} lacks {', '.join(missing)}; it is not a factrace encoding store"
        )
    if manifest["format_version"] != FORMAT_VERSION:
        older = isinstance(manifest["format_version"], int) and \
            manifest["format_version"] < FORMAT_VERSION
        how = ("`factrace index build --overwrite` with the same options" if older
               else "this factrace version")
        raise FactraceError(
            f"{path} has store format version {_value(manifest['format_version'])}, this "
            f"factrace reads "
            f"version {FORMAT_VERSION}; rebuild the store with {how}"
        )
    if manifest["dtype"] != DTYPE:
        raise FactraceError(f"{path} has dtype {_value(manifest['dtype'])}, expected {DTYPE!r}")
    problem = _structure_problem(manifest)
    if problem:
        raise FactraceError(f"{path} is damaged: {problem}; rebuild the store")
    return manifest


def _value(value: Any) -> str:
    """A manifest value as JSON, short enough for one line of an error message."""
    return one_line(json.dumps(value, allow_nan=True, default=str), 60)


def _file_name(value: Any) -> bool:
    """A file name inside the store: relative, never leaving it."""
    return (isinstance(value, str) and bool(value) and not value.startswith(("/", "\\"))
            and ".." not in Path(value).parts and "\0" not in value)


def _structure_problem(manifest: Mapping[str, Any]) -> str | None:
    """What in a manifest's structure a reader cannot use (a field of the wrong type, a file
    name outside the store), or ``None``. Values are checked where readers rely on them."""
    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    def checked(entry: Any, where: str, names: tuple[str, ...]) -> str | None:
        if not isinstance(entry, dict):
            return f"{where} is {_value(entry)}, expected an object"
        for key in names:
            if key in entry and not _file_name(entry[key]):
                return f'{where}["{key}"] is {_value(entry[key])}, expected a file of the store'
            sha = entry.get("sha256") if key == "file" else None
            if key in entry and key == "file" and not isinstance(sha, str):
                return f'{where}["sha256"] is {_value(sha)}, expected a checksum'
        return None

    if not count(manifest["dim"]) or not manifest["dim"]:
        return f'"dim" is {_value(manifest["dim"])}, expected a positive integer'
    prints = manifest["fingerprints"]
    if not isinstance(prints, dict) or not all(isinstance(v, str) for v in prints.values()):
        return '"fingerprints" must map names to strings'
    if not isinstance(manifest["complete"], bool):
        return f'"complete" is {_value(manifest["complete"])}, expected true or false'
    if not isinstance(manifest["shards"], list):
        return f'"shards" is {_value(manifest["shards"])}, expected a list'
    for index, entry in enumerate(manifest["shards"]):
        where = f'"shards"[{index}]'
        kind = "codes" if isinstance(entry, dict) and "codes" in entry else "encodings"
        problem = checked(entry, where, (kind, "ids"))
        if problem:
            return problem
        if not isinstance(entry.get("name"), str) or not count(entry.get("rows")):
            return f"{where} lacks a name or a row count"
        if not all(_file_name(entry.get(key)) for key in (kind, "ids")):
            return f'{where} lacks its files ("{kind}", "ids")'
        sha = entry.get("sha256")
        if not isinstance(sha, dict) or not all(isinstance(sha.get(k), str) for k in (kind, "ids")):
            return f'{where}["sha256"] is {_value(sha)}, expected the checksums of its files'
    for key in ("config", "approx", "compact", "state"):
        problem = checked(manifest.get(key, {}), f'"{key}"', ("file",))
        if problem:
            return problem
    corpus = manifest.get("config", {}).get("corpus")
    if corpus is not None and not isinstance(corpus, str):
        return f'"config"["corpus"] is {_value(corpus)}, expected a path'
    additions = manifest.get("additions", [])
    if not isinstance(additions, list) or not all(
            isinstance(a, dict) and isinstance(a.get("corpus"), str | None) for a in additions):
        return '"additions" must be a list of objects naming their "corpus"'
    locations = manifest.get("locations", [])
    if not isinstance(locations, list):
        return f'"locations" is {_value(locations)}, expected a list'
    for index, entry in enumerate(locations):
        where = f'"locations"[{index}]'
        problem = checked(entry, where, ("file",))
        if problem:
            return problem
        if "file" not in entry or not isinstance(entry.get("corpus"), str):
            return f'{where} lacks its "file" or "corpus"'
        files = entry.get("files")
        if not isinstance(files, list) or not all(_source_file(f) for f in files):
            return f'{where}["files"] must list the corpus files (path, format, size, sample)'
    tasks = manifest.get("tasks", {})
    if not isinstance(tasks, dict):
        return f'"tasks" is {_value(tasks)}, expected an object'
    for name, entry in tasks.items():
        where = f'"tasks"[{_value(name)}]'
        problem = checked(entry, where, ("file", "norms"))
        if problem:
            return problem
        if "file" not in entry or ("norms" in entry and
                                   not isinstance(entry.get("norms_sha256"), str)):
            return f'{where} lacks its "file" or the checksum of its "norms"'
    default = manifest.get("default_task")
    if default is not None and not isinstance(default, str):
        return f'"default_task" is {_value(default)}, expected a task name'
    return None


def _source_file(entry: Any) -> bool:
    """A location table's record of one corpus file (see ``locations.SourceFile``)."""
    if not isinstance(entry, dict) or not set(entry) <= {"path", "format", "size", "sample",
                                                         "columns"}:
        return False
    columns = entry.get("columns", {})
    return (isinstance(entry.get("path"), str) and isinstance(entry.get("format"), str)
            and isinstance(entry.get("size"), int) and isinstance(entry.get("sample"), str)
            and isinstance(columns, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in columns.items()))


def check_fingerprints(fingerprints: Mapping[str, str]) -> dict[str, str]:
    """A plain ``dict[str, str]`` copy of ``fingerprints``; a bug if keys or values are not str."""
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in fingerprints.items()):
        raise TypeError("fingerprints must map str to str")
    return dict(fingerprints)


def _short(value: str | None) -> str:
    if value is None:
        return "none"
    return value if len(value) <= 16 else value[:12] + "…"


def fingerprint_differences(
    stored: Mapping[str, str],
    wanted: Mapping[str, str],
    labels: Mapping[str, str] | None = None,
    both_ways: bool = False,
) -> list[str]:
    """One phrase per key of ``wanted`` whose value differs in ``stored``, e.g.
    ``"projection seed (store: 0, now: 1)"``; empty when all agree. Keys only in ``stored``
    are compared only with ``both_ways`` (a reader may ask about some parts only)."""
    names = {**FINGERPRINT_LABELS, **(labels or {})}
    keys = set(wanted) | (set(stored) if both_ways else set())
    phrases = []
    for key in sorted(keys):
        if stored.get(key) != wanted.get(key):
            label = names.get(key, key.replace("_", " "))
            store_value, now_value = _short(stored.get(key)), _short(wanted.get(key))
            phrases.append(f"{label} (store: {store_value}, now: {now_value})")
    return phrases


def mismatch_message(directory: Path, phrases: list[str], advice: str) -> str:
    """``encoding store X was built with a different A (...) and a different B (...); advice``."""
    parts = " and a different ".join(phrases)
    return f"encoding store {directory} was built with a different {parts}; {advice}"
