"""MRR and Recall@10 against values computed by hand."""

import math

import pytest

from factrace.data.io import Ranking
from factrace.evaluate.metrics import (
    attribution_metrics,
    bare_id,
    hit_at,
    is_gold,
    mean_stderr,
    reciprocal_rank,
    split_window,
)


def test_reciprocal_rank_and_hit_by_hand():
    gold = {"g"}
    assert reciprocal_rank(["g", "a"], gold) == 1.0
    assert reciprocal_rank(["a", "b", "g"], gold) == pytest.approx(1 / 3)
    assert reciprocal_rank(["a", "b"], gold) == 0.0
    ranking = [f"d{i}" for i in range(10)] + ["g"]
    assert hit_at(ranking, gold) == 0.0
    assert hit_at(ranking, gold, k=11) == 1.0
    assert hit_at(ranking[:9] + ["g"], gold) == 1.0


def test_window_ids_count_as_their_passage():
    assert bare_id("doc#3") == "doc"
    assert bare_id("doc#x") == "doc#x"
    assert bare_id("a#1#2") == "a#1"
    assert split_window("a#1#2") == ("a#1", 2) and split_window("doc#x") == ("doc#x", None)
    assert is_gold("doc#12", {"doc"})
    assert is_gold("doc#1", {"doc#1"})
    assert not is_gold("doc#1", {"doc#2"})
    assert not is_gold("docs#1", {"doc"})
    assert reciprocal_rank(["x#0", "doc#4"], {"doc"}) == 0.5


def test_mean_stderr_by_hand():
    stats = mean_stderr([1.0, 0.5, 0.0])
    assert stats.mean == pytest.approx(0.5)
    # std(ddof=1) = 0.5, se = 0.5 / sqrt(3)
    assert stats.stderr == pytest.approx(0.5 / math.sqrt(3))
    assert stats.n == 3
    assert mean_stderr([0.7]).stderr == 0.0 and mean_stderr([0.7]).mean == 0.7
    assert mean_stderr([]) == mean_stderr([]).__class__(0.0, 0.0, 0)
    assert str(stats) == "0.5000 ± 0.2887"


def test_attribution_metrics_by_hand():
    rankings = [
        Ranking("q1", ["g1", "a", "b"], [3.0, 2.0, 1.0]),  # rr 1, hit
        Ranking("q2", ["a", "b", "g2#1"], [3.0, 2.0, 1.0]),  # window of gold: rr 1/3, hit
        Ranking("q3", ["a", "b", "c"], [3.0, 2.0, 1.0]),  # no gold: rr 0, miss
        Ranking("q5", ["a"], [1.0]),  # not in qrels: skipped
        Ranking("q6", ["a"], [1.0]),  # no gold in qrels: skipped
    ]
    ranks_late = [f"x{i}" for i in range(10)] + ["g4"]  # gold at index 10: rr 1/11, miss at 10
    rankings.append(Ranking("q4", ranks_late, [0.0] * 11))
    qrels = {"q1": {"g1"}, "q2": {"g2"}, "q3": {"g3"}, "q4": {"g4"}, "q7": {"g7"}, "q6": set()}
    m = attribution_metrics(rankings, qrels)
    rr = [1.0, 1 / 3, 0.0, 1 / 11, 0.0]  # q7 missing from the rankings counts as 0
    hits = [1.0, 1.0, 0.0, 0.0, 0.0]
    assert m.reciprocal_ranks == pytest.approx(dict(zip(["q1", "q2", "q3", "q4", "q7"], rr, strict=True)))
    assert m.mrr.mean == pytest.approx(sum(rr) / 5)
    mean = sum(rr) / 5
    assert m.mrr.stderr == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in rr) / 4 / 5))
    assert m.recall.mean == pytest.approx(0.4)
    assert m.recall.stderr == pytest.approx(math.sqrt(0.3 / 5))  # var(ddof=1) of 1,1,0,0,0 = 0.3
    assert m.hits == dict(zip(["q1", "q2", "q3", "q4", "q7"], hits, strict=True))
    assert m.missing == ["q7"]
    assert m.skipped == ["q5", "q6"]
    assert m.mrr.n == m.recall.n == 5 and m.k == 10
    assert m.to_dict()["mrr"]["mean"] == pytest.approx(mean)


def test_mapping_rankings_and_recall_cutoff():
    m = attribution_metrics({"q": ["a", "b", "g"]}, {"q": {"g"}}, k=2)
    assert m.recall.mean == 0.0 and m.mrr.mean == pytest.approx(1 / 3)
    assert attribution_metrics({"q": ["a", "b", "g"]}, {"q": {"g"}}, k=3).recall.mean == 1.0
