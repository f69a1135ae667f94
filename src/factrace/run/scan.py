"""``scan``: the paper's mode. Fit R on a corpus sample and the queries, then one streaming pass
over the corpus that encodes, whitens, normalises and scores every passage against every query,
keeping only the top-k proponents and bottom-k opponents per query.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from factrace.data.atomic import atomic_write
from factrace.data.corpus import validate_corpus
from factrace.data.io import Ranking, read_queries, write_rankings
from factrace.data.outputs import META_SUFFIX, check_at_least, check_output_file, meta_path
from factrace.data.sources import Source, source_meta
from factrace.encode.budget import peak_rss
from factrace.run.fit import fit
from factrace.run.jobs import EncodingJob, row_ranges
from factrace.run.progress import progress_step, row_progress
from factrace.run.worker import POSITIONS_PER_ROW
from factrace.search.full import check_size, from_kept, write_scores
from factrace.search.topk import TopK, exact_topk


@dataclass(kw_only=True)
class ScanConfig(EncodingJob):
    """A ``scan`` job."""

    queries: str | Source
    """Queries JSONL (id, prompt, target)."""
    out: str | None = None
    """Rankings JSONL to write (and ``<out>.meta.json`` beside it); ``None`` → not written."""
    top_k: int = 10
    """Proponents (and opponents) kept per query."""
    overwrite: bool = False
    """Replace an existing ``out`` (otherwise refused before any work)."""
    scores_out: str | None = None
    """Also write every (query, passage) score to this ``.npz`` (:mod:`factrace.search.full`),
    refused up front when larger than ``scores_max_gib`` or the free disk."""
    scores_max_gib: float = 4.0
    """Largest ``scores_out`` file allowed, in GiB."""


@dataclass
class ScanResult:
    rankings: list[Ranking]
    metadata: dict


def write_with_metadata(out: str, rankings: list[Ranking], metadata: dict) -> None:
    """Rankings and ``<out>.meta.json`` (how they were made), each written atomically."""
    write_rankings(out, rankings)
    with atomic_write(meta_path(out), "w") as f:
        json.dump(metadata, f, indent=2, default=str)



def scan(cfg: ScanConfig) -> ScanResult:
    """Run a scan; validates every input before any model work, writes outputs atomically."""
    t0 = time.perf_counter()
    cfg.check_options()
    check_at_least(1, top_k=cfg.top_k)
    if cfg.out:
        check_output_file(cfg.out, [META_SUFFIX], cfg.overwrite)
    if cfg.scores_out:
        check_output_file(cfg.scores_out, overwrite=cfg.overwrite)
    queries = read_queries(cfg.queries)
    info = validate_corpus(cfg.corpus)
    if cfg.scores_out:
        check_size(cfg.scores_out, len(queries), info.n_rows, int(cfg.scores_max_gib * 2**30))
    keep = bool(cfg.scores_out)
    engine = cfg.make_engine()
    try:
        timings = {"validate_s": time.perf_counter() - t0}
        t = time.perf_counter()
        record, kept = fit(engine, cfg.corpus, info.n_rows, cfg.progress)
        with progress_step("encoding queries", cfg.progress):
            _, y = engine.encoder.query_vectors(queries)
        # R_eval and λ from these very queries (TrackStar's task-specific R)
        with progress_step(f"R_eval and λ from {len(queries)} queries", cfg.progress):
            task = engine.encoder.task(y)
            scorer = task.scorer(y, own=True)
        timings["fit_s"] = time.perf_counter() - t
        t = time.perf_counter()
        tasks = [(cfg.corpus, start, stop, scorer, cfg.top_k, keep) for start, stop
                 in row_ranges(info.n_rows, cfg.rows_per_shard(engine.encoder.dim))]
        total = TopK(len(queries), cfg.top_k)
        ranges = [(start, stop) for _, start, stop, *_ in tasks]
        if kept is not None:  # the R_train pass encoded every passage already
            partials = (exact_topk(scorer, [(ids, rows)] if ids else [], cfg.top_k,
                                   row_offset=start * POSITIONS_PER_ROW, keep_scores=keep)
                        for (start, _), (ids, rows) in zip(
                            ranges, kept.shards(engine.encoder, ranges), strict=True))
            record["corpus_pass"] = "reused the R_train pass's encodings"
        else:
            partials = engine.map("scan_rows", tasks)
        for partial in row_progress(engine, partials, ranges, "scanning corpus",
                                    cfg.progress):
            total.merge(partial)
        timings["scan_s"] = time.perf_counter() - t
        rankings = total.result([q.id for q in queries])
        metadata = {
            "command": "scan",
            "model": str(cfg.model),
            "optimizer_state": cfg.optimizer_state,
            **source_meta("corpus", cfg.corpus),
            "corpus_rows": info.n_rows,
            **source_meta("queries", cfg.queries),
            "top_k": cfg.top_k,
            "engine": cfg.engine,
            "encoder": engine.encoder.metadata(task),
            "fingerprints": engine.encoder.fingerprints(),
            "fit": record,
            "token_budgets": engine.encoder.budget_report(),
            "peak_rss_bytes": peak_rss(),
            "timings": timings,
        }
    finally:
        engine.close()
    if cfg.out:
        write_with_metadata(cfg.out, rankings, metadata)
    if cfg.scores_out:
        write_scores(cfg.scores_out, from_kept(total.kept or [], [q.id for q in queries],
                                               "scan"))
    return ScanResult(rankings, metadata)
