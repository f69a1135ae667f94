"""Exact top-k against a brute-force argsort reference, over chunks, merges and ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from factrace.errors import FactraceError
from factrace.search import TopK, exact_search, exact_topk
from factrace.search.topk import top_indices
from factrace.store import EncodingStore

from .helpers import shard_data, unit_rows, write_store


def reference(scores: np.ndarray, k: int, lowest: bool = False) -> list[np.ndarray]:
    """Per row, the positions of the k best by (score, then position): a full lexsort."""
    positions = np.arange(scores.shape[1])
    key = scores if lowest else -scores
    return [np.lexsort((positions, row))[:k] for row in key]


def scores_with_ties(q: int, n: int, seed: int) -> np.ndarray:
    """Half the rows draw from 5 values (many ties), half are continuous."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((q, n)).astype(np.float32)
    s[: q // 2] = rng.integers(-2, 3, size=(q // 2, n))
    return s


def check(result, scores, ids, k):
    top, bottom = reference(scores, k), reference(scores, k, lowest=True)
    for i, ranking in enumerate(result):
        assert ranking.doc_ids == [ids[j] for j in top[i]]
        np.testing.assert_array_equal(ranking.scores, scores[i, top[i]])
        assert ranking.opponent_ids == [ids[j] for j in bottom[i]]
        np.testing.assert_array_equal(ranking.opponent_scores, scores[i, bottom[i]])


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16, 100, 333, 1000])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_streaming_matches_argsort_for_any_chunk_size(chunk, k):
    scores = scores_with_ties(q=6, n=1000, seed=k)
    ids = [f"d{j}" for j in range(1000)]
    topk = TopK(6, k)
    for start in range(0, 1000, chunk):
        topk.update(scores[:, start : start + chunk], ids[start : start + chunk])
    check(topk.result(), scores, ids, k)


def test_ties_go_to_the_earlier_row():
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0, 1.0]])
    topk = TopK(1, 2)
    topk.update(scores[:, 3:], ["d", "e", "f"])  # rows 0..2 of this accumulator
    assert topk.result()[0].doc_ids == ["e", "d"]
    topk = TopK(1, 2)
    for j, name in enumerate("abcdef"):
        topk.update(scores[:, j : j + 1], [name])
    ranking = topk.result()[0]
    assert ranking.doc_ids == ["b", "c"]
    assert ranking.opponent_ids == ["a", "f"]


def test_top_indices_breaks_ties_by_index():
    scores = torch.tensor([[0.0, 5.0, 5.0, 5.0, 1.0], [4.0, 3.0, 2.0, 1.0, 0.0]])
    values, index = top_indices(scores, 2)
    assert index.sort(dim=1).values.tolist() == [[1, 2], [0, 1]]
    assert values.sort(dim=1).values.tolist() == [[5.0, 5.0], [3.0, 4.0]]
    scores = torch.tensor([[2.0, 1.0, 3.0, 1.0, 1.0]])
    values, index = top_indices(scores, 2, largest=False)
    assert index.sort(dim=1).values.tolist() == [[1, 3]] and values.tolist() == [[1.0, 1.0]]


def test_merge_of_partials_equals_one_pass():
    scores = scores_with_ties(q=4, n=900, seed=7)
    ids = [f"d{j}" for j in range(900)]
    whole = TopK(4, 25)
    whole.update(scores, ids)
    bounds = [0, 100, 101, 480, 900]
    partials = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        part = TopK(4, 25, row_offset=lo)
        for start in range(lo, hi, 37):
            stop = min(start + 37, hi)
            part.update(scores[:, start:stop], ids[start:stop])
        partials.append(part)
    merged = partials[3]
    for part in (partials[1], partials[0], partials[2]):  # any order
        merged.merge(part)
    assert _same(merged.result(), whole.result())
    check(merged.result(), scores, ids, 25)


def _same(a, b) -> bool:
    return all(
        x.doc_ids == y.doc_ids
        and x.opponent_ids == y.opponent_ids
        and np.array_equal(x.scores, y.scores)
        and np.array_equal(x.opponent_scores, y.opponent_scores)
        for x, y in zip(a, b, strict=True)
    )


