"""A store answers any new question as a scan with it would: query-time R, tasks, growth."""

import json
import shutil

import numpy as np
import pytest
import torch

from factrace.config import variant_config
from factrace.data.corpus import iter_corpus
from factrace.errors import FactraceError
from factrace.run import index as index_module
from factrace.run.index import (
    AddConfig,
    IndexConfig,
    TaskConfig,
    add_task,
    add_to_index,
    build_index,
)
from factrace.run.scan import ScanConfig, scan
from factrace.run.tracer import TraceConfig, Tracer, trace
from factrace.store import manifest as mf
from factrace.store.encodings import EncodingStore
from factrace.store.lock import write_lock


def _enc(variant="trackstar", **kw):
    return variant_config(variant, dim=256, train_examples=40, batch_tokens=512, **kw)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _queries(world):
    return [json.loads(line) for line in open(world["queries"])]


def _build(world, out, variant="trackstar", corpus=None, queries=None):
    return build_index(IndexConfig(model=world["model"], corpus=corpus or world["corpus"],
                                   out=str(out), queries=queries,
                                   optimizer_state=world["optimizer"], encoder=_enc(variant),
                                   shard_rows=16, progress=False))


def _scan(world, queries, variant="trackstar"):
    return scan(ScanConfig(model=world["model"], corpus=world["corpus"], queries=queries,
                           optimizer_state=world["optimizer"], top_k=10, encoder=_enc(variant),
                           shard_rows=16, progress=False))


def _same(a, b, atol=1e-3):
    assert [r.doc_ids for r in a] == [r.doc_ids for r in b]
    for x, y in zip(a, b, strict=True):
        assert x.scores == pytest.approx(y.scores, abs=atol)
        assert x.opponent_scores == pytest.approx(y.opponent_scores, abs=atol)


@pytest.mark.parametrize("variant", ["trackstar", "trackstar-train"])
def test_a_store_built_without_queries_traces_as_a_scan(world, tmp_path, variant):
    _build(world, tmp_path / "s", variant)
    traced = trace(TraceConfig(index=str(tmp_path / "s"), queries=world["queries"], top_k=10,
                               progress=False))
    _same(traced.rankings, _scan(world, world["queries"], variant).rankings)


def test_a_store_built_with_other_queries_traces_new_ones_with_their_own_r(world, tmp_path):
    other = [{"id": f"o{i}", "prompt": f"Somebody {i} was born in", "target": " Paris"}
             for i in range(7)]
    _build(world, tmp_path / "s", queries=_write(tmp_path / "other.jsonl", other))
    traced = trace(TraceConfig(index=str(tmp_path / "s"), queries=world["queries"], top_k=10,
                               progress=False))
    assert traced.metadata["whitening"]["r_eval"] == "these queries"
    _same(traced.rankings, _scan(world, world["queries"]).rankings)
    # the build-time queries' own R differs: the store did not bake it in
    default = trace(TraceConfig(index=str(tmp_path / "s"), queries=world["queries"],
                                top_k=10, task="default", progress=False))
    assert default.metadata["whitening"]["r_eval"] == "task default"
    top = [[r.scores[0] for r in t.rankings] for t in (default, traced)]
    assert not np.allclose(*top, atol=1e-4)


def test_few_queries_use_the_default_task_and_say_so(world, tmp_path):
    _build(world, tmp_path / "s", queries=world["queries"])
    two = _write(tmp_path / "two.jsonl", _queries(world)[:2])
    few = trace(TraceConfig(index=str(tmp_path / "s"), queries=two, top_k=10, progress=False))
    assert few.metadata["whitening"]["r_eval"] == "task default"
    assert "fewer than" in few.metadata["whitening"]["note"]
    # the default task is all six queries: its R_eval is theirs, so the two queries rank as
    # they do among all six (the task's saved row norms against the norms computed anew)
    every = trace(TraceConfig(index=str(tmp_path / "s"), queries=world["queries"], top_k=10,
                              progress=False))
    assert every.metadata["whitening"]["r_eval"] == "these queries"
    _same(few.rankings, every.rankings[:2], atol=1e-5)


def test_few_queries_without_a_task_use_their_own_r_with_a_note(world, tmp_path):
    _build(world, tmp_path / "s")
    two = _write(tmp_path / "two.jsonl", _queries(world)[:2])
    few = trace(TraceConfig(index=str(tmp_path / "s"), queries=two, top_k=10, progress=False))
    assert few.metadata["whitening"]["r_eval"] == "these queries"
    assert "index task add" in few.metadata["whitening"]["note"]


