"""A small end-to-end demo: world → pretraining → ladder + baselines → evaluation → report."""

import dataclasses
import json

import pytest

from factrace.errors import FactraceError
from factrace.factworld.pretrain import PretrainConfig
from factrace.run.demo import DemoConfig, run_demo


def test_small_demo_end_to_end(tmp_path):
    pre = PretrainConfig(vocab_size=512, hidden_size=32, num_layers=2, num_heads=2,
                         intermediate_size=64, max_length=64, epochs=2, batch_size=16)
    cfg = DemoConfig(out=str(tmp_path / "out"), passages=200, queries=12, dim=256,
                     train_examples=64, tail_patch_queries=4, pretrain=pre,
                     cache=str(tmp_path / "cache"), progress=False)
    result = run_demo(cfg)
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    methods = [r["method"] for r in results["rows"]]
    assert methods[:5] == ["grad-dot", "grad-cos", "grad-cos+opt", "trackstar-train", "trackstar"]
    assert {"bm25", "bm25+target", "dense", "random"} <= set(methods)
    for row in results["rows"]:
        assert 0.0 <= row["mrr"] <= 1.0 and 0.0 <= row["recall10"] <= 1.0
        assert row["tail_patch"] is not None
    html = (out / "report.html").read_text()
    assert "trackstar" in html and "data:image/png;base64" in html
    assert (out / "rankings" / "trackstar.jsonl").is_file()
    assert len(result["findings"]) >= 3
    # a second run refuses to replace the first one's results, unless asked to
    with pytest.raises(FactraceError, match="already holds world, demo.json, rankings"):
        run_demo(cfg)
    # ... and then reuses the cached model instead of training again
    again = run_demo(dataclasses.replace(cfg, overwrite=True))
    assert again["model_dir"] == result["model_dir"]
    assert again["timings"]["pretrain_s"] < result["timings"]["pretrain_s"]
