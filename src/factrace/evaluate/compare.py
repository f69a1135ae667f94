"""``compare``: the ablation ladder and the baselines on one corpus, measured the same way.

The ladder's rungs differ only in the optimizer correction (none / factored), R and the unit
norm, so the corpus is encoded once per correction (by ``index build``: the same engines, V
estimate and R_train as ``scan``) and every rung is scored from that encoding by the scorer
``scan`` and ``trace`` use. Tail-patch runs once over the
union of every method's top-k per query, and each method's score is read from it.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from factrace.config import EncoderConfig, variant_config
from factrace.data.atomic import atomic_write
from factrace.data.corpus import iter_corpus, validate_corpus
from factrace.data.io import Ranking, read_qrels, read_queries
from factrace.data.outputs import check_at_least, check_output_dir
from factrace.data.sources import Source, source_meta
from factrace.encode.encoder import Encoder
from factrace.encode.whitening import TaskWhitening
from factrace.errors import FactraceError
from factrace.evaluate.baselines import BASELINES, baseline_scores
from factrace.evaluate.baselines import baseline_rankings as rank_baseline
from factrace.evaluate.kinds import add_kinds, read_facts
from factrace.evaluate.ladder import LADDER, findings, results_rows
from factrace.evaluate.lds import LdsInputs
from factrace.evaluate.metrics import check_coverage, mean_stderr
from factrace.evaluate.scaling import check_checkpoints, run_scaling
from factrace.evaluate.tail_patch import TailPatchResult, tail_patch
from factrace.model.load import load_model
from factrace.model.modules import coverage, discover
from factrace.model.optimizer_state import load_optimizer_state
from factrace.run.index import IndexConfig, absolute, build_index, store_state
from factrace.run.progress import progress_step, say_coverage
from factrace.run.scan import write_with_metadata
from factrace.search.full import FullScores, from_kept, write_scores
from factrace.search.topk import exact_topk

OUTPUTS = ("rankings", "results.json", "results.md", "report.html", "mrr_vs_tail_patch.png",
           "tail_patch.json", "kinds.png", "scaling.png")
"""What ``compare`` writes into its output directory."""
SCORES_DIR = "scores"
"""Where ``compare`` (``scores=True``) writes each method's full scores."""


@dataclass
class CompareConfig:
    """A ``compare`` job."""

    model: str
    optimizer_state: str | None
    """AdamW state; ``None``: give ``second_moment="estimate"`` (V estimated from the corpus)
    and, for tail-patch, ``lr`` (an SGD step)."""
    corpus: str | Source
    queries: str | Source
    qrels: str
    out: str
    """Directory for rankings/, results.json, results.md and report.html."""
    top_k: int = 10
    variants: tuple[str, ...] = (*LADDER, "trackstar-paper")
    baselines: tuple[str, ...] = BASELINES
    encoder_options: dict = field(default_factory=dict)
    """EncoderConfig fields for every variant (dim, seed, damping, hessian_structure,
    max_length, …), each overriding the variant's own default (``device`` and the correction
    have fields of their own below)."""
    second_moment: str | None = None
    """The optimizer correction of the variants that have one (``estimate`` without optimizer
    state); ``None``: each variant's own (``factored``)."""
    tail_patch: bool = True
    tail_patch_k: int = 10
    tail_patch_queries: int | None = None
    """Tail-patch the first N queries only (``None``: all)."""
    lr: float | None = None
    engine: str = "local"
    """Where the corpus is encoded: ``local`` or ``ray`` (as ``scan``)."""
    workers: int = 2
    ray_address: str | None = None
    device: str | None = None
    progress: bool = True
    overwrite: bool = False
    """Replace results already in ``out`` (otherwise refused before any work)."""
    scaling: tuple[str, ...] = ()
    """The scaling study's checkpoints (:mod:`factrace.evaluate.scaling`), ``model`` among
    them, each with its optimizer state in its directory (or ``second_moment="estimate"``);
    empty: no study."""
    scores: bool = False
    """Also write every (query, passage) score of each method to ``out/scores/<method>.npz``
    (:mod:`factrace.search.full`; the input of LDS)."""
    lds: LdsInputs | None = None
    """Retrained models' outputs on training subsets: every method also gets its LDS
    (implies ``scores``)."""

    @property
    def keeps_scores(self) -> bool:
        """Whether every method's full scores are written (``scores``, or LDS inputs given)."""
        return self.scores or self.lds is not None


def _base_config(cfg: CompareConfig, mode: str) -> EncoderConfig:
    """The encoding every rung of correction ``mode`` is read from: projections rotated into
    R_train's eigenbasis (when some rung needs R), unit normalised unless some rung scores
    plain products (a cosine under any R does not depend on a row's scale; corrected
    gradients can exceed float16's range, unit rows cannot)."""
    rungs = [_variant(cfg, name) for name in cfg.variants]
    rungs = [vc for vc in rungs if vc.second_moment == mode]
    return rungs[0].replace(hessian="train" if any(vc.hessian != "none" for vc in rungs)
                            else "none", normalize=all(vc.normalize for vc in rungs))