def test_bad_task_and_queries_are_one_line_errors(world, tmp_path):
    _build(world, tmp_path / "s")
    with pytest.raises(FactraceError, match="no task 'nope'"):
        trace(TraceConfig(index=str(tmp_path / "s"), queries=world["queries"], task="nope",
                          progress=False))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(FactraceError, match="no queries|without queries|empty"):
        trace(TraceConfig(index=str(tmp_path / "s"), queries=str(empty), progress=False))
    with pytest.raises(FactraceError, match="task name"):
        add_task(TaskConfig(index=str(tmp_path / "s"), queries=world["queries"], name="../x"))


def test_index_add_appends_rows_encoded_as_the_store_encodes(world, tmp_path):
    rows = [json.loads(line) for line in open(world["corpus"])]
    first = _write(tmp_path / "a.jsonl", rows[:40])
    second = _write(tmp_path / "b.jsonl", rows[40:])
    store = _build(world, tmp_path / "s", corpus=first, queries=world["queries"])
    n_first = store.n_rows
    with pytest.raises(FactraceError, match="'d3' is already in the store"):
        add_to_index(AddConfig(index=str(tmp_path / "s"), corpus=_write(
            tmp_path / "dup.jsonl", [rows[3]] + rows[40:]), progress=False))
    assert EncodingStore.open(tmp_path / "s").n_rows == n_first  # nothing changed
    grown = add_to_index(AddConfig(index=str(tmp_path / "s"), corpus=second, progress=False))
    tracer = Tracer.open(str(tmp_path / "s"))
    ids, expected = tracer.encoder.passage_rows(iter_corpus(second))
    assert grown.ids[n_first:] == ids
    stored = np.concatenate([e for _, e in grown.iter_shards()])[n_first:].astype(np.float32)
    np.testing.assert_allclose(stored, expected.numpy(), atol=2e-3)
    # the default task's row norms now cover the new rows, as if the task were added anew
    norms_after_add = index_module.load_task(grown, "default")[2]
    add_task(TaskConfig(index=str(tmp_path / "s"), queries=world["queries"], name="default",
                        progress=False))
    np.testing.assert_allclose(norms_after_add,
                               index_module.load_task(EncodingStore.open(tmp_path / "s"),
                                                      "default")[2], rtol=1e-6)


def test_an_interrupted_addition_resumes_to_the_same_store(world, tmp_path, monkeypatch):
    rows = [json.loads(line) for line in open(world["corpus"])]
    first = _write(tmp_path / "a.jsonl", rows[:30])
    second = _write(tmp_path / "b.jsonl", rows[30:])
    n_first = _build(world, tmp_path / "full", corpus=first, queries=world["queries"]).n_rows
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    add_to_index(AddConfig(index=str(tmp_path / "full"), corpus=second, progress=False))

    real = index_module._encode_shards

    def two_shards_then_die(results, writer, corpus, ranges, progress, desc):
        real(results, writer, corpus, ranges[:2], progress, desc)
        raise KeyboardInterrupt

    monkeypatch.setattr(index_module, "_encode_shards", two_shards_then_die)
    with pytest.raises(KeyboardInterrupt):
        add_to_index(AddConfig(index=str(tmp_path / "cut"), corpus=second, progress=False))
    # readers see the store as it was before the addition, until the addition completes
    before = EncodingStore.open(tmp_path / "cut")
    assert (before.n_rows, len(before.corpora)) == (n_first, 1)
    assert (tmp_path / "cut" / mf.PENDING).is_file()
    with pytest.raises(FactraceError, match="interrupted"):
        add_to_index(AddConfig(index=str(tmp_path / "cut"), corpus=first, progress=False))
    monkeypatch.setattr(index_module, "_encode_shards", real)
    add_to_index(AddConfig(index=str(tmp_path / "cut"), corpus=second, progress=False))

    def content(root):
        skip = {mf.LOCK, mf.VERIFIED, mf.MANIFEST}
        assert not (root / mf.PENDING).exists()
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and p.name not in skip}

    assert content(tmp_path / "cut") == content(tmp_path / "full")
    assert EncodingStore.open(tmp_path / "cut").n_rows == EncodingStore.open(tmp_path / "full").n_rows


def test_a_store_being_written_refuses_a_second_writer(world, tmp_path):
    store = _build(world, tmp_path / "s")
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir() if p.is_file()}
    with write_lock(tmp_path / "s"):
        with pytest.raises(FactraceError, match="being written by process"):
            _build(world, tmp_path / "s")
        with pytest.raises(FactraceError, match="being written"):
            add_task(TaskConfig(index=str(tmp_path / "s"), queries=world["queries"], name="t",
                                progress=False))
    after = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != mf.LOCK} == \
        {k: v for k, v in before.items() if k != mf.LOCK}
    assert store.n_rows == EncodingStore.open(tmp_path / "s").n_rows


