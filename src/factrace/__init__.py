"""factrace: trace a language model's outputs back to the pretraining examples that caused them.

An implementation of TrackStar (Chang et al., "Scalable Influence and Fact Tracing for Large
Language Model Pretraining", ICLR 2025). The public API:

- :class:`Encoder` / :class:`EncoderConfig` / :func:`variant_config`: examples → ψ(z); examples
  are :class:`Passage` and :class:`Query` records, or plain mappings with the same keys.
- :func:`scan` / :class:`ScanConfig`: the paper's streaming pass over a corpus → rankings.
- :func:`build_index`, :func:`trace`, :class:`EncodingStore`: a persistent store for
  interactive tracing; :class:`Tracer` opens one for a session and answers ``trace``,
  ``ask`` (the model completes a prompt, the completion is traced) and ``explain`` (a pair's
  score split over its tokens).
- :mod:`factrace.evaluate`: :func:`attribution_metrics` (MRR and recall@10 of rankings against
  gold passages), :func:`tail_patch` (causal influence), :func:`compare` (the ladder and the
  baselines).

Each name is imported on first use (:mod:`factrace.lazy`), so ``import factrace`` loads no
PyTorch, transformers or FAISS until a name that needs them is used.
"""

from factrace.lazy import lazy_exports

# each imported when first used (see factrace.lazy)
__getattr__, __dir__ = lazy_exports(globals(), {
    "EncoderConfig": "factrace.config", "variant_config": "factrace.config",
    "Passage": "factrace.data.records", "Query": "factrace.data.records",
    "Encoder": "factrace.encode.encoder",
    "FactraceError": "factrace.errors", "FactraceWarning": "factrace.errors",
    "CompareConfig": "factrace.evaluate.compare", "compare": "factrace.evaluate.compare",
    "attribution_metrics": "factrace.evaluate.metrics",
    "tail_patch": "factrace.evaluate.tail_patch",
    "IndexConfig": "factrace.run.index", "build_index": "factrace.run.index",
    "ScanConfig": "factrace.run.scan", "scan": "factrace.run.scan",
    "TraceConfig": "factrace.run.tracer", "Tracer": "factrace.run.tracer",
    "trace": "factrace.run.tracer",
    "EncodingStore": "factrace.store.encodings", "Index": "factrace.store.encodings:EncodingStore",
})

__all__ = [
    "CompareConfig",
    "Encoder",
    "EncoderConfig",
    "EncodingStore",
    "FactraceError",
    "FactraceWarning",
    "Index",
    "IndexConfig",
    "Passage",
    "Query",
    "ScanConfig",
    "TraceConfig",
    "Tracer",
    "build_index",
    "compare",
    "attribution_metrics",
    "scan",
    "tail_patch",
    "trace",
    "variant_config",
]
