"""``demo --lds``: retrain on subsets, LDS beside MRR and tail-patch in one table; the files it
leaves are read back by ``eval --lds`` with the same numbers."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from factrace.cli import main
from factrace.errors import FactraceError
from factrace.evaluate.lds import read_outputs, read_subsets
from factrace.factworld.pretrain import PretrainConfig
from factrace.factworld.retrain import Recipe, retrain_outputs
from factrace.run.demo import DemoConfig, run_demo

sys.path.insert(0, str(Path(__file__).parents[1] / "evaluate"))
from test_lds import brute_lds  # noqa: E402

PRE = PretrainConfig(vocab_size=512, hidden_size=32, num_layers=2, num_heads=2,
                     intermediate_size=64, max_length=64, epochs=2, batch_size=16, num_threads=1)


@pytest.mark.slow
def test_demo_lds_table_and_eval_lds_agree(tmp_path, capsys):
    cfg = DemoConfig(out=str(tmp_path / "out"), passages=120, queries=8, dim=128,
                     train_examples=32, tail_patch_queries=1, pretrain=PRE,
                     cache=str(tmp_path / "cache"), progress=False, lds=4,
                     lds_noise_subsets=2, workers=1)
    result = run_demo(cfg)
    out = tmp_path / "out"
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert {"trackstar", "grad-dot", "bm25", "dense", "random"} <= set(rows)
    subsets = read_subsets(out / "lds" / "subsets.jsonl")
    outputs = read_outputs(out / "lds" / "outputs.jsonl")
    assert len(subsets) == 4 and all(len(s.passages) == 60 for s in subsets)
    for method, row in rows.items():
        scores = np.load(out / "scores" / f"{method}.npz")
        expected = brute_lds(scores["scores"].astype(np.float64).tolist(),
                             scores["doc_ids"].tolist(), scores["query_ids"].tolist(), subsets,
                             outputs)
        assert row["lds"] == pytest.approx(expected, abs=1e-9), method
        assert row["lds_se"] > 0 and row["mrr"] is not None and row["tail_patch"] is not None
    meta = result["metadata"]["lds"]
    assert meta["variant"].startswith("random-subsets (TRAK): 4 subsets keeping 50%")
    assert "noise_floor" in meta and "seed 1 against seed 0 on the first 2" in \
        meta["noise_floor_from"]
    assert "| LDS |" in (out / "results.md").read_text()
    assert "<th>LDS</th>" in (out / "report.html").read_text()
    # the outputs are what a retraining on the subset measures (from the cache: same key)
    recipe = Recipe(str(out / "world" / "corpus.jsonl"), str(out / "world" / "queries.jsonl"),
                    result["model_dir"], PRE)
    again = retrain_outputs(recipe, subsets[1], 0, tmp_path / "fresh")
    assert again["outputs"] == {q: v for (s, q), v in outputs.items() if s == subsets[1].id}
    # eval --lds on the files the demo left, at its defaults
    argv = ["eval", "--lds", "--subsets", str(out / "lds" / "subsets.jsonl"),
            "--outputs", str(out / "lds" / "outputs.jsonl"),
            "--noise-outputs", str(out / "lds" / "noise_outputs.jsonl"),
            "--out", str(tmp_path / "lds.json")]
    for method in ("trackstar", "bm25"):
        argv += ["--scores", str(out / "scores" / f"{method}.npz")]
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "random-subsets (TRAK)" in printed and "noise floor" in printed
    record = json.loads((tmp_path / "lds.json").read_text())
    for method in ("trackstar", "bm25"):
        assert record["methods"][method]["mean"] == pytest.approx(rows[method]["lds"])
        assert f"{rows[method]['lds']:.3f} ± {rows[method]['lds_se']:.3f}" in printed
    assert record["noise_floor"]["subsets"] == 2
    # a rerun reads every retraining from the cache; a bad LDS option is refused up front
    with pytest.raises(FactraceError, match="lds-fraction|fraction"):
        run_demo(dataclasses.replace(cfg, lds_fraction=1.5, overwrite=True))
