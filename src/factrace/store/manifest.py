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
from factrace.errors import DISK_FULL, FactraceError

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
            f"{path} is not a readable store manifest ({e}); rebuild the store"
        ) from e
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
            f"{path} has store format version {manifest['format_version']}, this factrace reads "
            f"version {FORMAT_VERSION}; rebuild the store with {how}"
        )
    if manifest["dtype"] != DTYPE:
        raise FactraceError(f"{path} has dtype {manifest['dtype']!r}, expected {DTYPE!r}")
    return manifest


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
