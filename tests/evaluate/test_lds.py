"""LDS: against a toy whose linear datamodel is known, a brute-force Spearman, and bad input."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factrace.errors import FactraceError
from factrace.evaluate.lds import (
    Subset,
    lds,
    noise_floor,
    random_subsets,
    read_outputs,
    read_subsets,
    spearman,
)


def average_ranks(values):
    """1-based ranks, tied values sharing the mean of their positions (by hand)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def reference_spearman(a, b):
    """Pearson correlation of average ranks, written out."""
    ra, rb = average_ranks(list(a)), average_ranks(list(b))
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(-3, 3)), min_size=3, max_size=30))
def test_spearman_with_ties_matches_reference(pairs):
    a = np.array([p[0] for p in pairs], dtype=float)
    b = np.array([p[1] for p in pairs], dtype=float)
    got = spearman(a, b)
    if len(set(a)) == 1 or len(set(b)) == 1:
        assert math.isnan(got)
    else:
        assert got == pytest.approx(reference_spearman(a, b), abs=1e-12)


def toy(n_docs=40, n_queries=25, n_subsets=48, seed=0):
    rng = np.random.default_rng(seed)
    beta = rng.normal(size=(n_queries, n_docs))
    docs = [f"d{i}" for i in range(n_docs)]
    queries = [f"q{i}" for i in range(n_queries)]
    subsets = random_subsets(docs, n_subsets, 0.5, seed)
    member = np.array([[d in set(s.passages) for d in docs] for s in subsets], dtype=float)
    measured = member @ beta.T + 3.0  # the true linear datamodel, plus a constant
    outputs = {(s.id, q): float(measured[j, i]) for j, s in enumerate(subsets)
               for i, q in enumerate(queries)}
    return beta, docs, queries, subsets, outputs, rng


def brute_lds(scores, docs, queries, subsets, outputs):
    """Per query: Σ over the rows of the subset's passages (a passage's windows ``<doc>#<n>``
    included), one subset at a time, then the hand Spearman."""
    per_query = []
    for i, q in enumerate(queries):
        predicted = [sum(scores[i][j] for d in s.passages for j, row in enumerate(docs)
                         if row == d or row.rsplit("#", 1)[0] == d) for s in subsets]
        measured = [outputs[(s.id, q)] for s in subsets]
        per_query.append(reference_spearman(predicted, measured))
    return sum(per_query) / len(per_query)


def test_true_coefficients_give_lds_one_and_shuffled_about_zero():
    beta, docs, queries, subsets, outputs, rng = toy()
    exact = lds(beta, queries, docs, subsets, outputs)
    assert exact.mean == pytest.approx(1.0, abs=1e-12)
    assert exact.variant == "random-subsets" and exact.kept_fraction == 0.5
    flipped = lds(-beta, queries, docs, subsets, outputs)
    assert flipped.mean == pytest.approx(-1.0, abs=1e-12)
    as_loss = {k: -v for k, v in outputs.items()}
    assert lds(beta, queries, docs, subsets, as_loss, sign=-1).mean == pytest.approx(1.0)
    shuffled = np.array([rng.permutation(row) for row in beta])
    noise = lds(shuffled, queries, docs, subsets, outputs)
    assert abs(noise.mean) < 3 * noise.stderr + 0.05
    assert noise.stderr > 0


def test_lds_matches_brute_force_on_noisy_scores():
    beta, docs, queries, subsets, outputs, rng = toy(n_docs=12, n_queries=6, n_subsets=10)
    scores = beta + rng.normal(scale=1.5, size=beta.shape)
    got = lds(scores, queries, docs, subsets, outputs)
    assert got.mean == pytest.approx(brute_lds(scores, docs, queries, subsets, outputs),
                                     abs=1e-12)
    assert 0 < got.mean < 1


def test_leave_out_variant_is_named():
    beta, docs, queries, _, _, _ = toy()
    subsets = random_subsets(docs, 20, 0.9, 1)
    member = np.array([[d in set(s.passages) for d in docs] for s in subsets], dtype=float)
    measured = member @ beta.T
    outputs = {(s.id, q): float(measured[j, i]) for j, s in enumerate(subsets)
               for i, q in enumerate(queries)}
    result = lds(beta, queries, docs, subsets, outputs)
    assert result.variant == "leave-out" and result.kept_fraction == 0.9
    assert result.mean == pytest.approx(1.0)


