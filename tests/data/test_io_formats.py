"""Queries, qrels and rankings (factrace.data.io): round trips and line-numbered errors."""

from __future__ import annotations

import json
import warnings
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from factrace.data.io import (
    Ranking,
    read_qrels,
    read_queries,
    read_rankings,
    write_qrels,
    write_queries,
    write_rankings,
)
from factrace.data.records import Query
from factrace.errors import FactraceError, FactraceWarning


def write_rows(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), "utf-8")
    return path


def raises_at(path: Path, line: int, message: str) -> AbstractContextManager[Any]:
    """Expect a FactraceError reading ``<path>:<line>: ...<message>``."""
    escaped = (f"{path}:{line}: ").replace(".", r"\.")
    return pytest.raises(FactraceError, match=rf"^{escaped}.*{message}")


# Queries ----------------------------------------------------------------------------------------


def test_queries_round_trip(tmp_path: Path) -> None:
    queries = [Query("q1", "Paris is the capital of", " France"), Query("7", "2 + 2 =", " 4")]
    assert write_queries(tmp_path / "q.jsonl", queries) == 2
    assert read_queries(tmp_path / "q.jsonl") == queries


def test_query_ids_are_strings_and_extra_fields_are_ignored(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "q.jsonl",
        [{"id": 3, "prompt": "The sky is", "target": " blue", "relation": "P1"}],
    )
    assert read_queries(path) == [Query("3", "The sky is", " blue")]


QUERY_ERRORS = [
    ({"id": 2, "prompt": "a", "target": ""}, 'field "target" is empty'),
    ({"id": 2, "prompt": "", "target": " b"}, 'field "prompt" is empty'),
    ({"id": 2, "prompt": "a"}, 'missing field "target"'),
    ({"prompt": "a", "target": " b"}, 'missing field "id"'),
    ({"id": 2, "prompt": "a", "target": 4}, 'field "target" must be a string, got an integer'),
    ({"id": 2.0, "prompt": "a", "target": " b"}, 'field "id" must be a string or an integer'),
    ({"id": 1, "prompt": "a", "target": " b"}, r'duplicate id "1" \(first seen on line 1\)'),
    (["id", "prompt"], "expected a JSON object, got a list"),
]


@pytest.mark.parametrize(("row", "message"), QUERY_ERRORS)
def test_query_errors_name_the_line(tmp_path: Path, row: object, message: str) -> None:
    path = write_rows(tmp_path / "queries.jsonl", [{"id": 1, "prompt": "a", "target": " b"}, row])
    with raises_at(path, 2, message):
        read_queries(path)


def test_empty_queries_file(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    path.write_text("\n")
    with pytest.raises(FactraceError, match=r"queries\.jsonl: no queries"):
        read_queries(path)


def test_target_without_its_space_is_repaired_with_one_warning(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "q.jsonl", [
        {"id": 1, "prompt": "Paris is the capital of", "target": " France"},
        {"id": 2, "prompt": "Rome is the capital of", "target": "Italy"},
        {"id": 3, "prompt": "Bern is in", "target": "Switzerland"},
        {"id": 4, "prompt": "The answer is ", "target": "42"},
        {"id": 5, "prompt": "Alba", "target": "'s"},
    ])
    with pytest.warns(FactraceWarning) as caught:
        queries = read_queries(path)
    assert [q.target for q in queries] == [" France", " Italy", " Switzerland", "42", "'s"]
    assert len(caught) == 1
    assert str(caught[0].message).startswith(f"{path}:2: 2 of 5 targets had no leading space")


def test_well_joined_queries_read_without_warning(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "q.jsonl", [{"id": 1, "prompt": "a", "target": " b"}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_queries(path) == [Query("1", "a", " b")]


# Qrels ------------------------------------------------------------------------------------------


def test_qrels_group_gold_passages_by_query(tmp_path: Path) -> None:
    rows = [
        {"query_id": "q1", "doc_id": "d1"},
        {"query_id": "q1", "doc_id": 4},
        {"query_id": 2, "doc_id": "d9"},
        {"query_id": "q1", "doc_id": "d1"},
    ]
    path = write_rows(tmp_path / "qrels.jsonl", rows)
    qrels = read_qrels(path)
    assert qrels == {"q1": {"d1", "4"}, "2": {"d9"}}
    assert write_qrels(tmp_path / "copy.jsonl", qrels) == 3
    assert read_qrels(tmp_path / "copy.jsonl") == qrels


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"query_id": "q"}, 'missing field "doc_id"'),
        ({"doc_id": "d"}, 'missing field "query_id"'),
        (
            {"query_id": "q", "doc_id": None},
            'field "doc_id" must be a string or an integer, got null',
        ),
        ({"query_id": "q", "doc_id": ["d"]}, 'field "doc_id" must be a string or an integer'),
    ],
)
def test_qrels_errors_name_the_line(tmp_path: Path, row: dict, message: str) -> None:
    path = write_rows(tmp_path / "qrels.jsonl", [{"query_id": "q", "doc_id": "d"}, row])
    with raises_at(path, 2, message):
        read_qrels(path)


