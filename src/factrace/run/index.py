"""``index build``, ``index add``, ``index task add`` and ``index approx``: the jobs that write the
store users keep (its files are :mod:`factrace.store`'s).

A store keeps, per passage, its corrected projection rotated into R_train's eigenbasis and unit
normalised (float16), and the fitted encoder state (:class:`~factrace.encode.state.EncoderState`:
R_train's eigenbasis, V when estimated). What depends on the questions — R_eval, λ, the
whitening — is applied when they are asked (:mod:`factrace.encode.whitening`), so ``trace
--queries Q`` ranks exactly as ``scan --queries Q`` would. A *task* is a named query set whose
R_eval is kept with the store (with every row's norm under it), for questions too few to define
R_eval themselves. An interrupted build or addition resumes at the first missing shard; one
process writes a store at a time (:func:`~factrace.store.lock.write_lock`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from factrace.config import EncoderConfig
from factrace.data.corpus import iter_corpus, validate_corpus
from factrace.data.io import read_queries
from factrace.data.outputs import check_output_dir
from factrace.data.sources import Source, source_meta
from factrace.encode.encoder import Encoder
from factrace.encode.state import EncoderState
from factrace.errors import FactraceError, FactraceWarning
from factrace.run.fit import fit
from factrace.run.jobs import EncodingJob, row_ranges
from factrace.run.progress import progress_bar, progress_step, row_progress, say_coverage
from factrace.store import manifest as mf
from factrace.store import tasks
from factrace.store.encodings import EncodingStore, StoreWriter
from factrace.store.ids import first_repeat
from factrace.store.locations import Locations
from factrace.store.lock import write_lock

STATE_FILE = "encoder_state.pt"
FINGERPRINT_LABELS = {
    "model": "model weights",
    "tokenizer": "tokenizer",
    "encoder": "encoder configuration",
    "seed": "projection seed",
    "dim": "projection dimension",
    "second_moment": "optimizer correction (second moment)",
    "hessian": "R_train (Hessian approximation)",
}


@dataclass(kw_only=True)
class IndexConfig(EncodingJob):
    """An ``index build`` job."""

    out: str
    """Store directory to build (or resume)."""
    queries: str | Source | None = None
    """Optional: a query set whose R_eval becomes the store's default task."""
    task_name: str = "default"
    """Name of that task."""
    overwrite: bool = False
    """Replace a store already at ``out`` by a new one (otherwise it is resumed, or left as it
    is when complete)."""
    compact: bool = False
    """Keep codes instead of rows (:class:`~factrace.search.approx.Codec`): a two-stage search
    re-encodes its candidates for their exact scores."""
    compact_spec: str | None = None
    """FAISS spec of the codes (default :func:`~factrace.search.approx.default_spec`)."""
    compact_train_rows: int | None = None
    """Rows (the corpus's first) the codes are trained on (default: 10,000, at most 2 GiB of
    float32)."""


def _check_store_path(path: Path) -> None:
    """Refuse, before any work, a store path that cannot become a store."""
    check_output_dir(path)
    if (path.is_dir() and not (path / mf.MANIFEST).is_file()
            and any(not mf.is_bookkeeping(p) for p in path.iterdir())):
        raise FactraceError(
            f"{path} is not empty and has no {mf.MANIFEST}; choose an empty or new directory"
        )


