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


def test_eval_kinds_by_hand_and_the_line_without_facts(tmp_path, capsys):
    from factrace.cli import main

    corpus = _jsonl(tmp_path / "corpus.jsonl", [
        {"id": "d0", "text": "Tor Vem was born in Sarn."}, {"id": "d1", "text": "Sarn is old."},
        {"id": "d2", "text": "Ada is a native of Kell."}, {"id": "d3", "text": "Rain fell."}])
    rankings = _jsonl(tmp_path / "r.jsonl", [
        {"query_id": "q0", "doc_ids": ["d1", "d0", "d2", "d3"], "scores": [4.0, 3, 2, 1]},
        {"query_id": "q1", "doc_ids": ["d3", "d2"], "scores": [2.0, 1.0]}])
    qrels = _jsonl(tmp_path / "qrels.jsonl", [{"query_id": "q0", "doc_id": "d0"},
                                              {"query_id": "q1", "doc_id": "d0"}])
    facts = _jsonl(tmp_path / "queries.jsonl", [
        {"id": q, "prompt": "Tor Vem was born in", "target": " Sarn", "subject": "Tor Vem",
         "relation": "born_in"} for q in ("q0", "q1")])
    out = tmp_path / "m.json"
    assert main(["eval", "--rankings", rankings, "--qrels", qrels, "--kinds", "--queries", facts,
                 "--corpus", corpus, "--out", str(out), "-q"]) == 0
    shown = capsys.readouterr().out
    assert "Proponent kinds" in shown and "entails" in shown
    kinds = json.loads(out.read_text())["kinds"]
    # q0: object, entails (gold), relation, other; q1: other, relation
    assert {k: v["mean"] for k, v in kinds["top1"].items()} == {
        "entails": 0, "object": 0.5, "subject": 0, "relation": 0, "other": 0.5}
    assert {k: v["mean"] for k, v in kinds["top10"].items()} == {
        "entails": 0.125, "object": 0.125, "subject": 0, "relation": 0.375, "other": 0.375}
    plain = _jsonl(tmp_path / "plain.jsonl", [
        {"id": q, "prompt": "Tor Vem was born in", "target": " Sarn"} for q in ("q0", "q1")])
    rows = evaluate(EvalConfig(rankings=rankings, qrels=qrels, kinds=True, queries=plain,
                               corpus=corpus, progress=False))
    assert "kinds" not in rows[0] and rows[0]["kinds_note"].startswith(
        "proponent kinds not computed: no query of")
    with pytest.raises(FactraceError, match="--kinds needs --queries"):
        evaluate(EvalConfig(rankings=rankings, qrels=qrels, kinds=True, progress=False))
