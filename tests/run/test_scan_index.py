"""scan, index build + trace: the same rankings; stores guarded by fingerprints."""

import dataclasses
import json

import pytest

from factrace.config import variant_config
from factrace.data.io import read_rankings
from factrace.errors import FactraceError
from factrace.run.index import build_index
from factrace.run.scan import ScanConfig, scan
from factrace.run.tracer import TraceConfig, trace
from factrace.store.encodings import EncodingStore


def _enc(**kw):
    return variant_config("trackstar", dim=256, train_examples=40, batch_tokens=512, **kw)


def test_scan_equals_index_then_trace(world, store, tmp_path):
    res = scan(ScanConfig(model=world["model"], corpus=world["corpus"], queries=world["queries"],
                          optimizer_state=world["optimizer"], out=str(tmp_path / "r.jsonl"),
                          top_k=5, encoder=store.encoder, shard_rows=16, progress=False))
    built = EncodingStore.open(store.out)  # the shared store: the same encoder, index build
    # passages longer than the context are windows of their own: <doc>#<n>
    assert {i.split("#")[0] for i in built.ids} == {r["id"] for r in world["rows"]}
    assert built.n_rows > len(world["rows"])
    traced = trace(TraceConfig(index=store.out, queries=world["queries"],
                               out=str(tmp_path / "t.jsonl"), top_k=5, progress=False))
    assert [r.doc_ids for r in res.rankings] == [r.doc_ids for r in traced.rankings]
    for a, b in zip(res.rankings, traced.rankings, strict=True):
        assert a.scores == pytest.approx(b.scores, abs=1e-6)
    on_disk = read_rankings(tmp_path / "r.jsonl")
    assert [r.doc_ids for r in on_disk] == [r.doc_ids for r in res.rankings]
    meta = json.loads((tmp_path / "r.jsonl.meta.json").read_text())
    assert meta["encoder"]["whitening"]["hessian"] == "mixed"
    assert 0 < meta["encoder"]["whitening"]["lambda"] < 1


def test_top_k_larger_than_corpus_returns_everything(world):
    res = scan(ScanConfig(model=world["model"], corpus=world["corpus"], queries=world["queries"],
                          optimizer_state=world["optimizer"], top_k=1000,
                          encoder=_enc(hessian="none"), shard_rows=25, progress=False))
    everything = {r["id"] for r in world["rows"]}
    for r in res.rankings:
        assert {i.split("#")[0] for i in r.doc_ids} == everything
        assert len(set(r.doc_ids)) == len(r.doc_ids) > len(everything)
        assert r.scores == sorted(r.scores, reverse=True)


def test_trace_refuses_store_of_other_seed(world, store, store_copy):
    # a build resumed into the store with another seed is refused
    with pytest.raises(FactraceError) as refused:
        build_index(dataclasses.replace(store, out=str(store_copy),
                                        encoder=store.encoder.replace(seed=1)))
    _assert_one_line_naming_the_seed(str(refused.value), store_copy)
    # trace encodes queries with the configuration the store records: one that asks for another
    # seed than the encodings were made with is refused, not searched with mismatched queries
    manifest_path = store_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["config"]["encoder"]["config"]["seed"] == 0
    manifest["config"]["encoder"]["config"]["seed"] = 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(FactraceError) as refused:
        trace(TraceConfig(index=str(store_copy), queries=world["queries"], progress=False))
    _assert_one_line_naming_the_seed(str(refused.value), store_copy)


def _assert_one_line_naming_the_seed(message, path):
    assert "\n" not in message
    assert message.startswith(f"encoding store {path} was built with a different ")
    assert "projection seed (store: 0, now: 1)" in message
    assert "model weights" not in message and "tokenizer" not in message


def test_scan_with_estimated_second_moment_records_it(world):
    res = scan(ScanConfig(model=world["model"], corpus=world["corpus"], queries=world["queries"],
                          top_k=3, encoder=_enc(second_moment="estimate", estimate_examples=20),
                          shard_rows=16, progress=False))
    note = res.metadata["fit"]["second_moment"]
    assert note.startswith("estimate (from 20 training examples")
    assert "estimate" in res.metadata["fingerprints"]["second_moment"]
    assert all(len(r.doc_ids) == 3 for r in res.rankings)
    # what each fitting step took, and where every pass's token budget stands after it
    timings = res.metadata["fit"]["timings"]
    assert set(timings) == {"estimate_s", "r_train_s", "basis_s"}
    assert all(v >= 0 for v in timings.values())
    assert sum(timings.values()) <= res.metadata["timings"]["fit_s"]
    assert res.metadata["peak_rss_bytes"] > 0
    budgets = res.metadata["token_budgets"]
    assert set(budgets) == {"estimate", "encode"}
    assert all(b["tokens"] >= 1 for b in budgets.values())
