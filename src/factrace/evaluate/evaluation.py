"""``eval``: MRR, recall@10 and (optionally) tail-patch of one rankings file, each mean ± se."""

from __future__ import annotations

import json
from dataclasses import dataclass

from factrace.data.sources import Source
from factrace.errors import FactraceError


@dataclass
class EvalConfig:
    """An ``eval`` job."""

    rankings: str
    """Rankings JSONL."""
    qrels: str
    """Gold passages JSONL (query_id, doc_id)."""
    out: str | None = None
    """Metrics JSON to write; ``None`` → not written."""
    tail_patch: bool = False
    """Also measure tail-patch (needs ``model``, ``corpus``, ``queries`` and the optimizer state
    or, without it, ``lr`` for an SGD step)."""
    model: str | None = None
    optimizer_state: str | None = None
    corpus: str | Source | None = None
    queries: str | Source | None = None
    tail_patch_k: int = 10
    """Top passages of each ranking tail-patched, one step each."""
    tail_patch_queries: int | None = None
    """Tail-patch the first N queries only (``None``: all)."""
    lr: float | None = None
    """Tail-patch learning rate (``None``: the final learning rate of training)."""
    kinds: bool = False
    """Also give the proponent kinds (:mod:`factrace.evaluate.kinds`; needs ``queries`` and
    ``corpus``): ``kinds`` in the row, or ``kinds_note`` saying why they were not computed."""
    device: str | None = None
    progress: bool = True
    overwrite: bool = False
    """Replace an existing ``out`` (otherwise refused before any work)."""


def evaluate(cfg: EvalConfig) -> list[dict]:
    """The results row of the rankings (one, as :func:`~factrace.evaluate.ladder.results_rows`
    gives it; with tail-patch, ``tail_patch_step`` says the step taken), written to ``out``."""
    from factrace.data.atomic import atomic_write
    from factrace.data.io import read_qrels, read_queries, read_rankings
    from factrace.data.outputs import check_at_least, check_output_file
    from factrace.evaluate.ladder import results_rows
    from factrace.evaluate.metrics import check_coverage

    check_at_least(1, tail_patch_k=cfg.tail_patch_k, tail_patch_queries=cfg.tail_patch_queries)
    if cfg.out:
        check_output_file(cfg.out, overwrite=cfg.overwrite)
    if cfg.kinds and (cfg.queries is None or cfg.corpus is None):
        raise FactraceError("--kinds needs --queries (with the facts' subject, relation, object) "
                            "and --corpus (the passages' text)")
    ranked = read_rankings(cfg.rankings)
    gold = read_qrels(cfg.qrels)
    check_coverage([r.query_id for r in ranked], gold, cfg.rankings, cfg.qrels)
    patched = {}
    if cfg.tail_patch:
        missing = [n for n, v in (("--model", cfg.model), ("--corpus", cfg.corpus),
                                  ("--queries", cfg.queries)) if v is None]
        if cfg.optimizer_state is None and cfg.lr is None:
            missing.append("--optimizer-state (or, without it, --lr for an SGD step)")
        if missing:
            raise FactraceError(f"--tail-patch needs {', '.join(missing)}")
        from factrace.data.corpus import iter_corpus
        from factrace.evaluate.tail_patch import tail_patch as run_tail_patch
        from factrace.model.load import load_model

        loaded = load_model(cfg.model, cfg.device, "float32")
        texts = {p.id: p.text for p in iter_corpus(cfg.corpus)}
        patched["rankings"] = run_tail_patch(loaded, cfg.optimizer_state,
                                             read_queries(cfg.queries), ranked, texts,
                                             k=cfg.tail_patch_k, lr=cfg.lr,
                                             n_queries=cfg.tail_patch_queries,
                                             progress=cfg.progress)
    rows = results_rows({"rankings": ranked}, gold, patched)
    if patched:
        rows[0]["tail_patch_step"] = patched["rankings"].describe()
    if cfg.kinds:
        from factrace.data.corpus import iter_corpus
        from factrace.evaluate.kinds import add_kinds

        texts = {p.id: p.text for p in iter_corpus(cfg.corpus)}
        note = add_kinds(rows, {"rankings": ranked}, cfg.queries, gold, texts)
        if note:
            rows[0]["kinds_note"] = note
    if cfg.out:
        with atomic_write(cfg.out, "w") as f:
            json.dump(rows[0], f, indent=2)
    return rows
