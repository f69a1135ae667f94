"""Retrieval over encoding stores: exact streaming top-k and FAISS approximate search.

- :class:`TopK`, :func:`exact_search`: proponents (top-k) and opponents (bottom-k) by a chunked
  matrix product, memory bounded by one chunk (``topk.py``).
- :class:`ApproxIndex`, :func:`recall_at_k`: FAISS IVF / IVF-PQ search and its recall against
  exact search (``approx.py``).

The stores themselves, and every file they are made of, are :mod:`factrace.store`.
"""

from factrace.data.io import Ranking
from factrace.search.approx import ApproxIndex, recall_at_k
from factrace.search.topk import TopK, exact_search, exact_topk

__all__ = ["ApproxIndex", "Ranking", "TopK", "exact_search", "exact_topk", "recall_at_k"]
