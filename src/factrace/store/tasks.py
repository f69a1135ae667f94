"""A store's tasks on disk: named query sets whose R_eval the store keeps.

A task ``NAME`` is ``tasks/NAME.pt`` (its query example ids and their rotated projections Y,
``[T, d]``, from which R_eval and λ are recomputed exactly) and, in a store that keeps rows,
``tasks/NAME.norms.npy`` (every row's norm under the task's R, float32 ``[rows]``; a compact
store's rows get theirs when re-encoded). The manifest's ``tasks`` maps each name to its files'
checksums and a few facts (queries file, counts, λ, rows covered); ``default_task`` names the one
used when questions are too few to define R_eval. Computing what goes in (encoding queries,
row norms) is the jobs' (:mod:`factrace.run.index`); reading and writing it is here.
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from factrace.errors import FactraceError
from factrace.store import manifest as mf

if TYPE_CHECKING:
    import torch

    from factrace.store.encodings import EncodingStore

TASKS_DIR = "tasks"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str) -> None:
    """Refuse a task name that cannot be a file name of the store."""
    if not _NAME.match(name):
        raise FactraceError(f"task name {name!r}: use letters, digits, '.', '_' or '-' "
                            "(at most 64, starting with a letter or digit)")


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def save(store: EncodingStore, name: str, ids: list[str], y: torch.Tensor,
         norms: np.ndarray | None, facts: dict[str, Any], default: bool) -> dict:
    """Write task ``name`` (replacing one of that name) and record it in the manifest
    (``default``, or no default task yet: it becomes the default). Returns its entry."""
    import torch

    check_name(name)
    buffer = io.BytesIO()
    torch.save({"ids": list(ids), "y": y.float()}, buffer)
    before = store.manifest.get("tasks", {}).get(name, {})
    used = {before.get("file"), before.get("norms")}
    same = {before.get("sha256"), before.get("norms_sha256")}

    def write(file: str, data: bytes) -> tuple[str, str]:
        # a task replaced by another gets files of new names: a reader of the store as it was
        # still reads the old ones, removed once the manifest names the new (the same content,
        # e.g. a resumed build's task, keeps its name)
        if f"{TASKS_DIR}/{file}" in used and hashlib.sha256(data).hexdigest() not in same:
            stem, dot, suffix = file.partition(".")
            file = f"{stem}.{hashlib.sha256(data).hexdigest()[:12]}{dot}{suffix}"
        return f"{TASKS_DIR}/{file}", mf.write_bytes_atomic(store.path / TASKS_DIR / file, data)

    entry = {**facts, "rows": store.n_rows}
    entry["file"], entry["sha256"] = write(f"{name}.pt", buffer.getvalue())
    if norms is not None:
        entry["norms"], entry["norms_sha256"] = write(f"{name}.norms.npy", npy_bytes(norms))
    # one manifest write: the task (and its being the default) appears at once
    record = {"tasks": {**store.manifest.get("tasks", {}), name: entry}}
    if default or not store.manifest.get("default_task"):
        record["default_task"] = name
    store.record_all(record)
    for old in used - {entry["file"], entry.get("norms"), None}:
        (store.path / old).unlink(missing_ok=True)
    return entry


def replace_norms(store: EncodingStore, name: str, norms: np.ndarray) -> dict:
    """Task ``name``'s entry with ``norms`` as its row norms (``index add``: the caller records
    the entry), written as ``tasks/NAME.norms-ROWS.npy``, beside the file the committed manifest
    names (never over it: a reader of the store as it was may still read it)."""
    entry = dict(store.manifest["tasks"][name])
    entry["norms"] = f"{TASKS_DIR}/{name}.norms-{int(norms.shape[0]):010d}.npy"
    entry["norms_sha256"] = mf.write_bytes_atomic(store.path / entry["norms"], npy_bytes(norms))
    entry["rows"] = int(norms.shape[0])
    return entry


def load(store: EncodingStore, name: str, whole: bool = True
         ) -> tuple[list[str], torch.Tensor, np.ndarray | None]:
    """Task ``name``'s query ids, rotated projections ``[T, d]`` and row norms (None in a
    compact store), checked against their checksums; with ``whole``, the norms must cover every
    row of the store."""
    import torch

    tasks = store.manifest.get("tasks", {})
    if name not in tasks:
        known = ", ".join(sorted(tasks)) or "none"
        raise FactraceError(f"{store.path} has no task {name!r} (tasks: {known}); add it with "
                            f"`factrace index task add --index {store.path} --queries FILE "
                            f"--name {name}`")
    entry = tasks[name]
    data = {}
    for key, sha in (("file", "sha256"), ("norms", "norms_sha256"))[:1 + ("norms" in entry)]:
        path = store.path / entry[key]
        raw = path.read_bytes() if path.is_file() else None
        if raw is None or hashlib.sha256(raw).hexdigest() != entry[sha]:
            raise FactraceError(f"{store.path}: task {name!r} is missing or damaged "
                                f"({entry[key]}); add it again with `factrace index task add`")
        data[key] = raw
    saved = torch.load(io.BytesIO(data["file"]), map_location="cpu", weights_only=True)
    if "norms" not in data:
        return saved["ids"], saved["y"], None
    norms = np.load(io.BytesIO(data["norms"]), allow_pickle=False)
    if whole and norms.shape[0] != store.n_rows:
        raise FactraceError(f"{store.path}: task {name!r} covers {norms.shape[0]} rows, the "
                            f"store has {store.n_rows}; add the task again")
    return saved["ids"], saved["y"], norms
