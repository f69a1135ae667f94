"""``index build`` and ``trace``: a persistent encoding store for interactive use.

The store keeps float16 ψ of every passage, the encoder configuration, and the fitted state
(R^{-1/2}; V when estimated) in ``encoder_state.pt``, so ``trace`` encodes queries exactly as the
passages were encoded. An interrupted build resumes at the first missing shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from factrace.config import EncoderConfig
from factrace.data.atomic import atomic_path
from factrace.data.corpus import iter_corpus, validate_corpus
from factrace.data.io import Ranking, read_queries
from factrace.data.outputs import check_at_least, check_output_dir, check_output_file
from factrace.encode.encoder import Encoder
from factrace.encode.hessian import Whitening
from factrace.encode.second_moment import Correction
from factrace.errors import FactraceError
from factrace.run.fit import fit
from factrace.run.jobs import EncodingJob, row_ranges
from factrace.run.progress import progress_bar
from factrace.run.scan import META_SUFFIX, ScanResult, to_rankings, write_with_metadata
from factrace.search import manifest as mf
from factrace.search.approx import ApproxIndex, recall_at_k
from factrace.search.store import EncodingStore, StoreWriter
from factrace.search.topk import exact_topk

STATE_FILE = "encoder_state.pt"
FINGERPRINT_LABELS = {
    "model": "model weights",
    "tokenizer": "tokenizer",
    "encoder": "encoder configuration",
    "seed": "projection seed",
    "dim": "projection dimension",
    "second_moment": "optimizer correction (second moment)",
    "hessian": "Hessian approximation R",
}


@dataclass(kw_only=True)
class IndexConfig(EncodingJob):
    """An ``index build`` job."""

    out: str
    """Store directory to build (or resume)."""
    queries: str | None = None
    """Queries for R_eval; required by ``--hessian mixed`` (TrackStar)."""
    overwrite: bool = False
    """Replace a store already at ``out`` by a new one (otherwise it is resumed, or left as it
    is when complete)."""


def _save_state(path: Path, encoder: Encoder) -> None:
    w = encoder.whitening
    state = {
        "whitening": {"spans": w.spans, "mode": w.mode, "lam": w.lam, "k": w.k,
                      "damping": w.damping, "n_train": w.n_train, "n_eval": w.n_eval,
                      "blocks": [torch.from_numpy(b) for b in w.blocks] if w.blocks else None},
        "second_moment_note": encoder.second_moment_note,
        "corrections": None,
    }
    if encoder.config.second_moment == "estimate":
        state["corrections"] = {n: {"row": c.row, "col": c.col}
                                for n, c in encoder._corrections.items()}
    buffer = io.BytesIO()  # not the temporary file: torch records its name inside the archive
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _load_state(path: Path, encoder: Encoder) -> None:
    if not path.is_file():
        raise FactraceError(f"{path.parent}: encoding store has no {STATE_FILE}; rebuild it")
    state = torch.load(path, map_location="cpu", weights_only=True)
    w = state["whitening"]
    blocks = [b.numpy() for b in w["blocks"]] if w["blocks"] is not None else None
    encoder.whitening = Whitening([tuple(s) for s in w["spans"]], blocks, w["mode"], w["lam"],
                                  w["k"], w["damping"], w["n_train"], w["n_eval"])
    if state["corrections"] is not None:
        encoder._corrections = {n: Correction(row=c["row"], col=c["col"])
                                for n, c in state["corrections"].items()}
    encoder.second_moment_note = state["second_moment_note"]


def _check_store_path(path: Path) -> None:
    """Refuse, before any work, a store path that cannot become a store."""
    check_output_dir(path)
    if (path.is_dir() and not (path / mf.MANIFEST).is_file()
            and any(not mf.is_tmp(p) for p in path.iterdir())):
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
    every shard it holds was encoded from the corpus rows it has now.

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
    for index, entry in enumerate(manifest["shards"]):
        recorded = entry.get("inputs_sha256")
        if recorded is None or shard_rows is None:
            continue  # a store from before input fingerprints were recorded
        start, stop = index * shard_rows, min((index + 1) * shard_rows, n_rows)
        if rows_fingerprint(corpus, start, stop) != recorded:
            raise FactraceError(f"{path}: {entry['name']} was encoded from rows {start}-{stop - 1}"
                                f" of {corpus}, which have changed since; {advice}")
    if not (path / STATE_FILE).is_file():
        return None
    return manifest


def _say(cfg: IndexConfig, message: str) -> None:
    if cfg.progress:
        print(message, file=sys.stderr, flush=True)


def build_index(cfg: IndexConfig) -> EncodingStore:
    """Build (or resume) an encoding store of every passage of the corpus."""
    cfg.check_options()
    _check_store_path(Path(cfg.out))
    queries = read_queries(cfg.queries) if cfg.queries else []
    if cfg.encoder.hessian == "mixed" and not queries:
        raise FactraceError("--hessian mixed (TrackStar) needs --queries for R_eval; or use "
                            "--hessian train")
    info = validate_corpus(cfg.corpus)
    path = Path(cfg.out)
    earlier = None if cfg.overwrite else _earlier_build(path, cfg.corpus, info.n_rows)
    engine = cfg.make_engine()
    try:
        if earlier is not None and cfg.encoder.second_moment != "estimate":
            # R was fitted by the earlier run and saved with the store: reuse it (a store made
            # with another model or configuration is still refused, by its fingerprints)
            _load_state(path / STATE_FILE, engine.encoder)
            engine.broadcast("set_whitening", engine.encoder.whitening)
            record = earlier["config"].get("fit", {})
        else:
            record = fit(engine, cfg.corpus, info.n_rows, queries, cfg.progress)
        encoder = engine.encoder
        rows = cfg.rows_per_shard(encoder.dim)
        # absolute paths: the store is used later, from any working directory
        config = {"encoder": encoder.metadata(), "model": absolute(cfg.model),
                  "optimizer_state": absolute(cfg.optimizer_state), "corpus": absolute(cfg.corpus),
                  "corpus_rows": info.n_rows, "shard_rows": rows, "fit": record}
        if cfg.overwrite and (Path(cfg.out) / mf.MANIFEST).is_file():
            shutil.rmtree(cfg.out)
        writer = StoreWriter.create_or_resume(cfg.out, encoder.fingerprints(), encoder.dim, config)
        # A resumed store keeps the shard size it was started with, whatever is asked now.
        rows = writer.manifest["config"].get("shard_rows", rows)
        ranges = row_ranges(info.n_rows, rows)
        if writer.complete:
            _say(cfg, f"store {cfg.out} is already complete ({len(ranges)} shards)")
        else:
            if writer.done_shards == 0 or not (Path(cfg.out) / STATE_FILE).is_file():
                _save_state(Path(cfg.out) / STATE_FILE, encoder)
            if writer.done_shards:
                _say(cfg, f"resuming {cfg.out} at shard {writer.done_shards + 1} of {len(ranges)}")
            todo = ranges[writer.done_shards:]
            tasks = [(str(cfg.corpus), start, stop) for start, stop in todo]
            bar = progress_bar(engine.map("encode_rows", tasks), total=len(tasks),
                               desc="encoding corpus", enabled=cfg.progress, unit="shard")
            for (start, stop), (ids, psi) in zip(todo, bar, strict=True):
                writer.write_shard(writer.done_shards, ids, psi,
                                   inputs=rows_fingerprint(cfg.corpus, start, stop))
            writer.finish()
    finally:
        engine.close()
    return EncodingStore.open(cfg.out)


@dataclass
class TraceConfig:
    """A ``trace`` job against a built store."""

    index: str
    queries: str
    out: str | None = None
    top_k: int = 10
    model: str | None = None
    """Defaults to the model the store was built with."""
    optimizer_state: str | None = None
    """Defaults to the optimizer state the store was built with."""
    faiss: str | None = None
    """FAISS spec for approximate search, e.g. ``IVF256,Flat`` or ``IVF256,PQ16``."""
    nprobe: int = 16
    report_recall: bool = False
    """Also run exact search and report recall@10 of the approximate one."""
    device: str | None = None
    progress: bool = True
    overwrite: bool = False
    """Replace an existing ``out`` (otherwise refused before any work)."""


def absolute(path: str | None) -> str | None:
    """``path`` made absolute (symbolic links kept), ``None`` kept."""
    return None if path is None else os.path.abspath(path)


def _recorded(store: EncodingStore, path: str | None, what: str, flag: str) -> str | None:
    """A path the store recorded, checked to exist: a store outlives where its inputs were."""
    if path is not None and not Path(path).exists():
        relative = "" if Path(path).is_absolute() else f" (relative to {os.getcwd()})"
        raise FactraceError(f"{store.path}: the store was built with {what} {path}, which is not "
                            f"there{relative}; pass {flag} to say where it is now")
    return path


def open_encoder_for(store: EncodingStore, model: str | None, optimizer_state: str | None,
                     device: str | None = None) -> Encoder:
    """The store's own encoder (its configuration and fitted state), checked against it."""
    config = store.config
    # a few queries never repay a compilation, whatever the store was built with
    enc_cfg = EncoderConfig.from_dict(config["encoder"]["config"]).replace(compile=False)
    if device is not None:
        enc_cfg = enc_cfg.replace(device=device)
    model = model or _recorded(store, config["model"], "model", "--model")
    optimizer_state = optimizer_state or _recorded(store, config["optimizer_state"],
                                                   "optimizer state", "--optimizer-state")
    encoder = Encoder.load(model, optimizer_state, enc_cfg)
    _load_state(Path(store.path) / STATE_FILE, encoder)
    EncodingStore.open(store.path, expect=encoder.fingerprints(), verify=False,
                       labels=FINGERPRINT_LABELS)
    return encoder