def test_empty_qrels_file(tmp_path: Path) -> None:
    path = tmp_path / "qrels.jsonl"
    path.write_text("")
    with pytest.raises(FactraceError, match=r"qrels\.jsonl: no qrels"):
        read_qrels(path)


# Rankings ---------------------------------------------------------------------------------------


def test_rankings_round_trip_with_opponents_and_extra_fields(tmp_path: Path) -> None:
    rankings = [
        Ranking("q1", ["d3", "d1"], [0.9, 0.25]),
        Ranking(
            "q2",
            ["d1"],
            [1.0],
            opponent_ids=["d7", "d8"],
            opponent_scores=[-0.5, -0.25],
            extra={"method": "trackstar", "estimated_second_moment": False},
        ),
        Ranking("q3", [], []),
    ]
    path = tmp_path / "rankings.jsonl"
    assert write_rankings(path, rankings) == 3
    assert read_rankings(path) == rankings
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {"query_id": "q1", "doc_ids": ["d3", "d1"], "scores": [0.9, 0.25]}


def test_ranking_ids_become_strings_and_scores_floats(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "r.jsonl", [{"query_id": 1, "doc_ids": [5, "a"], "scores": [2, 1.5]}]
    )
    (ranking,) = read_rankings(path)
    assert (ranking.query_id, ranking.doc_ids, ranking.scores) == ("1", ["5", "a"], [2.0, 1.5])
    assert all(isinstance(score, float) for score in ranking.scores)


GOOD_RANKING = {"query_id": "q1", "doc_ids": ["a", "b"], "scores": [2.0, 1.0]}
RANKING_ERRORS = [
    (
        {"query_id": "q", "doc_ids": ["a", "b"], "scores": [1.0]},
        '"doc_ids" has 2 entries but "scores" has 1',
    ),
    (
        {"query_id": "q", "doc_ids": "a", "scores": [1.0]},
        'field "doc_ids" must be a list, got a string',
    ),
    (
        {"query_id": "q", "doc_ids": ["a"], "scores": [True]},
        r'"scores"\[0\] must be a number, got a boolean',
    ),
    ({"query_id": "q", "doc_ids": ["a"], "scores": ["1"]}, r'"scores"\[0\] must be a number'),
    (
        {"query_id": "q", "doc_ids": [None], "scores": [1]},
        r'field "doc_ids\[0\]" must be a string or an integer',
    ),
    ({"query_id": "q", "doc_ids": ["a", "a"], "scores": [1, 1]}, '"doc_ids" lists "a" twice'),
    ({"query_id": "q", "scores": []}, 'missing field "doc_ids"'),
    ({"doc_ids": [], "scores": []}, 'missing field "query_id"'),
    (
        {"query_id": "q", "doc_ids": [], "scores": [], "opponent_ids": ["x"]},
        '"opponent_ids" and "opponent_scores" must be given together',
    ),
    (
        {
            "query_id": "q",
            "doc_ids": [],
            "scores": [],
            "opponent_ids": ["x"],
            "opponent_scores": [],
        },
        '"opponent_ids" has 1 entries but "opponent_scores" has 0',
    ),
    (GOOD_RANKING, r'duplicate query_id "q1" \(first seen on line 1\)'),
]


@pytest.mark.parametrize(("row", "message"), RANKING_ERRORS)
def test_ranking_errors_name_the_line(tmp_path: Path, row: dict, message: str) -> None:
    path = write_rows(tmp_path / "rankings.jsonl", [GOOD_RANKING, row])
    with raises_at(path, 2, message):
        read_rankings(path)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_scores_are_refused(tmp_path: Path, literal: str) -> None:
    path = tmp_path / "rankings.jsonl"
    path.write_text(f'{{"query_id": "q", "doc_ids": ["a"], "scores": [{literal}]}}\n')
    with raises_at(path, 1, "scores must be finite"):
        read_rankings(path)


def test_empty_rankings_file(tmp_path: Path) -> None:
    path = tmp_path / "rankings.jsonl"
    path.write_text("\n\n")
    with pytest.raises(FactraceError, match=r"rankings\.jsonl: no rankings"):
        read_rankings(path)


def test_inconsistent_ranking_is_a_bug() -> None:
    with pytest.raises(ValueError, match='"doc_ids" has 1 entries but "scores" has 2'):
        Ranking("q", ["a"], [1.0, 2.0])
    with pytest.raises(ValueError, match="clash"):
        Ranking("q", [], [], extra={"scores": []})


def test_write_rankings_is_atomic(tmp_path: Path) -> None:
    def rankings():
        yield Ranking("q1", ["a"], [1.0])
        raise RuntimeError("scoring failed")

    path = tmp_path / "rankings.jsonl"
    path.write_text("previous\n")
    with pytest.raises(RuntimeError):
        write_rankings(path, rankings())
    assert path.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rankings.jsonl"]