def rows_fingerprint(corpus: str, start: int, stop: int) -> str:
    """sha256 of the ids and texts of corpus rows ``[start, stop)``: what a shard encodes."""
    digest = hashlib.sha256()
    for passage in iter_corpus(corpus, start=start, stop=stop):
        digest.update(json.dumps([passage.id, passage.text], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _earlier_build(path: Path, corpus: str, n_rows: int) -> dict | None:
    """The manifest of a store already at ``path`` (None: there is none), after checking that
    every shard it built from ``corpus`` was encoded from the corpus rows it has now.

    Raises:
        FactraceError: the corpus has another number of rows, or a shard's rows changed.
    """
    if not (path / mf.MANIFEST).is_file():
        return None
    manifest = mf.read_manifest(path)
    built_rows = manifest["config"].get("corpus_rows")
    advice = "pass --overwrite to rebuild the store, or restore the corpus it was built from"
    if built_rows is not None and built_rows != n_rows:
        raise FactraceError(f"{path}: the store was built from {built_rows} corpus rows, "
                            f"{corpus} now has {n_rows}; {advice}")
    shard_rows = manifest["config"].get("shard_rows")
    n_built = len(row_ranges(n_rows, shard_rows)) if shard_rows else 0
    for index, entry in enumerate(manifest["shards"][:n_built]):
        start, stop = index * shard_rows, min((index + 1) * shard_rows, n_rows)
        if rows_fingerprint(corpus, start, stop) != entry.get("inputs_sha256"):
            raise FactraceError(f"{path}: {entry['name']} was encoded from rows {start}-{stop - 1}"
                                f" of {corpus}, which have changed since; {advice}")
    return manifest


def _version() -> str:
    from importlib.metadata import version

    return version("factrace")


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def absolute(path: str | None) -> str | None:
    """``path`` made absolute (symbolic links kept), ``None`` kept."""
    return None if path is None else os.path.abspath(path)


def _encode_shards(results, writer: StoreWriter, corpus: str, ranges: list[tuple[int, int]],
                   progress: bool, desc: str, engine=None) -> None:
    """Write the encodings ``results`` of corpus rows ``ranges`` (``(ids, rows)`` each, in
    order) as ``writer``'s next shards (a bar in rows, batch by batch on a local ``engine``).
    A compact store gets their codes: the first shards wait in memory until its codec is
    trained on them (:func:`_codec`)."""
    bar = row_progress(engine, results, ranges, desc, progress)
    codec = _saved_codec(writer) if writer.compact else None
    waiting = []
    for (start, stop), (ids, rows) in zip(ranges, bar, strict=True):
        inputs = rows_fingerprint(corpus, start, stop)
        if not writer.compact:
            writer.write_shard(writer.done_shards, ids, rows, inputs=inputs)
            continue
        waiting.append((ids, rows, inputs))
        if codec is None and sum(len(w[0]) for w in waiting) < _codec_rows(writer) \
                and stop < ranges[-1][1]:
            continue
        if codec is None:
            codec = _codec(writer, np.concatenate([w[1] for w in waiting]), progress)
        for ids, rows, inputs in waiting:
            writer.write_code_shard(writer.done_shards, ids, codec.encode(rows), inputs=inputs)
        waiting = []


def _codec_rows(writer: StoreWriter) -> int:
    """Rows a compact store's codec is trained on: the requested number, or 10,000 (at most
    :data:`~factrace.search.approx.TRAIN_BYTES` as float32)."""
    from factrace.search.approx import TRAIN_BYTES

    asked = writer.manifest["compact"].get("train_rows")
    return asked or max(1, min(10_000, TRAIN_BYTES // (4 * writer.manifest["dim"])))


def _codec(writer: StoreWriter, rows: np.ndarray, progress: bool):
    """Train the compact store's codec on ``rows``, save it and record it."""
    from factrace.search.approx import CODEC_FILE, Codec

    entry = writer.manifest["compact"]
    with progress_step(f"training the codes ({entry['requested']}) on {len(rows)} rows",
                       progress):
        codec = Codec.train(rows, entry["requested"])
    sha = mf.write_bytes_atomic(writer.path / CODEC_FILE, codec.to_bytes())
    writer.set("compact", {**entry, **codec.entry(), "file": CODEC_FILE, "sha256": sha})
    return codec


def _saved_codec(writer: StoreWriter):
    """The codec a compact store recorded (None: not trained yet), checked."""
    from factrace.search.approx import Codec

    entry = writer.manifest["compact"]
    if "file" not in entry:
        return None
    return Codec.load(writer.path, entry, "rebuild the store with --overwrite")


def build_index(cfg: IndexConfig) -> EncodingStore:
    """Build (or resume) an encoding store of every passage of the corpus."""
    cfg.check_options()
    path = Path(cfg.out)
    _check_store_path(path)
    queries = read_queries(cfg.queries) if cfg.queries else []
    if queries:
        tasks.check_name(cfg.task_name)
    info = validate_corpus(cfg.corpus)
    with write_lock(path):
        earlier = None if cfg.overwrite else _earlier_build(path, cfg.corpus, info.n_rows)
        engine = cfg.make_engine()
        try:
            encoder = engine.encoder
            kept = None
            if earlier is not None and "state" in earlier:
                # the state fitted by the earlier run (a store made with another model or
                # configuration is still refused, by its fingerprints)
                state = EncoderState.load(path / STATE_FILE, earlier["state"]["sha256"])
                engine.broadcast("set_state", state)
                record = earlier["config"].get("fit", {})
            else:
                record, kept = fit(engine, cfg.corpus, info.n_rows, cfg.progress)
            rows = cfg.rows_per_shard(encoder.dim)
            # absolute paths: the store is used later, from any working directory
            config = {"encoder": encoder.metadata(), "model": absolute(cfg.model),
                      "optimizer_state": absolute(cfg.optimizer_state),
                      **source_meta("corpus", cfg.corpus, absolute(cfg.corpus)),
                      "corpus_rows": info.n_rows,
                      "shard_rows": rows, "fit": record, "factrace": _version()}
            if cfg.overwrite and path.is_dir():
                for child in path.iterdir():
                    if child.name != mf.LOCK:
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
            writer = StoreWriter.create_or_resume(path, encoder.fingerprints(), encoder.dim,
                                                  config)
            if "state" not in writer.manifest:
                sha = encoder.state().save(path / STATE_FILE)
                writer.set("state", {"file": STATE_FILE, "sha256": sha})
            _plan_compact(writer, cfg, encoder.dim)
            # a resumed store keeps the shard size it was started with
            rows = writer.manifest["config"].get("shard_rows", rows)
            ranges = row_ranges(info.n_rows, rows)
            if writer.complete:
                _say(cfg.progress, f"store {cfg.out} is already complete ({len(ranges)} shards)")
            else:
                if writer.done_shards:
                    _say(cfg.progress, f"resuming {cfg.out} at shard {writer.done_shards + 1} "
                                       f"of {len(ranges)}")
                todo = ranges[writer.done_shards:]
                if kept is not None:  # the R_train pass encoded every passage already
                    results = kept.shards(encoder, todo)
                else:
                    results = engine.map("encode_rows",
                                         [(cfg.corpus, a, b) for a, b in todo])
                _encode_shards(results, writer, cfg.corpus, todo, cfg.progress,
                               "encoding corpus", engine)
                _finish(writer, 0, cfg.corpus, cfg.progress)
            store = EncodingStore.open(path, verify=False)
            if queries:
                if encoder.config.hessian != "mixed":
                    import warnings

                    warnings.warn(f"--queries ignored: with --hessian "
                                  f"{encoder.config.hessian} R does not depend on the queries",
                                  FactraceWarning, stacklevel=2)
                else:
                    _add_task(store, encoder, queries, cfg.task_name, absolute(cfg.queries),
                              default=True, progress=cfg.progress)
        finally:
            engine.close()
    return EncodingStore.open(path, verify="once")


def _plan_compact(writer: StoreWriter, cfg: IndexConfig, dim: int) -> None:
    """Record that the store keeps codes (``--compact``), or refuse to resume a store with the
    other kind of shards."""
    from factrace.search.approx import default_spec

    if writer.compact != cfg.compact and writer.done_shards:
        kept = "codes (--compact)" if writer.compact else "rows"
        raise FactraceError(f"{writer.path} keeps {kept}; resume it as it was begun, or pass "
                            "--overwrite to rebuild it")
    if cfg.compact and not writer.compact:
        writer.set("compact", {"requested": cfg.compact_spec or default_spec(dim),
                               "train_rows": cfg.compact_train_rows})


def _finish(writer: StoreWriter, position: int, corpus: str, progress: bool) -> None:
    """Complete a build (``position`` 0) or an addition: no two rows of one id, the corpus's
    location table recorded, the store marked complete."""
    store = EncodingStore(writer.path, writer.manifest)
    repeated = first_repeat(store.ids)
    if repeated is not None:
        raise FactraceError(
            f"{corpus}: two rows of the store would have the id {repeated!r} (a passage's "
            f"window ids are <id>#<n>, and another passage has this id); rename one of them")
    if len(writer.manifest.get("locations", [])) <= position:
        _say(progress, f"recording where the passages of {corpus} are")
        writer.record_locations(position, Locations.build(corpus))
    writer.finish()


# tasks -------------------------------------------------------------------------------------------
def store_norms(store: EncodingStore, task, start_row: int = 0, progress: bool = False,
                chunk_rows: int = 1024) -> np.ndarray:
    """Every stored row's norm under ``task`` (from row ``start_row`` on), float32."""
    out = []
    row = 0
    shards = progress_bar(store.iter_shards(), total=store.n_shards, desc="row norms",
                          enabled=progress, unit="shard")
    for _, encodings in shards:
        n = encodings.shape[0]
        if row + n > start_row:
            first = max(start_row - row, 0)
            for s in range(first, n, chunk_rows):
                chunk = torch.from_numpy(np.asarray(encodings[s:s + chunk_rows], np.float32))
                out.append(task.norms(chunk).numpy())
        row += n
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _add_task(store: EncodingStore, encoder: Encoder, queries, name: str, source: str | None,
              default: bool, progress: bool) -> dict:
    """Encode ``queries``, keep their rotated projections (R_eval) and every row's norm under
    the task (:mod:`factrace.store.tasks`; ``default``: as the store's default task)."""
    with progress_step(f"task {name}: encoding {len(queries)} queries", progress):
        ids, y = encoder.query_vectors(queries)
    task = encoder.task(y)
    # a compact store's rows get their norms when re-encoded
    norms = None if store.compact else store_norms(store, task, progress=progress)
    facts = {"queries": source, "n_queries": len(queries), "n_examples": len(ids),
             "lambda": task.lam}
    return tasks.save(store, name, ids, y, norms, facts, default)


@dataclass
class TaskConfig:
    """An ``index task add`` job."""

    index: str
    queries: str | Source
    name: str
    default: bool = False
    model: str | None = None
    optimizer_state: str | None = None
    device: str | None = None
    progress: bool = True


def add_task(cfg: TaskConfig) -> dict:
    """Add (or replace) the task ``cfg.name``: R_eval from ``cfg.queries``."""
    tasks.check_name(cfg.name)
    queries = read_queries(cfg.queries)
    with write_lock(cfg.index):
        _refuse_unfinished_addition(cfg.index)
        store = EncodingStore.open(cfg.index, verify="once")
        encoder = open_encoder_for(store, cfg.model, cfg.optimizer_state, cfg.device,
                                   cfg.progress)
        if encoder.config.hessian != "mixed":
            raise FactraceError(f"{cfg.index}: the store's R does not depend on queries "
                                f"(--hessian {encoder.config.hessian}); tasks need --hessian mixed")
        return _add_task(store, encoder, queries, cfg.name, absolute(cfg.queries), cfg.default,
                         cfg.progress)


def load_task(store: EncodingStore, name: str
              ) -> tuple[list[str], torch.Tensor, np.ndarray | None]:
    """A task's query ids, rotated projections ``[T, d]`` and row norms ``[n_rows]`` (None in
    a compact store): :func:`factrace.store.tasks.load`."""
    return tasks.load(store, name)


# opening a store for queries ---------------------------------------------------------------------
def _recorded(store: EncodingStore, path: str | None, what: str, flag: str) -> str | None:
    """A path the store recorded, checked to exist: a store outlives where its inputs were."""
    if path is not None and not Path(path).exists():
        relative = "" if Path(path).is_absolute() else f" (relative to {os.getcwd()})"
        raise FactraceError(f"{store.path}: the store was built with {what} {path}, which is not "
                            f"there{relative}; pass {flag} to say where it is now")
    return path


def store_encoder_config(store: EncodingStore, device: str | None = None) -> EncoderConfig:
    """The store's encoder configuration (its resolved d), for this machine's device."""
    recorded = store.config["encoder"]
    # a few queries never repay a compilation, whatever the store was built with; the recorded
    # d is the resolved one (the default d differs between CPU and CUDA)
    enc_cfg = EncoderConfig.from_dict(recorded["config"]).replace(compile=False)
    if enc_cfg.projection != "exact":
        enc_cfg = enc_cfg.replace(dim=recorded["dim"])
    if device is not None:
        enc_cfg = enc_cfg.replace(device=device)
    # the dtype the rows were encoded in, whatever this machine's default
    return enc_cfg.replace(dtype=recorded.get("dtype", enc_cfg.dtype))


def store_state(store: EncodingStore) -> EncoderState:
    """The encoder state saved with ``store``, checked against the manifest's checksum."""
    state = store.manifest.get("state")
    if state is None:
        raise FactraceError(f"{store.path}: the store records no encoder state; rebuild it")
    return EncoderState.load(store.path / state["file"], state["sha256"])


def open_encoder_for(store: EncodingStore, model: str | None, optimizer_state: str | None,
                     device: str | None = None, progress: bool = False) -> Encoder:
    """The store's own encoder (its configuration and fitted state), checked against it
    (``progress``: say its coverage on stderr)."""
    config = store.config
    model = model or _recorded(store, config["model"], "model", "--model")
    optimizer_state = optimizer_state or _recorded(store, config["optimizer_state"],
                                                   "optimizer state", "--optimizer-state")
    encoder = Encoder.load(model, optimizer_state, store_encoder_config(store, device))
    say_coverage(encoder.coverage, progress)
    encoder.set_state(store_state(store))
    phrases = mf.fingerprint_differences(store.fingerprints, encoder.fingerprints(),
                                         FINGERPRINT_LABELS)
    if phrases:
        raise FactraceError(mf.mismatch_message(
            store.path, phrases, "rebuild the store with the current settings or open a "
            "matching one"))
    return encoder


# growing a store ---------------------------------------------------------------------------------
@dataclass
class AddConfig:
    """An ``index add`` job: append a corpus to a store, encoded as the store's own rows."""

    index: str
    corpus: str | Source
    model: str | None = None
    optimizer_state: str | None = None
    device: str | None = None
    progress: bool = True


def add_to_index(cfg: AddConfig) -> EncodingStore:
    """Append ``cfg.corpus`` (resumable; duplicate ids refused before any encoding)."""
    from factrace.run.worker import encode_rows

    info = validate_corpus(cfg.corpus)
    with write_lock(cfg.index):
        # an unfinished addition's manifest, or (older stores) a manifest left incomplete
        unfinished = mf.read_pending(Path(cfg.index))
        manifest = unfinished or mf.read_manifest(Path(cfg.index))
        additions = manifest.get("additions", [])
        pending = additions[-1] if additions and (unfinished or not additions[-1]["complete"]) \
            else None
        corpus = absolute(cfg.corpus)
        if pending is not None and pending["corpus"] != corpus:
            raise FactraceError(f"{cfg.index}: an addition of {pending['corpus']} was "
                                f"interrupted; run `factrace index add` with that corpus "
                                "first to finish it")
        if pending is None and not manifest["complete"]:
            raise FactraceError(f"encoding store {cfg.index} is incomplete; resume its build "
                                "first")
        store = EncodingStore(Path(cfg.index), manifest)
        known_rows = sum(e["rows"] for e in manifest["shards"][:pending["first_shard"]]) \
            if pending else store.n_rows
        if pending is None:
            _refuse_duplicates(store, cfg.corpus)
        encoder = open_encoder_for(store, cfg.model, cfg.optimizer_state, cfg.device,
                                   cfg.progress)
        writer = StoreWriter.reopen(cfg.index, encoder.fingerprints(), encoder.dim)
        if pending is None:
            pending = {"corpus": corpus, "rows": info.n_rows, "first_shard": writer.done_shards,
                       "shard_rows": manifest["config"]["shard_rows"], "complete": False}
            additions = [*additions, pending]
            writer.set("additions", additions)
        elif pending["rows"] != info.n_rows or any(
                rows_fingerprint(cfg.corpus, start, stop)
                != writer.manifest["shards"][pending["first_shard"] + i].get("inputs_sha256")
                for i, (start, stop) in enumerate(row_ranges(
                    info.n_rows, pending["shard_rows"])[:writer.done_shards
                                                         - pending["first_shard"]])):
            raise FactraceError(f"{cfg.corpus} changed since its addition to {cfg.index} was "
                                "interrupted; restore it and run `factrace index add` again")
        ranges = row_ranges(info.n_rows, pending["shard_rows"])
        done = writer.done_shards - pending["first_shard"]
        if done:
            _say(cfg.progress, f"resuming the addition at shard {done + 1} of {len(ranges)}")
        results = (encode_rows(encoder, cfg.corpus, a, b) for a, b in ranges[done:])
        _encode_shards(results, writer, cfg.corpus, ranges[done:], cfg.progress,
                       "encoding the addition")
        # every task's row norms, extended to the new rows
        grown = EncodingStore(Path(cfg.index), writer.manifest)
        kept = dict(writer.manifest.get("tasks", {}))
        for name, entry in kept.items():
            if "norms" not in entry:  # a compact store's task
                kept[name] = {**entry, "rows": grown.n_rows}
                continue
            _, y, norms = tasks.load(grown, name, whole=False)
            new = store_norms(grown, encoder.task(y), start_row=known_rows)
            kept[name] = tasks.replace_norms(grown, name, np.concatenate([norms[:known_rows],
                                                                          new]))
        writer.set("tasks", kept)
        if "approx" in writer.manifest:  # the saved index gets the new rows' codes, untrained
            from factrace.search.approx import extend_saved

            extend_saved(EncodingStore(Path(cfg.index), writer.manifest), writer.set)
        pending["complete"] = True
        writer.set("additions", [*additions[:-1], pending])
        _finish(writer, len(additions), cfg.corpus, cfg.progress)
    return EncodingStore.open(cfg.index, verify="once")


# the saved approximate index ------------------------------------------------------------------
@dataclass
class ApproxConfig:
    """An ``index approx`` job: train a FAISS index once and keep it with the store."""

    index: str
    spec: str | None = None
    """FAISS factory spec (default :func:`~factrace.search.approx.default_spec`, ``PQ{d/2}x4fs``,
    cut to what the training rows support)."""
    train_rows: int | None = None
    """Rows sampled for training (default: FAISS's needs, at most about 2 GiB of float32)."""
    seed: int = 0


def build_approx(cfg: ApproxConfig) -> dict:
    """Train the index on a sample of the stored rows (rotated, unit norm), add every row, and
    save it into the store (replacing an earlier one); returns its manifest entry."""
    from factrace.search.approx import ApproxIndex, default_spec

    with write_lock(cfg.index):
        _refuse_unfinished_addition(cfg.index)
        store = EncodingStore.open(cfg.index, verify="once")
        if store.compact:
            raise FactraceError(f"{cfg.index} is a compact store: its codes are its approximate "
                                "index already")
        spec = cfg.spec or default_spec(store.dim)
        approx = ApproxIndex.build(store, spec, train_rows=cfg.train_rows, seed=cfg.seed)
        return approx.save(store)


def _refuse_unfinished_addition(index: str) -> None:
    """An interrupted ``index add`` is finished before the store takes other changes."""
    pending = mf.read_pending(Path(index))
    if pending is not None:
        corpus = pending.get("additions", [{}])[-1].get("corpus")
        raise FactraceError(f"{index}: an addition of {corpus} was interrupted; run `factrace "
                            "index add` with that corpus first to finish it")


def _refuse_duplicates(store: EncodingStore, corpus: str) -> None:
    have = set(store.ids)
    for passage in iter_corpus(corpus):
        if passage.id in have or store.is_passage(passage.id):
            raise FactraceError(f"{corpus}: passage id {passage.id!r} is already in the store "
                                f"{store.path}; ids must be unique")
