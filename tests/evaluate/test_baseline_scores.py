"""Full baseline scores (for LDS): the very scores the baselines rank by."""

import numpy as np
import pytest
from test_baselines import CORPUS, QUERIES

from factrace.evaluate.baselines import baseline_rankings, baseline_scores


@pytest.mark.parametrize("name", ["bm25", "bm25+target", "dense"])
def test_full_scores_are_the_scores_ranked(name):
    full = baseline_scores(name, CORPUS, QUERIES)
    assert full.shape == (len(QUERIES), len(CORPUS)) and full.dtype == np.float32
    ranked = baseline_rankings(name, CORPUS, QUERIES, k=len(CORPUS))
    ids = [p.id for p in CORPUS]
    for row, ranking in zip(full, ranked, strict=True):
        expected = dict(zip(ranking.doc_ids, ranking.scores, strict=True))
        assert dict(zip(ids, row.tolist(), strict=True)) == pytest.approx(expected, abs=1e-5)


def test_random_full_scores_are_uniform_and_seeded_by_query():
    full = baseline_scores("random", CORPUS, QUERIES)
    assert full.shape == (2, len(CORPUS)) and (0 <= full).all() and (full < 1).all()
    np.testing.assert_array_equal(baseline_scores("random", CORPUS, QUERIES[1:]), full[1:])
    assert not np.array_equal(full[0], full[1])
