"""``compare``: the ablation ladder and the baselines on one corpus, measured the same way.

The ladder's rungs differ only in the optimizer correction (none / factored), R^{-1/2} and the
unit norm, so the corpus is projected once per correction and every rung is derived from those
projections (the same mathematics as ``scan``: R_train on evenly spaced corpus rows, R_eval on
the queries, float16 encodings scored against float32 queries). Tail-patch runs once over the
union of every method's top-k per query, and each method's score is read from it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from factrace.config import variant_config
from factrace.data.atomic import atomic_write
from factrace.data.corpus import iter_corpus, validate_corpus
from factrace.data.io import Ranking, read_qrels, read_queries, write_rankings
from factrace.data.outputs import check_at_least, check_output_dir
from factrace.encode.encoder import Encoder, unit_normalize
from factrace.encode.hessian import Decomposed, RAccumulator, decompose, whiten
from factrace.errors import FactraceError
from factrace.evaluate.baselines import bm25_rankings, dense_rankings, random_rankings
from factrace.evaluate.ladder import LADDER, findings, results_rows
from factrace.evaluate.metrics import check_coverage, mean_stderr
from factrace.evaluate.tail_patch import TailPatchResult, tail_patch
from factrace.model.load import load_model
from factrace.model.modules import coverage, discover
from factrace.model.optimizer_state import load_optimizer_state
from factrace.run.fit import sample_passages
from factrace.run.progress import progress_bar, progress_step, say_coverage
from factrace.search.topk import exact_topk

BASELINES = ("bm25", "bm25+target", "dense", "random")
OUTPUTS = ("rankings", "results.json", "results.md", "report.html", "mrr_vs_tail_patch.png",
           "tail_patch.json")
"""What ``compare`` writes into its output directory."""


@dataclass
class CompareConfig:
    """A ``compare`` job."""

    model: str
    optimizer_state: str | None
    """AdamW state; ``None``: give ``second_moment="estimate"`` (V estimated from the corpus)
    and, for tail-patch, ``lr`` (an SGD step)."""
    corpus: str
    queries: str
    qrels: str
    out: str
    """Directory for rankings/, results.json, results.md and report.html."""
    top_k: int = 10
    variants: tuple[str, ...] = (*LADDER, "trackstar-paper")
    baselines: tuple[str, ...] = BASELINES
    encoder_options: dict = field(default_factory=dict)
    """Options for every variant (dim, seed, damping, train_examples, …)."""
    second_moment: str | None = None
    """The optimizer correction of the variants that have one (``estimate`` without optimizer
    state); ``None``: each variant's own (``factored``)."""
    tail_patch: bool = True
    tail_patch_k: int = 10
    tail_patch_queries: int | None = None
    """Tail-patch the first N queries only (``None``: all)."""
    lr: float | None = None
    device: str | None = None
    progress: bool = True
    overwrite: bool = False
    """Replace results already in ``out`` (otherwise refused before any work)."""


def _project_all(encoder: Encoder, passages, queries, progress: bool):
    ex_ids, parts = [], []
    examples, row_of = [], {}
    for row, passage in enumerate(passages):
        for e in encoder.tokenize_passages([passage]):
            examples.append(e)
            row_of[e.id] = row
    bar = progress_bar(encoder.project(examples), desc=f"projecting ({encoder.config.second_moment})",
                       enabled=progress, unit="batch")
    for ids, p in bar:
        ex_ids.extend(ids)
        parts.append(p.cpu())
    _, q = encoder.encode_queries(queries)  # no R, no unit norm: the raw p, in query order
    rows = np.array([row_of[i] for i in ex_ids])
    return ex_ids, rows, torch.cat(parts), q


def _rank(psi_q: torch.Tensor, ids: list[str], psi: torch.Tensor, queries, k: int) -> list[Ranking]:
    return exact_topk(psi_q.numpy(), [(ids, psi.half().numpy())], k).result(
        [q.id for q in queries])


