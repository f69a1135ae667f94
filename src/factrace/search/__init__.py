"""Encoding stores and retrieval: exact streaming top-k and FAISS approximate search.

- :class:`StoreWriter` / :class:`EncodingStore`: the persistent, fingerprinted, resumable store
  of float16 unit-norm encodings (``store.py``, file layout in ``manifest.py``).
- :class:`TopK`, :func:`exact_search`: proponents (top-k) and opponents (bottom-k) by a chunked
  matrix product, memory bounded by one chunk (``topk.py``).
- :class:`ApproxIndex`, :func:`recall_at_k`: FAISS IVF / IVF-PQ search and its recall against
  exact search (``approx.py``).
"""

from factrace.data.io import Ranking
from factrace.search.approx import ApproxIndex, recall_at_k
from factrace.search.store import EncodingStore, StoreWriter
from factrace.search.topk import TopK, exact_search, exact_topk

__all__ = [
    "ApproxIndex",
    "EncodingStore",
    "Ranking",
    "StoreWriter",
    "TopK",
    "exact_search",
    "exact_topk",
    "recall_at_k",
]
