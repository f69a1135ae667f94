"""BM25, dense and random baselines on a toy corpus."""

import numpy as np
import pytest

from factrace.data.records import Passage, Query
from factrace.errors import FactraceError
from factrace.evaluate.baselines import (
    bm25_rankings,
    dense_model_dir,
    dense_rankings,
    random_rankings,
    top_k_indices,
)

CORPUS = [
    Passage("cat", "The cat sat on the mat all afternoon."),
    Passage("paris", "Alice was born in Paris, the capital of France."),
    Passage("london", "Bob moved to London to study chemistry."),
    Passage("rome", "Rome is an old city with many fountains."),
    Passage("alice-job", "Alice works as an engineer at a bridge company."),
]
QUERIES = [Query("q1", "Alice was born in", " Paris"), Query("q2", "Where did Bob move? To", " London")]


def test_top_k_indices_breaks_ties_by_index():
    scores = np.array([1.0, 3.0, 3.0, 0.5, 3.0])
    assert top_k_indices(scores, 2).tolist() == [1, 2]
    assert top_k_indices(scores, 10).tolist() == [1, 2, 4, 0, 3]


def test_bm25_ranks_the_passage_sharing_the_query_words_first():
    rankings = bm25_rankings(CORPUS, QUERIES, k=3)
    assert [r.query_id for r in rankings] == ["q1", "q2"]
    assert rankings[0].doc_ids[0] == "paris"
    assert rankings[1].doc_ids[0] == "london"
    assert all(len(r.doc_ids) == 3 == len(r.scores) for r in rankings)
    assert all(r.scores == sorted(r.scores, reverse=True) for r in rankings)
    assert rankings[0].scores[0] > rankings[0].scores[1]


def test_bm25_with_target_uses_the_target_words():
    query = [Query("q", "She lives in", " Rome")]
    without = bm25_rankings(CORPUS, query, k=5)
    with_target = bm25_rankings(CORPUS, query, k=5, with_target=True)
    assert with_target[0].doc_ids[0] == "rome"
    assert without[0].doc_ids[0] != "rome"


def test_bm25_query_of_stop_words_only_gives_corpus_order():
    rankings = bm25_rankings(CORPUS, [Query("q", "the", " a")], k=2)
    assert rankings[0].doc_ids == ["cat", "paris"] and rankings[0].scores == [0.0, 0.0]


def test_k_larger_than_the_corpus_returns_all():
    for rankings in (bm25_rankings(CORPUS, QUERIES, k=50), random_rankings(CORPUS, QUERIES, k=50)):
        for r in rankings:
            assert sorted(r.doc_ids) == sorted(p.id for p in CORPUS)


def test_random_is_deterministic_by_seed():
    a = random_rankings(CORPUS, QUERIES, k=3, seed=1)
    b = random_rankings(iter(CORPUS), QUERIES, k=3, seed=1)
    c = random_rankings(CORPUS, QUERIES, k=5, seed=2)
    assert a == b
    assert [r.doc_ids for r in a] != [r.doc_ids[:3] for r in c] or a[0].scores != c[0].scores
    # A query's ranking depends on the seed and its id, not on the other queries.
    alone = random_rankings(CORPUS, QUERIES[1:], k=3, seed=1)
    assert alone[0] == a[1]
    assert all(r.scores == sorted(r.scores, reverse=True) for r in a)
    seeds = {tuple(random_rankings(CORPUS, QUERIES, k=5, seed=s)[0].doc_ids) for s in range(8)}
    assert len(seeds) > 1


def test_empty_corpus_is_a_user_error():
    with pytest.raises(FactraceError):
        bm25_rankings([], QUERIES)
    with pytest.raises(FactraceError):
        random_rankings([], QUERIES)


def test_dense_model_ships_with_the_package():
    assert (dense_model_dir() / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def dense_model():
    from factrace.evaluate.baselines import load_dense_model

    return load_dense_model("cpu")


def test_dense_ranks_a_paraphrase_above_unrelated(dense_model):
    corpus = [
        Passage("unrelated", "The stock market fell sharply on Tuesday."),
        Passage("paraphrase", "The birthplace of Alice is the French capital, Paris."),
        Passage("other", "Bananas are rich in potassium."),
    ]
    rankings = dense_rankings(corpus, [Query("q", "Alice was born in", " Paris")], k=3,
                              model=dense_model)
    assert rankings[0].doc_ids[0] == "paraphrase"
    assert rankings[0].scores[0] > rankings[0].scores[1]
    assert -1.0 <= min(rankings[0].scores) and max(rankings[0].scores) <= 1.0 + 1e-6


def test_dense_chunked_merge_equals_one_pass(dense_model, monkeypatch):
    import factrace.evaluate.baselines as baselines

    corpus = CORPUS * 1 + [Passage(f"x{i}", f"filler sentence number {i}") for i in range(7)]
    whole = dense_rankings(corpus, QUERIES, k=4, model=dense_model)
    monkeypatch.setattr(baselines, "_CHUNK", 3)
    chunked = dense_rankings(corpus, QUERIES, k=4, model=dense_model)
    assert [r.doc_ids for r in chunked] == [r.doc_ids for r in whole]
    np.testing.assert_allclose([r.scores for r in chunked], [r.scores for r in whole], atol=1e-5)
    assert len(dense_rankings(corpus, QUERIES, k=100, model=dense_model)[0].doc_ids) == len(corpus)
