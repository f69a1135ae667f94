"""Fact-tracing evaluation (DESIGN.md §2): attribution metrics (MRR, Recall@10), tail-patch
influence, baseline rankers and the ablation-ladder results table with the paper's findings.

bm25s, sentence-transformers and tqdm are imported by the functions that use them.
"""

from factrace.evaluate.baselines import bm25_rankings, dense_rankings, random_rankings
from factrace.evaluate.ladder import BM25, LADDER, Finding, findings, results_rows
from factrace.evaluate.metrics import AttributionMetrics, MeanSE, attribution_metrics, mean_stderr
from factrace.evaluate.tail_patch import TailPatchResult, tail_patch

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
    "tail_patch",
]
