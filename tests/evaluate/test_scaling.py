"""The scaling study: checkpoints refused before any work, their place on the axes, paired
findings checked by hand, and ``compare`` over several models end to end."""

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest

import factrace.evaluate.compare as compare_module
from factrace.cli import main
from factrace.errors import FactraceError
from factrace.evaluate.scaling import (
    axes,
    check_checkpoints,
    overlap,
    scaling_findings,
    training_position,
)


def _copy(src, dst: Path, **record) -> str:
    shutil.copytree(src, dst)
    for name, value in record.items():
        (dst / name).write_text(json.dumps(value))
    return str(dst)


def test_training_position_from_each_record(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    assert training_position(str(a)) == (None, None, "none")
    (a / "trainer_state.json").write_text(json.dumps({"global_step": 40}))
    assert training_position(str(a)) == (None, 40, "trainer_state.json")
    (a / "factrace.json").write_text(json.dumps({"step": 30, "second_moment": "x"}))
    assert training_position(str(a)) == (None, 30, "factrace.json")
    (a / "train_info.json").write_text(json.dumps({"tokens_seen": 1234, "steps": 7}))
    assert training_position(str(a)) == (1234, 7, "train_info.json")


def test_checkpoints_refused_before_any_work(world, tmp_path):
    model = world["model"]
    with pytest.raises(FactraceError, match="is given twice"):
        check_checkpoints([model, model], None, True, None)
    bare = tmp_path / "bare"
    shutil.copytree(model, bare, ignore=shutil.ignore_patterns("optimizer.pt"))
    with pytest.raises(FactraceError, match="without factrace_optimizer.safetensors"):
        check_checkpoints([model, str(bare)], None, True, None)
    with pytest.raises(FactraceError, match="no optimizer.pt for tail-patch"):
        check_checkpoints([model, str(bare)], "estimate", True, None)
    ok = check_checkpoints([model, str(bare)], "estimate", True, 1e-3)
    assert [c.tail_patch_state for c in ok] == [str(Path(model) / "optimizer.pt"), None]
    assert [c.optimizer_state for c in ok] == [None, None]
    # another tokenizer: one token more
    other = Path(_copy(model, tmp_path / "other"))
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["model"]["vocab"]["zzzq"] = max(tok["model"]["vocab"].values()) + 1
    (other / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(FactraceError, match=f"checkpoints {model} and {other} have different "
                                            "tokenizers"):
        check_checkpoints([model, str(other)], None, True, None)


def test_overlap_counts_windows_as_their_passage():
    assert overlap(["a", "b#1", "c"], ["b", "c", "d"], k=3) == pytest.approx(2 / 3)
    assert overlap(["a"] * 1, ["b"], k=10) == 0.0


def _entry(params, tokens, step, overlaps, model="m"):
    return {"model": model, "parameters": params, "tokens": tokens, "step": step,
            "per_query": {"overlap10": overlaps, "mrr": overlaps, "entails10": {}}}


def test_axes_and_paired_findings_by_hand():
    first = _entry(100, 50, 5, {"a": 0.1, "b": 0.2, "c": 0.3})
    last = _entry(100, 200, 20, {"a": 0.3, "b": 0.5, "c": 0.4})
    small = _entry(10, 200, 20, {"a": 0.5, "b": 0.5, "c": 0.5})
    entries = [last, small, first]                      # given out of order
    order = axes(entries)
    assert order["tokens"] == [2, 0] and order["tokens_by"] == "training tokens"
    assert order["size"] == [1, 0]
    found = scaling_findings(entries, order)
    tokens = [f for f in found if "training tokens" in f.claim]
    assert len(tokens) == 2                             # overlap, MRR (no entails values)
    # differences 0.2, 0.3, 0.1: mean 0.2, se 0.1 / sqrt(3)
    assert tokens[0].z == pytest.approx(0.2 / (0.1 / math.sqrt(3)))
    assert tokens[0].verdict == "held"
    size = [f for f in found if "parameters" in f.claim]
    # small → last: differences -0.2, 0, -0.1: mean -0.1, se 0.1 / sqrt(3)
    assert size[0].z == pytest.approx(-0.1 / (0.1 / math.sqrt(3)))
    assert size[0].verdict == "not significant"
    no_record = [_entry(100, None, None, {"a": 0.0}), _entry(100, None, None, {"a": 1.0})]
    assert axes(no_record)["tokens_by"].startswith("the order given")
    assert axes(no_record)["tokens"] == [0, 1]
    unsized = scaling_findings(no_record, axes(no_record))
    assert unsized[-1].verdict == "not measured" and "same parameter count" in unsized[-1].evidence
    assert unsized[0].z == math.inf and unsized[0].verdict == "held"  # 0 → 1, no spread


@pytest.fixture
def fact_world(world, tmp_path):
    """The world's queries with their facts (subject, relation) and qrels by hand: the
    passages stating subject "was born in" target."""
    queries, qrels = [], []
    for q in map(json.loads, Path(world["queries"]).read_text().splitlines()):
        subject = q["prompt"].removesuffix(" was born in")
        gold = [r["id"] for r in world["rows"]
                if r["text"].startswith(f"{subject} was born in{q['target']}.")]
        if gold:
            queries.append({**q, "subject": subject, "relation": "born_in"})
            qrels += [{"query_id": q["id"], "doc_id": d} for d in gold]
    assert len(queries) >= 2
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (tmp_path / "qrels.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qrels))
    return tmp_path / "queries.jsonl", tmp_path / "qrels.jsonl"


@pytest.mark.slow
def test_compare_over_checkpoints_end_to_end(world, fact_world, tmp_path, monkeypatch):
    """Three checkpoints: a copy of the final model recorded at fewer tokens, a smaller model,
    the final model. The copy is measured afresh and the final model's numbers reused from the
    full comparison: the same weights must give the same numbers either way."""
    from hfdir import make_model_dir

    original = compare_module.compare

    def quicker(cfg):  # the study's path, not the whole ladder
        return original(dataclasses.replace(cfg, variants=("grad-cos", "trackstar"),
                                            baselines=("bm25",)))

    monkeypatch.setattr(compare_module, "compare", quicker)
    builds = []
    build = compare_module.build_index
    monkeypatch.setattr(compare_module, "build_index",
                        lambda job: builds.append(job.model) or build(job))
    final = _copy(world["model"], tmp_path / "final", **{"train_info.json": {"tokens_seen": 200}})
    early = _copy(world["model"], tmp_path / "early", **{"train_info.json": {"tokens_seen": 100}})
    small = make_model_dir(tmp_path / "small", world["rows"], width=16)
    queries, qrels = fact_world
    out = tmp_path / "out"
    assert main(["compare", "--model", early, "--model", str(small), "--model", final,
                 "--corpus", world["corpus"], "--queries", str(queries), "--qrels", str(qrels),
                 "--out", str(out), "--dim", "64", "--train-examples", "16", "-q"]) == 0
    assert sorted(builds) == sorted([final, final, early, str(small)])  # none for final again
    results = json.loads((out / "results.json").read_text())
    entries = results["scaling"]
    assert [e["model"] for e in entries] == [early, str(small), final]
    assert results["scaling_axes"]["tokens"] == [0, 2]
    assert results["scaling_axes"]["size"] == [1, 2]
    assert entries[1]["parameters"] < entries[2]["parameters"]
    for key in ("mrr", "mrr_se", "recall10", "tail_patch", "tail_patch_se"):
        assert entries[0]["trackstar"][key] == pytest.approx(entries[2]["trackstar"][key], abs=0)
        assert entries[0]["bm25"][key] == pytest.approx(entries[2]["bm25"][key], abs=0)
    assert entries[0]["overlap10"] == pytest.approx(entries[2]["overlap10"])
    by_method = {r["method"]: r for r in results["rows"]}
    assert entries[2]["trackstar"]["mrr"] == by_method["trackstar"]["mrr"]
    assert entries[2]["trackstar"]["kinds"] == by_method["trackstar"]["kinds"]
    shares = entries[1]["trackstar"]["kinds"]["top10"]
    assert sum(v["mean"] for v in shares.values()) == pytest.approx(1.0)
    claims = [f["claim"] for f in results["findings"]]
    assert any("more training tokens" in c for c in claims)
    assert any("more parameters" in c for c in claims)
    assert (out / "scaling.png").is_file() and (out / "kinds.png").is_file()
    html = (out / "report.html").read_text()
    assert "Scaling study" in html and "Proponent kinds" in html
    md = (out / "results.md").read_text()
    assert "## Scaling study" in md and "the tokens axis ordered by training tokens" in md


def test_compare_over_checkpoints_refuses_optimizer_state(world, tmp_path, capsys):
    code = main(["compare", "--model", world["model"], "--model", world["model"],
                 "--optimizer-state", world["optimizer"], "--corpus", world["corpus"],
                 "--queries", world["queries"], "--qrels", world["queries"],
                 "--out", str(tmp_path / "o"), "-q"])
    assert code == 2
    assert "leave --optimizer-state out" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