def test_a_store_is_hashed_once_until_a_shard_changes(world, tmp_path, monkeypatch):
    _build(world, tmp_path / "s")
    calls = []
    real = mf.sha256_file
    monkeypatch.setattr(mf, "sha256_file", lambda p: calls.append(p) or real(p))
    EncodingStore.open(tmp_path / "s", verify="once")
    calls.clear()
    EncodingStore.open(tmp_path / "s", verify="once")
    assert calls == []
    EncodingStore.open(tmp_path / "s", verify=True)
    assert len(calls) == 2 * EncodingStore.open(tmp_path / "s", verify=False).n_shards
    shard = tmp_path / "s" / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-2] ^= 0xFF  # same size, another modification time
    shard.write_bytes(bytes(data))
    with pytest.raises(FactraceError, match="shard-00001.*damaged"):
        EncodingStore.open(tmp_path / "s", verify="once")


@pytest.mark.parametrize("version", [1, 2])
def test_a_store_of_an_earlier_format_is_refused_with_how_to_rebuild(world, tmp_path, version):
    _build(world, tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["format_version"] = version
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FactraceError, match=f"version {version}.*index build --overwrite"):
        trace(TraceConfig(index=str(tmp_path / "s"), queries=world["queries"], progress=False))


def test_the_store_records_the_resolved_encoder(world, tmp_path):
    store = _build(world, tmp_path / "s")
    encoder = store.config["encoder"]
    assert encoder["dim"] == 256 and encoder["dtype"] == "float32"
    state = torch.load(tmp_path / "s" / store.manifest["state"]["file"], weights_only=True)
    assert state["provenance"]["dim"] == 256 and state["provenance"]["factrace"]


def test_trace_scores_are_the_explicit_whitened_cosines(world, tmp_path):
    """Against the slow way: R = λ R_eval + (1 − λ) R_train, eigh, R^{-1/2} on both sides."""
    from factrace.data.io import read_queries
    from factrace.encode.encoder import Encoder, unit_normalize
    from factrace.run.fit import sample_passages

    _build(world, tmp_path / "s")
    traced = trace(TraceConfig(index=str(tmp_path / "s"), queries=world["queries"], top_k=10,
                               progress=False))
    enc = Encoder.load(world["model"], world["optimizer"], _enc())
    passages = list(iter_corpus(world["corpus"]))
    # the R_train sample of a scan: the V-estimate sample's first train_examples passages
    sample = sample_passages(world["corpus"], len(passages), max(40, enc.config.estimate_examples))
    enc.fit_hessian(sample[:40], read_queries(world["queries"]))
    ids, psi = enc.encode_passages(passages)
    _, q = enc.encode_queries(read_queries(world["queries"]))
    scores = unit_normalize(q) @ psi.T
    for i, ranking in enumerate(traced.rankings):
        expected = {ids[j]: float(scores[i, j]) for j in range(len(ids))}
        assert ranking.scores == pytest.approx([expected[d] for d in ranking.doc_ids], abs=1e-3)
        best = sorted(expected.values(), reverse=True)[:10]
        assert ranking.scores == pytest.approx(best, abs=1e-3)


def test_a_small_corpus_reuses_the_r_train_pass_and_ranks_the_same(world, tmp_path,
                                                                    monkeypatch):
    """At most --train-examples passages: the corpus pass reuses R_train's encodings."""
    from factrace.run import fit as fit_module

    def run(out):
        cfg = dict(model=world["model"], corpus=world["corpus"],
                   optimizer_state=world["optimizer"], shard_rows=16, progress=False,
                   encoder=variant_config("trackstar", dim=256, train_examples=100,
                                          batch_tokens=512))
        res = scan(ScanConfig(queries=world["queries"], top_k=10, **cfg))
        build_index(IndexConfig(out=str(out), **cfg))
        return res, EncodingStore.open(out)

    reused, reused_store = run(tmp_path / "a")
    assert reused.metadata["fit"]["corpus_pass"] == "reused the R_train pass's encodings"
    monkeypatch.setattr(fit_module, "KEEP_BYTES", 0)
    encoded, encoded_store = run(tmp_path / "b")
    assert "corpus_pass" not in encoded.metadata["fit"]
    _same(reused.rankings, encoded.rankings, atol=1e-5)
    assert reused_store.ids == encoded_store.ids
    for (_, a), (_, b) in zip(reused_store.iter_shards(), encoded_store.iter_shards(),
                              strict=True):
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3)
