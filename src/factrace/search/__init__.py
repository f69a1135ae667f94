"""Retrieval over encoding stores: exact streaming top-k and FAISS approximate search.

- :class:`TopK`, :func:`exact_search`: proponents (top-k) and opponents (bottom-k) by a chunked
  matrix product, memory bounded by one chunk (``topk.py``).
- :class:`ApproxIndex`, :func:`recall_at_k`: FAISS IVF / IVF-PQ search and its recall against
  exact search (``approx.py``).

The stores themselves, and every file they are made of, are :mod:`factrace.store`.
"""

from factrace.lazy import lazy_exports

# each imported when first used (see factrace.lazy)
__getattr__, __dir__ = lazy_exports(globals(), {
    "Ranking": "factrace.data.io", "ApproxIndex": "factrace.search.approx",
    "recall_at_k": "factrace.search.approx", "TopK": "factrace.search.topk",
    "exact_search": "factrace.search.topk", "exact_topk": "factrace.search.topk",
})

__all__ = ["ApproxIndex", "Ranking", "TopK", "exact_search", "exact_topk", "recall_at_k"]
