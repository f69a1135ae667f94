"""4-bit product-quantization codes searched with FAISS's fast scan, in groups of dimensions.

FAISS's fast scan (``IndexPQFastScan``) quantizes each sub-quantizer's look-up table to 8 bits and
adds them in 16-bit accumulators. With the ``M = d/2`` sub-quantizers of a store's default first
stage (8,192 at d = 2^14, 32,768 at 2^16) the tables keep a few levels each, and a row that
matches the query closely, the passage a fact-tracing query most needs, can overflow its
accumulator and wrap around to the lowest score: measured on the fact world, one index of 8,192
sub-quantizers left the exact top 10 of 2-9% of the queries outside 200 candidates.
:class:`GroupedFastScan` cuts the dimensions into groups of at most :data:`GROUP_SUBQUANTIZERS`
sub-quantizers, one fast-scan index each, and adds the groups' scores in float32: on the fact
world as deep candidate lists as float look-up tables over the same codes (groups of 2,048 or
1,024 alike), at the fast scan's speed. The codes are the bytes one ``PQ{M}x4`` index would
store, group after group. Groups of 2,048 can still wrap around on a row equal to the query
(synthetic rows): such a row comes last, so a two-stage search, which scores both ends of each
query's list and lets both sides choose among them (:func:`factrace.search.twostage.rerank`),
still finds it.

Every search scores every row (:meth:`GroupedFastScan.all_scores`): one scan gives a query's
best and worst rows alike, and returning every score costs little next to the scan.
"""

from __future__ import annotations

import io
import math

import faiss
import numpy as np

#: Sub-quantizers per fast-scan group: each group's scan returns every row's score, which costs
#: about 0.06 s per 10^6 rows here, so fewer groups answer faster (module docstring).
GROUP_SUBQUANTIZERS = 2048
#: First bytes of a serialized :class:`GroupedFastScan` (FAISS's own files never start so).
MAGIC = b"FTGFS1\n"


def groups_for(m: int) -> int:
    """The fewest groups that split ``m`` sub-quantizers evenly into groups of at most
    :data:`GROUP_SUBQUANTIZERS`."""
    g = max(1, math.ceil(m / GROUP_SUBQUANTIZERS))
    while m % g:
        g += 1
    return g


def fast_scan_holding(index: faiss.IndexPQFastScan, codes: np.ndarray
                      ) -> faiss.IndexPQFastScan:
    """A copy of the trained fast-scan ``index`` holding ``codes`` (its ``sa_encode`` output).
    Fast-scan indexes take no codes directly: a plain ``IndexPQ`` of the same quantizer takes
    them, and is packed for the fast scan on conversion."""
    plain = faiss.IndexPQ(index.d, index.pq.M, index.pq.nbits, index.metric_type)
    plain.pq = index.pq  # a copy
    plain.is_trained = True
    plain.add_sa_codes(np.ascontiguousarray(codes, dtype=np.uint8))
    return faiss.IndexPQFastScan(plain, index.bbs)


