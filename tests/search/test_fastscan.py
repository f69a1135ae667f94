"""Grouped fast-scan codes: scores as accurate as float look-up tables over the same codes."""

import faiss
import numpy as np
import pytest

from factrace.search import fastscan
from factrace.search.approx import Codec, _deserialize, _factory, _serialize
from factrace.search.fastscan import GroupedFastScan, groups_for

D, M = 512, 256


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    # rows with a spread of scales over the dimensions, as rotated TrackStar rows have
    scale = np.exp(-np.linspace(0, 4, D)).astype(np.float32)
    x = rng.standard_normal((1500, D), dtype=np.float32) * scale
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((8, D), dtype=np.float32) / scale  # queries weigh the small ones
    return x, q


def _trained(x, group_size, monkeypatch):
    monkeypatch.setattr(fastscan, "GROUP_SUBQUANTIZERS", group_size)
    index = GroupedFastScan.empty(D, M)
    index.train(x)
    return index


def _reference(index: GroupedFastScan, codes: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Inner products with the rows the codes stand for (decoded in float): what float look-up
    tables over the same codes give."""
    parts, start = [], 0
    for group in index.groups:
        size = group.sa_code_size()
        plain = faiss.IndexPQ(group.d, group.pq.M, 4, faiss.METRIC_INNER_PRODUCT)
        plain.pq = group.pq
        plain.is_trained = True
        parts.append(plain.sa_decode(np.ascontiguousarray(codes[:, start:start + size])))
        start += size
    return q @ np.hstack(parts).T


def test_groups_split_the_sub_quantizers_evenly(monkeypatch):
    monkeypatch.setattr(fastscan, "GROUP_SUBQUANTIZERS", 1024)
    assert groups_for(1024) == 1 and groups_for(8192) == 8 and groups_for(32768) == 32
    assert groups_for(3 * 1024) == 3 and groups_for(100) == 1 and groups_for(1536) == 2


def test_a_row_like_the_query_is_found(monkeypatch):
    """One fast-scan index of 8,192 sub-quantizers wraps the best rows of queries that resemble
    stored rows around to the lowest scores; groups of 1,024 rank them as their decoded codes
    do, and with the default groups they are among both ends of a short candidate list."""
    from factrace.search.compact import candidate_depth

    d, m = 16384, 8192
    rng = np.random.default_rng(0)
    scale = np.exp(-np.linspace(0, 4, d)).astype(np.float32)
    x = rng.standard_normal((700, d), dtype=np.float32) * scale
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = (x[:8] + 0.1 * x[8:16]).astype(np.float32)  # each close to one stored row
    scores = {}
    default = fastscan.GROUP_SUBQUANTIZERS
    for size in (m, 1024, default):
        monkeypatch.setattr(fastscan, "GROUP_SUBQUANTIZERS", size)
        index = GroupedFastScan.empty(d, m)
        index.train(x)
        codes = index.sa_encode(x)
        reference = _reference(index, codes, q)
        scores[size] = index.holding(codes).all_scores(q)
    depth = {size: candidate_depth(s, reference, 10) for size, s in scores.items()}
    assert (depth[1024] <= 12).all()  # the reference's top 10 among the first 12
    assert (depth[m] >= 100).mean() >= 0.5
    best = np.argsort(-reference, axis=1)[:, :10]
    ends = np.hstack([np.argsort(-scores[default], axis=1)[:, :50],
                      np.argsort(scores[default], axis=1)[:, :50]])
    assert all(np.isin(b, e).all() for b, e in zip(best, ends, strict=True))


def test_grouped_scores_are_those_of_the_decoded_codes(data, monkeypatch):
    x, q = data
    grouped = _trained(x, 64, monkeypatch)
    assert len(grouped.groups) == M // 64
    codes = grouped.sa_encode(x)
    got, ref = grouped.holding(codes).all_scores(q), _reference(grouped, codes, q)
    for a, b in zip(got, ref, strict=True):
        assert np.corrcoef(a, b)[0, 1] > 0.999


def test_codes_files_and_search_agree(data, monkeypatch):
    x, q = data
    index = _trained(x, 64, monkeypatch)
    added = index.clone()
    added.add(x)
    held = index.holding(index.sa_encode(x))
    np.testing.assert_array_equal(added.all_scores(q), held.all_scores(q))
    again = GroupedFastScan.from_bytes(held.to_bytes())
    np.testing.assert_array_equal(again.all_scores(q), held.all_scores(q))
    assert _deserialize(_serialize(again)).ntotal == len(x)
    scores = held.all_scores(q)
    top_scores, top = held.search(q, 7)
    np.testing.assert_array_equal(top_scores, -np.sort(-scores, axis=1)[:, :7])
    assert (np.take_along_axis(scores, top, axis=1) == top_scores).all()
    first, second = index.holding(index.sa_encode(x[:600])), index.holding(index.sa_encode(x[600:]))
    first.merge_from(second)
    np.testing.assert_array_equal(first.all_scores(q), held.all_scores(q))
    assert held.sa_code_size() == M // 2  # 4 bits a sub-quantizer: the codes of PQ{M}x4


def test_the_default_spec_is_grouped_fast_scan_and_a_codec_keeps_it(data):
    x, q = data
    index = _factory(D, f"PQ{D // 2}x4fs")
    assert isinstance(index, GroupedFastScan)
    codec = Codec.train(x, f"PQ{D // 2}x4fs")
    assert codec.spec == f"PQ{D // 2}x4fs" and codec.entry()["code_bytes"] == D // 4
    copy = Codec.from_bytes(codec.to_bytes())
    held = copy.holding(codec.encode(x))
    assert held.ntotal == len(x)
    # the best rows by the codes are the best rows by exact inner products, mostly
    exact = q @ x.T
    approx = held.all_scores(q)
    best = np.argsort(-exact, axis=1)[:, :10]
    found = np.argsort(-approx, axis=1)[:, :100]
    assert np.mean([np.isin(b, f).all() for b, f in zip(best, found, strict=True)]) >= 0.75
