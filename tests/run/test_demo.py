"""A small end-to-end demo: world → pretraining → ladder + baselines → evaluation → report."""

import dataclasses
import json
from pathlib import Path

import pytest

import factrace.factworld.pretrain as pretrain_module
from factrace.errors import FactraceError
from factrace.factworld.pretrain import PretrainConfig
from factrace.run.demo import DemoConfig, run_demo


def _read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _mrr_and_recall10(rankings_path, qrels_path):
    """Both metrics straight from the files: a window ``<doc>#<n>`` counts as its passage, and a
    query of the qrels without a ranked gold passage scores 0."""
    gold = {}
    for row in _read_jsonl(qrels_path):
        gold.setdefault(row["query_id"], set()).add(row["doc_id"])
    ranked = {row["query_id"]: row["doc_ids"] for row in _read_jsonl(rankings_path)}
    rr, hits = [], []
    for query, docs in gold.items():
        positions = [i for i, d in enumerate(ranked.get(query, []))
                     if d in docs or d.rsplit("#", 1)[0] in docs]
        rr.append(1 / (1 + positions[0]) if positions else 0.0)
        hits.append(1.0 if positions and positions[0] < 10 else 0.0)
    return sum(rr) / len(rr), sum(hits) / len(hits)


@pytest.mark.slow
def test_small_demo_end_to_end(tmp_path, monkeypatch):
    trained = []
    train = pretrain_module.train

    def counting_train(*args, **kwargs):
        trained.append(1)
        return train(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "train", counting_train)
    pre = PretrainConfig(vocab_size=512, hidden_size=32, num_layers=2, num_heads=2,
                         intermediate_size=64, max_length=64, epochs=2, batch_size=16)
    cfg = DemoConfig(out=str(tmp_path / "out"), passages=200, queries=12, dim=256,
                     train_examples=64, tail_patch_queries=4, pretrain=pre,
                     cache=str(tmp_path / "cache"), progress=False)
    result = run_demo(cfg)
    assert trained == [1]
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    from transformers import AutoModelForCausalLM

    n = AutoModelForCausalLM.from_pretrained(result["model_dir"]).num_parameters()
    assert results["metadata"]["coverage"].startswith(f"{n / 1e3:.3g}k parameters in 2 blocks; "
                                                      "tracked ")
    methods = [r["method"] for r in results["rows"]]
    assert methods[:5] == ["grad-dot", "grad-cos", "grad-cos+opt", "trackstar-train", "trackstar"]
    assert {"bm25", "bm25+target", "dense", "random"} <= set(methods)
    for row in results["rows"]:
        # the reported scores are those of the rankings written, recomputed here
        mrr, recall10 = _mrr_and_recall10(out / "rankings" / f"{row['method']}.jsonl",
                                          out / "world" / "qrels.jsonl")
        assert row["mrr"] == pytest.approx(mrr, abs=1e-9), row["method"]
        assert row["recall10"] == pytest.approx(recall10, abs=1e-9), row["method"]
        assert row["tail_patch"] is not None
    html = (out / "report.html").read_text()
    assert "trackstar" in html and "data:image/png;base64" in html
    assert len(result["findings"]) >= 3
    # the kinds of every method, and the scaling study over the run's three checkpoints
    demo = json.loads((out / "demo.json").read_text())
    assert set(demo["kinds"]) == set(methods)
    for kinds in demo["kinds"].values():
        for k in ("top1", "top10"):
            assert sum(v["mean"] for v in kinds[k].values()) == pytest.approx(1.0)
    info = json.loads((Path(result["model_dir"]) / "train_info.json").read_text())
    steps = [json.loads((Path(result["model_dir"]) / c / "train_info.json").read_text())
             for c in info["checkpoints"]]
    assert [s["steps"] for s in steps] == [round(info["steps"] / 4), round(info["steps"] / 2)]
    scaling = demo["scaling"]
    assert [e["tokens"] for e in scaling] == [s["tokens_seen"] for s in steps] + [
        info["tokens_seen"]]
    assert scaling[0]["tokens"] < scaling[1]["tokens"] < scaling[2]["tokens"]
    assert results["scaling"][2]["trackstar"]["mrr"] == next(
        r["mrr"] for r in results["rows"] if r["method"] == "trackstar")
    for e in scaling:
        assert e["trackstar"]["tail_patch"] is not None and e["overlap10_se"] is not None
    assert "Scaling study" in html and "Proponent kinds" in html
    assert any("more training tokens" in f.claim for f in result["findings"])
    # a second run refuses to replace the first one's results, unless asked to
    with pytest.raises(FactraceError, match="already holds world, demo.json, rankings"):
        run_demo(cfg)
    # ... and then reuses the cached model instead of training again
    model_dir = Path(result["model_dir"])
    assert model_dir.parent == tmp_path / "cache" / "pretrained"
    cached = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}
    assert "model.safetensors" in cached and "optimizer.pt" in cached

    def no_training(*args, **kwargs):
        raise AssertionError("pretrained again although the cached model fits")

    monkeypatch.setattr(pretrain_module, "train", no_training)
    again = run_demo(dataclasses.replace(cfg, overwrite=True))
    assert again["model_dir"] == result["model_dir"]
    assert {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()} == cached