class GroupedFastScan:
    """``PQ{m}x4fs`` over ``d`` dimensions as ``g`` fast-scan indexes of ``d/g`` dimensions each
    (inner product). Offers the parts of FAISS's index interface factrace uses: ``train``,
    ``add``, ``search``, ``ntotal``, ``d``, ``sa_encode``, ``sa_code_size``, ``merge_from``."""

    def __init__(self, d: int, m: int, groups: list[faiss.IndexPQFastScan]):
        self.d, self.m, self.groups = d, m, groups
        self.width = d // len(groups)

    @classmethod
    def empty(cls, d: int, m: int, seed: int = 0) -> GroupedFastScan:
        if d % m:
            raise ValueError(f"PQ{m} needs a dimension divisible by {m}, got {d}")
        g = groups_for(m)
        groups = []
        for _ in range(g):
            index = faiss.IndexPQFastScan(d // g, m // g, 4, faiss.METRIC_INNER_PRODUCT)
            index.pq.cp.seed = seed
            groups.append(index)
        return cls(d, m, groups)

    # FAISS's interface -------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.groups[0].ntotal)

    @property
    def is_trained(self) -> bool:
        return all(g.is_trained for g in self.groups)

    def _slices(self, x: np.ndarray):
        for n, index in enumerate(self.groups):
            yield index, np.ascontiguousarray(x[:, n * self.width:(n + 1) * self.width])

    def train(self, x: np.ndarray) -> None:
        for index, part in self._slices(x):
            index.train(part)

    def add(self, x: np.ndarray) -> None:
        for index, part in self._slices(x):
            index.add(part)

    def sa_code_size(self) -> int:
        return sum(int(g.sa_code_size()) for g in self.groups)

    def sa_encode(self, x: np.ndarray) -> np.ndarray:
        """The rows' codes, uint8 ``[n, sa_code_size()]``: each group's, in order."""
        return np.hstack([index.sa_encode(part) for index, part in self._slices(x)])

    def merge_from(self, other: GroupedFastScan, add_id: int = 0) -> None:
        """Append ``other``'s rows (emptied, as FAISS does)."""
        for mine, theirs in zip(self.groups, other.groups, strict=True):
            mine.merge_from(theirs, add_id)

    def all_scores(self, x: np.ndarray) -> np.ndarray:
        """Every row's approximate inner product with each query: float32 ``[q, ntotal]``.
        Each group's fast scan is run at its own scale (the query's part made unit norm, so
        the quantized tables use their whole range) and scaled back."""
        n = self.ntotal
        out = np.zeros((x.shape[0], n), dtype=np.float32)
        if n == 0:
            return out
        for index, part in self._slices(np.asarray(x, dtype=np.float32)):
            scale = np.linalg.norm(part, axis=1, keepdims=True)
            scale[scale == 0] = 1.0
            scores, labels = index.search(np.ascontiguousarray(part / scale), n)
            valid = labels >= 0
            # a row a group leaves out (its sum saturated) gets that group's lowest score
            floor = np.where(valid, scores, np.inf).min(axis=1, keepdims=True)
            floor = np.where(np.isfinite(floor), floor, 0.0).astype(np.float32)
            part_scores = np.broadcast_to(floor, (len(part), n)).copy()
            part_scores[np.nonzero(valid)[0], labels[valid]] = scores[valid]
            out += (part_scores * scale).astype(np.float32)
        return out

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's ``search``: the ``k`` best rows per query, ``(scores, labels)`` best first
        (``-1`` where there are fewer rows)."""
        scores = self.all_scores(x)
        k_found = min(k, scores.shape[1])
        top = np.argpartition(-scores, k_found - 1, axis=1)[:, :k_found] if k_found else \
            np.zeros((len(x), 0), np.int64)
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        labels = np.take_along_axis(top, order, axis=1)
        found = np.take_along_axis(scores, labels, axis=1)
        pad = k - k_found
        return (np.pad(found, ((0, 0), (0, pad)), constant_values=-np.inf),
                np.pad(labels, ((0, 0), (0, pad)), constant_values=-1).astype(np.int64))

    # codes and files ---------------------------------------------------------------------------
    def holding(self, codes: np.ndarray) -> GroupedFastScan:
        """A copy of this (trained) index holding ``codes`` (from :meth:`sa_encode`)."""
        groups, start = [], 0
        for index in self.groups:
            size = int(index.sa_code_size())
            groups.append(fast_scan_holding(index, codes[:, start:start + size]))
            start += size
        return GroupedFastScan(self.d, self.m, groups)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, shape=np.array([self.d, self.m]),
                 **{f"group{n}": faiss.serialize_index(g) for n, g in enumerate(self.groups)})
        return MAGIC + buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> GroupedFastScan:
        if not data.startswith(MAGIC):
            raise ValueError("not a grouped fast-scan index")
        with np.load(io.BytesIO(data[len(MAGIC):]), allow_pickle=False) as saved:
            d, m = (int(v) for v in saved["shape"])
            n = sum(1 for key in saved.files if key.startswith("group"))
            groups = [faiss.deserialize_index(saved[f"group{i}"]) for i in range(n)]
        return cls(d, m, groups)

    def clone(self) -> GroupedFastScan:
        return GroupedFastScan.from_bytes(self.to_bytes())
