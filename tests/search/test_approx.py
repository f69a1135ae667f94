"""FAISS approximate search: exhaustive probing is exact, PQ recall is measured, save/load."""

from __future__ import annotations

import warnings

import faiss
import numpy as np
import pytest

from factrace.errors import FactraceError
from factrace.search import ApproxIndex, exact_search, recall_at_k
from factrace.search.approx import supported_spec
from factrace.store import EncodingStore

from .helpers import write_store

DIM = 32


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """FAISS's OpenMP k-means is much slower than one thread on a small, shared 2-core box."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n: int, seed: int) -> np.ndarray:
    """Unit rows around 20 random centres: structure an inverted file can exploit."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM))
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> EncodingStore:
    x = clustered(2000, seed=0)
    shards = [([f"d{i}" for i in range(s, s + 500)], x[s : s + 500]) for s in range(0, 2000, 500)]
    return EncodingStore.open(write_store(tmp_path_factory.mktemp("approx") / "s", shards, DIM))


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return clustered(40, seed=1)


def test_ivf_flat_probing_every_list_is_exact(store, queries):
    approx = ApproxIndex.build(store, "IVF16,Flat", nprobe=16)
    assert approx.nlist == 16 and approx.nprobe == 16
    exact = exact_search(queries, store, k=10)
    found = approx.search(queries, 10, opponents=True)
    assert recall_at_k(found, exact, k=10) == 1.0
    assert recall_at_k([r.opponent_ids for r in found], [r.opponent_ids for r in exact]) == 1.0
    for got, want in zip(found, exact, strict=True):
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
        np.testing.assert_allclose(got.opponent_scores, want.opponent_scores, atol=1e-5)
    approx.nprobe = 1
    assert recall_at_k(approx.search(queries, 10), exact) < 1.0


def test_ivf_pq_recall_is_measured_and_beats_random(store, queries):
    exact = exact_search(queries, store, k=10)
    approx = ApproxIndex.build(store, "IVF16,PQ8", nprobe=16)
    recall = recall_at_k(approx.search(queries, 10), exact, k=10)
    rng = np.random.default_rng(0)
    random = [list(rng.choice(store.ids, 10, replace=False)) for _ in queries]
    chance = recall_at_k(random, exact, k=10)
    assert 0.0 < recall < 1.0
    assert recall > 0.3 > 10 * chance


def test_small_corpus_gets_the_lists_and_codes_it_supports(store, queries, capfd):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        approx = ApproxIndex.build(store, "IVF1024,PQ8", nprobe=1024)
    # 2000 rows: 51 lists of 39 points; 2^5 PQ centroids of 39+ points, not 2^8
    assert approx.spec == "IVF51,PQ8x5" and approx.nlist == 51 and approx.nprobe == 51
    assert approx.describe() == (
        "FAISS IVF51,PQ8x5 over 2000 rows, 51 of 51 lists probed per query (2000 training rows "
        "support 51 IVF lists, not 1024; 2000 training rows support 5-bit PQ codes, not 8-bit)")
    assert "WARNING" not in capfd.readouterr().err  # FAISS's own clustering warnings
    assert recall_at_k(approx.search(queries, 10), exact_search(queries, store, k=10)) > 0.5
    assert supported_spec("IVF8,PQ4", 10_000) == ("IVF8,PQ4", [])
    assert supported_spec("Flat", 3) == ("Flat", [])
    assert supported_spec("IVF4,PQ8x4", 100)[0] == "IVF2,PQ8x1"
    assert supported_spec("IVF4,PQ8", 60)[0] == "IVF1,Flat"


def test_bad_specs_are_user_errors(store):
    with pytest.raises(FactraceError, match="FAISS"):
        ApproxIndex.build(store, "IVF4,Nonsense")
    with pytest.raises(FactraceError, match="divisible"):
        ApproxIndex.build(store, "IVF4,PQ7")


def test_save_and_load_in_the_store(store, queries):
    approx = ApproxIndex.build(store, "IVF8,Flat", nprobe=3)
    approx.save(store)
    entry = store.manifest["approx"]
    assert (entry["spec"], entry["rows"], entry["nprobe"]) == ("IVF8,Flat", 2000, 3)

    reopened = EncodingStore.open(store.path)
    loaded = ApproxIndex.load(reopened)
    assert loaded.nprobe == 3
    for a, b in zip(loaded.search(queries, 5), approx.search(queries, 5), strict=True):
        assert a.doc_ids == b.doc_ids

    assert entry["file"] == "approx-0000002000.faiss" and entry["trained_rows"] == 2000
    index_file = store.path / entry["file"]
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index_file.write_bytes(bytes(data))
    with pytest.raises(FactraceError, match="damaged"):
        ApproxIndex.load(reopened)
    store.record_approx(None)
    with pytest.raises(FactraceError, match="no approximate index"):
        ApproxIndex.load(EncodingStore.open(store.path))


def test_recall_at_k_by_hand():
    exact = [["a", "b", "c"], ["d", "e", "f"]]
    assert recall_at_k([["b", "a"], ["d", "x"]], exact, k=2) == pytest.approx(0.75)
    assert recall_at_k([["c", "b", "a"], []], exact, k=3) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        recall_at_k([["a"]], exact)