def trace(cfg: TraceConfig) -> ScanResult:
    check_at_least(1, top_k=cfg.top_k, nprobe=cfg.nprobe)
    if cfg.out:
        check_output_file(cfg.out, [META_SUFFIX], cfg.overwrite)
    queries = read_queries(cfg.queries)
    store = EncodingStore.open(cfg.index)
    encoder = open_encoder_for(store, cfg.model, cfg.optimizer_state, cfg.device)
    _, query_psi = encoder.encode_queries(queries)
    query_psi = query_psi.numpy().astype(np.float32)
    metadata = {"command": "trace", "index": str(cfg.index), "queries": str(cfg.queries),
                "top_k": cfg.top_k, "encoder": encoder.metadata(),
                "fingerprints": store.fingerprints, "search": "exact"}
    exact = None
    if cfg.faiss is None or cfg.report_recall:
        exact = to_rankings(queries, exact_topk(query_psi, store, cfg.top_k))
    rankings = exact
    if cfg.faiss is not None:
        index = ApproxIndex.build(store, cfg.faiss, nprobe=cfg.nprobe)
        found = index.search(query_psi, cfg.top_k)
        rankings = [Ranking(q.id, list(r.doc_ids), [float(s) for s in r.scores])
                    for q, r in zip(queries, found, strict=True)]
        metadata["search"] = f"faiss {index.spec} nprobe={index.nprobe}"
        metadata["faiss"] = {"requested": cfg.faiss, "built": index.spec, "nlist": index.nlist,
                             "nprobe": index.nprobe, "notes": index.notes,
                             "description": index.describe()}
        if cfg.report_recall:
            k = min(10, cfg.top_k)
            metadata["recall_at_10"] = recall_at_k([r.doc_ids for r in rankings],
                                                   [r.doc_ids for r in exact], k)
    if cfg.out:
        write_with_metadata(cfg.out, rankings, metadata)
    return ScanResult(rankings, metadata)
