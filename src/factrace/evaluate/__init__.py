"""Fact-tracing evaluation: attribution metrics (MRR, Recall@10), tail-patch influence, baseline
rankers and the ablation-ladder results table with the paper's findings (docs/design.md §
"Evaluation").

bm25s, sentence-transformers and tqdm are imported by the functions that use them, and each name
here by its first use (PyTorch only for tail-patch). The tail-patch function is
``factrace.tail_patch`` (``factrace.evaluate.tail_patch`` is its module).
"""

from factrace.lazy import lazy_exports

# each imported when first used (see factrace.lazy)
__getattr__, __dir__ = lazy_exports(globals(), {
    "bm25_rankings": "factrace.evaluate.baselines",
    "dense_rankings": "factrace.evaluate.baselines",
    "random_rankings": "factrace.evaluate.baselines", "BM25": "factrace.evaluate.ladder",
    "LADDER": "factrace.evaluate.ladder", "Finding": "factrace.evaluate.ladder",
    "findings": "factrace.evaluate.ladder", "results_rows": "factrace.evaluate.ladder",
    "AttributionMetrics": "factrace.evaluate.metrics", "MeanSE": "factrace.evaluate.metrics",
    "attribution_metrics": "factrace.evaluate.metrics", "mean_stderr": "factrace.evaluate.metrics",
    "TailPatchResult": "factrace.evaluate.tail_patch",
})

__all__ = [
    "BM25",
    "LADDER",
    "AttributionMetrics",
    "Finding",
    "MeanSE",
    "TailPatchResult",
    "attribution_metrics",
    "bm25_rankings",
    "dense_rankings",
    "findings",
    "mean_stderr",
    "random_rankings",
    "results_rows",
]
