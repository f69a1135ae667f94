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
"""

from factrace.config import EncoderConfig, variant_config
from factrace.data.records import Passage, Query
from factrace.encode.encoder import Encoder
from factrace.errors import FactraceError, FactraceWarning
from factrace.evaluate.compare import CompareConfig, compare
from factrace.evaluate.metrics import attribution_metrics
from factrace.evaluate.tail_patch import tail_patch
from factrace.run.index import IndexConfig, build_index
from factrace.run.scan import ScanConfig, scan
from factrace.run.tracer import TraceConfig, Tracer, trace
from factrace.store.encodings import EncodingStore

Index = EncodingStore

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
