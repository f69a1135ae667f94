"""scan, index build + trace: the same rankings; stores guarded by fingerprints."""

import json

import pytest

from factrace.config import variant_config
from factrace.data.io import read_rankings
from factrace.errors import FactraceError
from factrace.run.index import IndexConfig, build_index
from factrace.run.scan import ScanConfig, scan
from factrace.run.tracer import TraceConfig, trace


def _enc(**kw):
    return variant_config("trackstar", dim=256, train_examples=40, batch_tokens=512, **kw)


def test_scan_equals_index_then_trace(world, tmp_path):
    res = scan(ScanConfig(model=world["model"], corpus=world["corpus"], queries=world["queries"],
                          optimizer_state=world["optimizer"], out=str(tmp_path / "r.jsonl"),
                          top_k=5, encoder=_enc(), shard_rows=16, progress=False))
    store = build_index(IndexConfig(model=world["model"], corpus=world["corpus"],
                                    out=str(tmp_path / "store"), queries=world["queries"],
                                    optimizer_state=world["optimizer"], encoder=_enc(),
                                    shard_rows=16, progress=False))
    # passages longer than the context are windows of their own: <doc>#<n>
    assert {i.split("#")[0] for i in store.ids} == {r["id"] for r in world["rows"]}
    assert store.n_rows > len(world["rows"])
    traced = trace(TraceConfig(index=str(tmp_path / "store"), queries=world["queries"],
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


def test_trace_refuses_store_of_other_seed(world, tmp_path):
    build_index(IndexConfig(model=world["model"], corpus=world["corpus"],
                            out=str(tmp_path / "s"), queries=world["queries"],
                            optimizer_state=world["optimizer"],
                            encoder=_enc(hessian="train", seed=1), progress=False))
    # a store of another seed cannot be resumed into with seed 2
    with pytest.raises(FactraceError, match="seed"):
        build_index(IndexConfig(model=world["model"], corpus=world["corpus"],
                                out=str(tmp_path / "s"), queries=world["queries"],
                                optimizer_state=world["optimizer"],
                                encoder=_enc(hessian="train", seed=2), progress=False))


def test_scan_with_estimated_second_moment_records_it(world):
    res = scan(ScanConfig(model=world["model"], corpus=world["corpus"], queries=world["queries"],
                          top_k=3, encoder=_enc(second_moment="estimate", estimate_examples=20),
                          shard_rows=16, progress=False))
    note = res.metadata["fit"]["second_moment"]
    assert note.startswith("estimate (from 20 training examples")
    assert "estimate" in res.metadata["fingerprints"]["second_moment"]
    assert all(len(r.doc_ids) == 3 for r in res.rankings)