def ladder_rankings(cfg: CompareConfig, loaded, state, passages, queries, n_rows: int) -> dict:
    """Rankings of every requested ladder variant.

    Variants that differ only in the damping (``trackstar``, ``trackstar-paper``) share R's
    eigendecomposition, and every variant of one correction shares R_train and R_eval."""
    projections: dict[str, tuple] = {}
    moments: dict[tuple, RAccumulator] = {}
    decompositions: dict[tuple, Decomposed] = {}
    out: dict[str, list[Ranking]] = {}
    sampled = None
    for name in cfg.variants:
        vc = variant_config(name, **cfg.encoder_options, device=cfg.device)
        if cfg.second_moment is not None and vc.second_moment != "none":
            vc = vc.replace(second_moment=cfg.second_moment)
        mode = vc.second_moment
        if mode not in projections:
            raw = Encoder(loaded, vc.replace(hessian="none", normalize=False), state)
            if mode == "estimate":
                sample = sample_passages(cfg.corpus, n_rows, vc.estimate_examples)
                with progress_step(f"estimating V from {len(sample)} passages", cfg.progress):
                    raw.fit_second_moment(raw.tokenize_passages(sample))
            projections[mode] = _project_all(raw, passages, queries, cfg.progress)
        ids, rows, p, q = projections[mode]
        enc = Encoder(loaded, vc, state)
        if vc.hessian != "none":
            if sampled is None:
                wanted = {s.id for s in sample_passages(cfg.corpus, n_rows, vc.train_examples)}
                sampled = np.array([passages[r].id in wanted for r in rows])
            spans = enc.hessian_spans()

            def moment(side, x, spans=spans, mode=mode):
                key = (mode, side, tuple(spans))
                if key not in moments:
                    moments[key] = RAccumulator(spans)
                    moments[key].add(x)
                return moments[key]

            r_train = moment("train", p[torch.from_numpy(sampled)])
            r_eval = moment("eval", q) if vc.hessian == "mixed" else None
            with progress_step(f"{name}: fitting and applying R^-1/2", cfg.progress):
                key = (mode, vc.hessian, tuple(spans), vc.lambda_, vc.lambda_k)
                if key not in decompositions:
                    decompositions[key] = decompose(vc.hessian, r_train, r_eval, vc.lambda_,
                                                    vc.lambda_k)
                enc.whitening = whiten(decompositions[key], vc.damping)
                psi, psi_q = enc.whitening.apply(p), enc.whitening.apply(q)
        else:
            psi, psi_q = p, q
        if vc.normalize:
            psi, psi_q = unit_normalize(psi), unit_normalize(psi_q)
        with progress_step(f"{name}: ranking", cfg.progress):
            out[name] = _rank(psi_q, ids, psi, queries, cfg.top_k)
    return out


def baseline_rankings(cfg: CompareConfig, passages, queries) -> dict:
    out = {}
    for name in cfg.baselines:
        with progress_step(f"baseline {name}", cfg.progress):
            out[name] = _baseline(name, cfg, passages, queries)
    return out


def _baseline(name: str, cfg: CompareConfig, passages, queries) -> list[Ranking]:
    if name == "bm25":
        return bm25_rankings(passages, queries, cfg.top_k)
    if name == "bm25+target":
        return bm25_rankings(passages, queries, cfg.top_k, with_target=True)
    if name == "dense":
        return dense_rankings(passages, queries, cfg.top_k)
    if name == "random":
        return random_rankings(passages, queries, cfg.top_k)
    raise ValueError(f"unknown baseline {name!r}")