def _variant(cfg: CompareConfig, name: str) -> EncoderConfig:
    vc = variant_config(name, **cfg.encoder_options, device=cfg.device)
    if cfg.second_moment is not None and vc.second_moment != "none":
        vc = vc.replace(second_moment=cfg.second_moment)
    return vc


def _encode_corpus(cfg: CompareConfig, mode: str, loaded, state, queries, folder: Path):
    """The corpus encoded once for correction ``mode`` through ``index build`` (its engine,
    V estimate and R_train exactly as ``scan`` fits them), and the queries' vectors."""
    base = _base_config(cfg, mode)
    job = IndexConfig(model=cfg.model, corpus=cfg.corpus, optimizer_state=cfg.optimizer_state,
                      encoder=base, engine=cfg.engine, workers=cfg.workers,
                      ray_address=cfg.ray_address, out=str(folder / mode),
                      progress=cfg.progress)
    store = build_index(job)
    encoder = Encoder(loaded, base, state)
    encoder.set_state(store_state(store))
    with progress_step(f"encoding {len(queries)} queries ({mode})", cfg.progress):
        _, y = encoder.query_vectors(queries)
    return store, encoder.basis, y


def ladder_rankings(cfg: CompareConfig, loaded, state, queries, folder: Path) -> dict:
    """Rankings of every requested ladder variant.

    The corpus is encoded once per optimizer correction (into a store under ``folder``, by the
    engine ``index build`` uses) as projections in R_train's eigenbasis; every rung of that
    correction is scored from it as ``scan`` and ``trace`` score, by a
    :class:`~factrace.encode.whitening.TaskWhitening` of the rung's R (none, train or mixed),
    damping and normalisation (cosines and products are unchanged by the rotation)."""
    encoded: dict[str, tuple] = {}
    out: dict[str, list[Ranking]] = {}
    for name in cfg.variants:
        vc = _variant(cfg, name)
        if vc.second_moment not in encoded:
            encoded[vc.second_moment] = _encode_corpus(cfg, vc.second_moment, loaded, state,
                                                       queries, folder)
        store, basis, y = encoded[vc.second_moment]
        with progress_step(f"{name}: ranking", cfg.progress):
            task = TaskWhitening.fit(basis, vc.hessian, y, vc.damping, vc.lambda_, vc.lambda_k,
                                     vc.normalize)
            found = exact_topk(task.scorer(y, own=True), store, cfg.top_k,
                               keep_scores=cfg.keeps_scores)
            out[name] = found.result([q.id for q in queries])
            if cfg.keeps_scores:
                _keep_scores(cfg, from_kept(found.kept, [q.id for q in queries], name))
    return out


def baseline_rankings(cfg: CompareConfig, passages, queries) -> dict:
    out = {}
    for name in cfg.baselines:
        with progress_step(f"baseline {name}", cfg.progress):
            out[name] = rank_baseline(name, passages, queries, cfg.top_k)
            if cfg.keeps_scores:
                _keep_scores(cfg, FullScores(baseline_scores(name, passages, queries),
                                             [q.id for q in queries],
                                             [p.id for p in passages], name))
    return out


def _keep_scores(cfg: CompareConfig, full: FullScores) -> None:
    """Write a method's full scores and, with LDS inputs, measure its LDS now."""
    write_scores(Path(cfg.out) / SCORES_DIR / f"{full.method}.npz", full)
    if cfg.lds is not None:
        cfg.lds.measure(full)


def rankings_metadata(cfg: CompareConfig, method: str) -> dict:
    """What ``rankings/<method>.jsonl.meta.json`` records: the method and, as absolute paths,
    the queries, qrels and corpus it ranked (so that the file opens on its own, as those of
    ``scan`` and ``trace`` do)."""
    meta = {"command": "compare", "method": method,
            **source_meta("queries", cfg.queries, absolute(cfg.queries)),
            "qrels": absolute(cfg.qrels), **source_meta("corpus", cfg.corpus, absolute(cfg.corpus)),
            "model": cfg.model, "top_k": cfg.top_k}
    if method not in cfg.baselines:
        meta["encoder"] = {"config": _variant(cfg, method).to_dict()}
    return meta


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
    return tail_patch_from_union(shared, rankings, [q.id for q in selected], k), shared


def tail_patch_from_union(shared: TailPatchResult, rankings: dict, query_ids, k: int) -> dict:
    """Each method's tail-patch read from one pass over the union of the methods' top-k
    (``shared.per_passage`` must hold every passage of their top ``k``)."""
    out = {}
    for m, ranked in rankings.items():
        top = {r.query_id: r.doc_ids[:k] for r in ranked}
        per_query = {}
        for qid in query_ids:
            delta = dict(shared.per_passage.get(qid, []))
            docs = top.get(qid, [])
            per_query[qid] = float(np.mean([delta[d] for d in docs])) if docs else 0.0
        stats = mean_stderr(list(per_query.values()))
        out[m] = TailPatchResult(stats.mean, stats.stderr, per_query, lr=shared.lr, k=k,
                                 step=shared.step,
                                 seconds_per_query=shared.seconds_per_query)
    return out


