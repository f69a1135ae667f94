"""eval's job: the results row of one rankings file, written where asked."""

import json

import pytest

from factrace.errors import FactraceError
from factrace.evaluate.evaluation import EvalConfig, evaluate


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_evaluate_gives_and_writes_the_row(tmp_path):
    rankings = _jsonl(tmp_path / "r.jsonl", [
        {"query_id": q, "doc_ids": ["d0", "d1"], "scores": [2.0, 1.0]} for q in ("q0", "q1")])
    qrels = _jsonl(tmp_path / "qrels.jsonl", [{"query_id": "q0", "doc_id": "d0"},
                                              {"query_id": "q1", "doc_id": "d1"}])
    out = tmp_path / "metrics.json"
    rows = evaluate(EvalConfig(rankings=rankings, qrels=qrels, out=str(out), progress=False))
    assert len(rows) == 1 and rows[0]["mrr"] == 0.75 and "tail_patch_step" not in rows[0]
    assert json.loads(out.read_text()) == rows[0]
    with pytest.raises(FactraceError, match="exists"):  # refused before any work
        evaluate(EvalConfig(rankings=rankings, qrels=qrels, out=str(out), progress=False))
    with pytest.raises(FactraceError, match=r"--tail-patch needs --model, --corpus, --queries, "
                                            r"--optimizer-state \(or, without it, --lr"):
        evaluate(EvalConfig(rankings=rankings, qrels=qrels, tail_patch=True, progress=False))