def union_tail_patch(loaded, cfg: CompareConfig, queries, rankings: dict, texts) -> dict:
    """Tail-patch every method from one pass over the union of their top-k passages."""
    k = cfg.tail_patch_k
    selected = queries[:cfg.tail_patch_queries] if cfg.tail_patch_queries else queries
    top = {m: {r.query_id: r.doc_ids[:k] for r in ranked} for m, ranked in rankings.items()}
    union = {}
    for q in selected:
        seen = []
        for m in rankings:
            seen.extend(d for d in top[m].get(q.id, []) if d not in seen)
        union[q.id] = seen
    shared = tail_patch(loaded, cfg.optimizer_state, selected, union, texts, k=max(
        (len(v) for v in union.values()), default=1), lr=cfg.lr, progress=cfg.progress)
    out = {}
    for m in rankings:
        per_query = {}
        for q in selected:
            delta = dict(shared.per_passage.get(q.id, []))
            docs = top[m].get(q.id, [])
            per_query[q.id] = float(np.mean([delta[d] for d in docs])) if docs else 0.0
        stats = mean_stderr(list(per_query.values()))
        out[m] = TailPatchResult(stats.mean, stats.stderr, per_query, lr=shared.lr, k=k,
                                 seconds_per_query=shared.seconds_per_query)
    return out, shared


def compare(cfg: CompareConfig) -> dict:
    """Run every method, evaluate it, and write rankings, results and the report."""
    from factrace.report import build_examples, write_report

    timings = {}
    t = time.perf_counter()
    check_at_least(1, top_k=cfg.top_k, tail_patch_k=cfg.tail_patch_k,
                   tail_patch_queries=cfg.tail_patch_queries,
                   **{k: cfg.encoder_options.get(k) for k in ("dim", "train_examples")})
    if cfg.optimizer_state is None:
        if cfg.second_moment not in ("estimate", "none"):
            raise FactraceError("compare without --optimizer-state: pass --second-moment "
                                "estimate (V estimated from the corpus) or none")
        if cfg.tail_patch and cfg.lr is None:
            raise FactraceError("tail-patch without optimizer state takes one SGD step: pass "
                                "--lr, or --no-tail-patch")
    check_output_dir(cfg.out, OUTPUTS, cfg.overwrite)
    queries = read_queries(cfg.queries)
    qrels = read_qrels(cfg.qrels)
    check_coverage([q.id for q in queries], qrels, cfg.queries, cfg.qrels)
    info = validate_corpus(cfg.corpus)
    passages = list(iter_corpus(cfg.corpus))
    texts = {p.id: p.text for p in passages}
    loaded = load_model(cfg.model, cfg.device, "float32")
    covered = coverage(loaded.model, discover(loaded.model))
    say_coverage(covered, cfg.progress)
    state = None
    if cfg.optimizer_state is not None:
        state = load_optimizer_state(cfg.optimizer_state, loaded.model)
    timings["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rankings = ladder_rankings(cfg, loaded, state, passages, queries, info.n_rows)
    timings["ladder_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rankings.update(baseline_rankings(cfg, passages, queries))
    timings["baselines_s"] = time.perf_counter() - t
    out = Path(cfg.out)
    for name, ranked in rankings.items():
        write_rankings(out / "rankings" / f"{name}.jsonl", ranked)
    patched, shared = {}, None
    if cfg.tail_patch:
        t = time.perf_counter()
        patched, shared = union_tail_patch(loaded, cfg, queries, rankings, texts)
        timings["tail_patch_s"] = time.perf_counter() - t
        with atomic_write(out / "tail_patch.json", "w") as f:
            json.dump(shared.to_dict(), f)
    rows = results_rows(rankings, qrels, patched)
    found = findings(rows)
    examples = build_examples(queries, qrels, rankings, texts)
    metadata = {"model": cfg.model, "corpus": cfg.corpus, "corpus_rows": info.n_rows,
                "queries": len(queries), "top_k": cfg.top_k,
                "encoder_options": cfg.encoder_options,
                "coverage": covered.line().removeprefix("coverage: "),
                "timings": timings,
                "tail_patch": None if shared is None else {
                    "lr": shared.lr, "k": cfg.tail_patch_k, "queries": shared.n_queries,
                    "seconds_per_query_union": shared.seconds_per_query}}
    paths = write_report(out, rows, found, examples, metadata)
    return {"rows": rows, "findings": found, "paths": paths, "metadata": metadata}