def test_constant_predictions_count_as_zero():
    docs, queries = ["a", "b", "c", "d"], ["q"]
    subsets = [Subset("s0", ("a", "b")), Subset("s1", ("c", "d")), Subset("s2", ("a", "c"))]
    outputs = {("s0", "q"): 1.0, ("s1", "q"): 2.0, ("s2", "q"): 3.0}
    result = lds(np.zeros((1, 4)), queries, docs, subsets, outputs)
    assert result.mean == 0.0 and result.undefined == 1


def test_noise_floor_is_the_correlation_of_two_retrainings():
    _, docs, queries, subsets, outputs, rng = toy(n_queries=5, n_subsets=12)
    other = {k: v + rng.normal(scale=0.5) for k, v in outputs.items()}
    floor = noise_floor(outputs, other, subsets, queries)
    expected = np.mean([reference_spearman([outputs[(s.id, q)] for s in subsets],
                                           [other[(s.id, q)] for s in subsets])
                        for q in queries])
    assert floor.mean == pytest.approx(expected, abs=1e-12)
    assert noise_floor(outputs, outputs, subsets, queries).mean == pytest.approx(1.0)


def test_missing_output_names_subset_and_query_in_one_line():
    beta, docs, queries, subsets, outputs, _ = toy(n_queries=3, n_subsets=4)
    del outputs[(subsets[2].id, queries[1])]
    del outputs[(subsets[3].id, queries[0])]
    with pytest.raises(FactraceError) as err:
        lds(beta, queries, docs, subsets, outputs)
    message = str(err.value)
    assert "\n" not in message
    assert f"subset {subsets[2].id!r} and query {queries[1]!r}" in message
    assert "1 more" in message


def test_subset_naming_an_unscored_passage_is_refused():
    beta, docs, queries, subsets, outputs, _ = toy(n_queries=2, n_subsets=3)
    bad = [*subsets[:2], Subset(subsets[2].id, (*subsets[2].passages, "nowhere"))]
    with pytest.raises(FactraceError, match="'nowhere'"):
        lds(beta, queries, docs, bad, outputs)


def test_random_subsets_are_deterministic_and_sized():
    docs = [str(i) for i in range(101)]
    a = random_subsets(docs, 5, 0.5, 3)
    assert a == random_subsets(docs, 5, 0.5, 3)
    assert a != random_subsets(docs, 5, 0.5, 4)
    assert all(len(s.passages) == 50 and len(set(s.passages)) == 50 for s in a)
    assert all(list(s.passages) == sorted(s.passages, key=int) for s in a)
    for bad in (dict(m=1, fraction=0.5), dict(m=4, fraction=1.0), dict(m=4, fraction=0.001)):
        with pytest.raises(FactraceError):
            random_subsets(docs, seed=0, **bad)


def test_readers_average_seeds_and_refuse_bad_rows(tmp_path):
    subsets = tmp_path / "subsets.jsonl"
    subsets.write_text(json.dumps({"subset": "s0", "passages": ["a", 2]}) + "\n")
    assert read_subsets(subsets) == [Subset("s0", ("a", "2"))]
    outputs = tmp_path / "outputs.jsonl"
    rows = [{"subset": "s0", "query_id": "q", "output": -1.0, "seed": 0},
            {"subset": "s0", "query_id": "q", "output": -2.0, "seed": 1}]
    outputs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_outputs(outputs) == {("s0", "q"): -1.5}
    assert read_outputs(outputs, seed=1) == {("s0", "q"): -2.0}
    outputs.write_text(json.dumps({"subset": "s0", "query_id": "q"}) + "\n")
    with pytest.raises(FactraceError, match=r"outputs.jsonl:1: missing field\(s\) output"):
        read_outputs(outputs)
    outputs.write_text(json.dumps({"subset": "s0", "query_id": "q", "output": "x"}) + "\n")
    with pytest.raises(FactraceError, match="finite number"):
        read_outputs(outputs)