def compare(cfg: CompareConfig) -> dict:
    """Run every method, evaluate it, and write rankings, results and the report."""
    from factrace.report import build_examples, write_report

    timings = {}
    t = time.perf_counter()
    check_at_least(1, top_k=cfg.top_k, tail_patch_k=cfg.tail_patch_k,
                   tail_patch_queries=cfg.tail_patch_queries,
                   **{k: cfg.encoder_options.get(k) for k in ("dim", "train_examples")})
    for name in cfg.variants:  # every variant's configuration is refused or taken up front
        _variant(cfg, name)
    if cfg.optimizer_state is None:
        if cfg.second_moment not in ("estimate", "none"):
            raise FactraceError("compare without --optimizer-state: pass --second-moment "
                                "estimate (V estimated from the corpus) or none")
        if cfg.tail_patch and cfg.lr is None:
            raise FactraceError("tail-patch without optimizer state takes one SGD step: pass "
                                "--lr, or --no-tail-patch")
    checkpoints = []
    if cfg.scaling:
        if cfg.model not in cfg.scaling:
            raise FactraceError(f"the scaling study's checkpoints must include --model {cfg.model}")
        checkpoints = check_checkpoints(cfg.scaling, cfg.second_moment, cfg.tail_patch, cfg.lr)
    check_output_dir(cfg.out, (*OUTPUTS, SCORES_DIR) if cfg.keeps_scores else OUTPUTS,
                     cfg.overwrite)
    queries = read_queries(cfg.queries)
    qrels = read_qrels(cfg.qrels)
    check_coverage([q.id for q in queries], qrels, cfg.queries, cfg.qrels)
    info = validate_corpus(cfg.corpus)
    passages = list(iter_corpus(cfg.corpus))
    texts = {p.id: p.text for p in passages}
    if cfg.lds is not None:
        cfg.lds.check([p.id for p in passages], [q.id for q in queries])
    loaded = load_model(cfg.model, cfg.device, "float32")
    covered = coverage(loaded.model, discover(loaded.model))
    say_coverage(covered, cfg.progress)
    state = None
    if cfg.optimizer_state is not None:
        state = load_optimizer_state(cfg.optimizer_state, loaded.model)
    timings["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".encodings-") as folder:
        rankings = ladder_rankings(cfg, loaded, state, queries, Path(folder))
    timings["ladder_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rankings.update(baseline_rankings(cfg, passages, queries))
    timings["baselines_s"] = time.perf_counter() - t
    for name, ranked in rankings.items():
        write_with_metadata(str(out / "rankings" / f"{name}.jsonl"), ranked,
                            rankings_metadata(cfg, name))
    patched, shared = {}, None
    if cfg.tail_patch:
        t = time.perf_counter()
        patched, shared = union_tail_patch(loaded, cfg, queries, rankings, texts)
        timings["tail_patch_s"] = time.perf_counter() - t
        with atomic_write(out / "tail_patch.json", "w") as f:
            json.dump(shared.to_dict(), f)
    rows = results_rows(rankings, qrels, patched)
    facts = read_facts(cfg.queries)
    kinds_note = add_kinds(rows, rankings, cfg.queries, qrels, texts, facts)
    if cfg.lds is not None:
        cfg.lds.add_to(rows)
    found = findings(rows)
    scaling = None
    if checkpoints:
        t = time.perf_counter()
        bm25 = rankings.get("bm25") or rank_baseline("bm25", passages, queries, cfg.top_k)
        known = {"model": cfg.model, "rankings": rankings, "tail_patch": shared}
        with tempfile.TemporaryDirectory(dir=out, prefix=".encodings-") as folder:
            scaling = run_scaling(cfg, checkpoints, queries, qrels, texts, facts, bm25,
                                  Path(folder), known)
        found = [*found, *scaling["findings"]]
        timings["scaling_s"] = time.perf_counter() - t
    examples = build_examples(queries, qrels, rankings, texts)
    metadata = {"model": cfg.model, "corpus": cfg.corpus, "corpus_rows": info.n_rows,
                "queries": len(queries), "top_k": cfg.top_k,
                "encoder_options": cfg.encoder_options,
                "coverage": covered.line().removeprefix("coverage: "),
                "timings": timings,
                "kinds": kinds_note or "share of each kind among the top-1 and top-10 "
                                       "proponents (see the kinds table)",
                "tail_patch": None if shared is None else {
                    "step": shared.describe(),
                    "lr": shared.lr, "k": cfg.tail_patch_k, "queries": shared.n_queries,
                    "seconds_per_query_union": shared.seconds_per_query}}
    if cfg.lds is not None:
        metadata["lds"] = cfg.lds.describe()
    paths = write_report(out, rows, found, examples, metadata, scaling=scaling)
    return {"rows": rows, "findings": found, "paths": paths, "metadata": metadata,
            "kinds_note": kinds_note, "rankings": rankings, "tail_patch": shared,
            "scaling": scaling}