def test_k_larger_than_rows_returns_all_ranked():
    scores = np.array([[0.5, -1.0, 2.0], [0.0, 0.0, -3.0]], dtype=np.float32)
    topk = TopK(2, 10)
    topk.update(scores[:, :2], ["a", "b"])
    topk.update(scores[:, 2:], ["c"])
    first, second = topk.result()
    assert first.doc_ids == ["c", "a", "b"] and first.scores == [2.0, 0.5, -1.0]
    assert first.opponent_ids == ["b", "a", "c"]
    assert second.doc_ids == ["a", "b", "c"] and second.opponent_ids == ["c", "a", "b"]


def test_without_opponents_and_input_checks():
    topk = TopK(2, 3, opponents=False)
    topk.update(torch.ones(2, 4), list("abcd"))
    first = topk.result()[0]
    assert first.opponent_ids is None and first.opponent_scores is None  # none were kept
    named = topk.result(["q-a", "q-b"])
    assert [r.query_id for r in named] == ["q-a", "q-b"]
    assert [r.query_id for r in topk.result()] == ["0", "1"]
    with pytest.raises(ValueError, match="1 query ids for 2 queries"):
        topk.result(["q-a"])
    with pytest.raises(ValueError, match="ids"):
        topk.update(np.ones((2, 3)), ["a"])
    with pytest.raises(ValueError, match="NaN"):
        topk.update(np.full((2, 1), np.nan), ["a"])
    with pytest.raises(ValueError):
        TopK(2, 0)


def _store_and_dense(tmp_path, sizes, dim, duplicates=True):
    shards = shard_data(sizes, dim, seed=11)
    if duplicates:  # identical encodings in different shards and chunk positions: exact ties
        shards[-1][1][-1] = shards[0][1][0]
        shards[1][1][5] = shards[0][1][0]
    store = EncodingStore.open(write_store(tmp_path / "s", shards, dim))
    dense = np.concatenate([e.astype(np.float16).astype(np.float64) for _, e in shards])
    ids = [i for shard_ids, _ in shards for i in shard_ids]
    return store, dense, ids


def test_exact_search_matches_dense_reference(tmp_path):
    store, dense, ids = _store_and_dense(tmp_path, [400, 333, 267], 48)
    queries = unit_rows(5, 48, seed=2)
    queries[4] = dense[0]  # its best rows are the three identical copies, in row order
    result = exact_search(queries, store, k=12, chunk_rows=100)
    scores = queries.astype(np.float64) @ dense.T
    for i, ranking in enumerate(result):
        expected = reference(scores[i : i + 1], 12)[0]
        assert ranking.doc_ids == [ids[j] for j in expected]
        np.testing.assert_allclose(ranking.scores, scores[i, expected], atol=1e-5)
        lowest = reference(scores[i : i + 1], 12, lowest=True)[0]
        assert ranking.opponent_ids == [ids[j] for j in lowest]
    assert result[4].doc_ids[:3] == ["doc-0", "doc-405", "doc-999"]


def test_exact_search_does_not_depend_on_chunks_or_query_batches(tmp_path):
    store, _, _ = _store_and_dense(tmp_path, [500, 300, 200], 40)
    queries = unit_rows(12, 40, seed=5)
    base = exact_search(queries, store, k=20)
    for chunk_rows in [1, 63, 64, 100, 1000]:
        assert _same(exact_search(queries, store, k=20, chunk_rows=chunk_rows), base)
    one_by_one = [exact_search(queries[i : i + 1], store, k=20)[0] for i in range(12)]
    assert _same(one_by_one, base)
    streamed = [(ids, torch.from_numpy(np.array(e))) for ids, e in store.iter_shards()]
    assert _same(exact_search(queries, streamed, k=20, chunk_rows=77), base)


def test_partials_per_shard_merge_to_the_full_search(tmp_path):
    store, _, _ = _store_and_dense(tmp_path, [120, 80, 100], 24)
    queries = unit_rows(3, 24, seed=9)
    offset, merged = 0, None
    for ids, encodings in store.iter_shards():
        part = exact_topk(queries, [(ids, encodings)], k=7, row_offset=offset)
        offset += len(ids)
        merged = part if merged is None else merged.merge(part)
    assert _same(merged.result(), exact_search(queries, store, k=7))


def test_query_dimension_mismatch_is_a_user_error(small_store):
    with pytest.raises(FactraceError, match="dimension"):
        exact_search(np.ones((2, 31), np.float32), small_store, k=3)
