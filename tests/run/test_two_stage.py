"""Two-stage trace: candidates from the store's saved FAISS index, exact scores for them."""

import json
import shutil

import numpy as np
import pytest

from factrace.config import variant_config
from factrace.data.io import read_queries
from factrace.errors import FactraceError
from factrace.run.index import (
    AddConfig,
    ApproxConfig,
    IndexConfig,
    add_to_index,
    build_approx,
    build_index,
)
from factrace.run.tracer import Tracer
from factrace.search import approx as approx_module
from factrace.search import twostage
from factrace.search.approx import ApproxIndex
from factrace.store import manifest as mf
from factrace.store.encodings import EncodingStore

# Rows read per two-stage question: at most this many candidates per query and side.
FEW = 20


def _queries(world):
    return read_queries(world["queries"])


def _assert_same(exact, two):
    assert [r.doc_ids for r in two] == [r.doc_ids for r in exact]
    assert [r.opponent_ids for r in two] == [r.opponent_ids for r in exact]
    for a, b in zip(exact, two, strict=True):
        assert b.scores == pytest.approx(a.scores, abs=1e-5)
        assert b.opponent_scores == pytest.approx(a.opponent_scores, abs=1e-5)


def _share_equal(exact, two) -> float:
    """Share of queries whose top-10 ids (in order) are exact search's."""
    return np.mean([a.doc_ids == b.doc_ids for a, b in zip(exact, two, strict=True)])


@pytest.fixture
def approx_store(store_copy):
    build_approx(ApproxConfig(index=str(store_copy)))
    return store_copy


@pytest.mark.parametrize("task", [None, "default"])
def test_every_row_a_candidate_answers_as_exact_trace(world, approx_store, task):
    tracer = Tracer.open(str(approx_store))
    queries = _queries(world)
    exact, _ = tracer.trace(queries, 10, task=task)
    two, meta = tracer.trace(queries, 10, task=task, candidates=tracer.store.n_rows)
    _assert_same(exact, two)
    assert meta["search"] == "two-stage"
    assert meta["two_stage"]["candidates"] == tracer.store.n_rows
    assert meta["two_stage"]["spec"] == tracer.approx().spec


@pytest.mark.parametrize("task", [None, "default"])
def test_a_few_dozen_candidates_find_the_exact_top_10(world, approx_store, task):
    # measured on this store (64 rows, 6 queries, SQ4 first stage): 6 of 6 at C = 20, 4 of 6 at
    # C = 10 (with either task)
    tracer = Tracer.open(str(approx_store))
    queries = _queries(world)
    exact, _ = tracer.trace(queries, 10, task=task)
    two, meta = tracer.trace(queries, 10, task=task, candidates=FEW, report_recall=True)
    assert _share_equal(exact, two) >= 5 / 6
    assert meta["recall_at_10"] >= 0.95
    for a, b in zip(exact, two, strict=True):  # whatever was found has its exact score
        found = dict(zip(a.doc_ids, a.scores, strict=True))
        for d, s in zip(b.doc_ids, b.scores, strict=True):
            if d in found:
                assert s == pytest.approx(found[d], abs=1e-5)


def test_a_wrong_first_stage_is_caught(world, approx_store, monkeypatch):
    tracer = Tracer.open(str(approx_store))
    queries = _queries(world)
    exact, _ = tracer.trace(queries, 10)
    real = twostage.first_stage_queries

    def wrong_query(scorer):  # another query's vector: candidates for the wrong question
        return np.roll(real(scorer), 1, axis=0)

    monkeypatch.setattr(twostage, "first_stage_queries", wrong_query)
    two, _ = tracer.trace(queries, 10, candidates=FEW)
    assert _share_equal(exact, two) < 5 / 6  # the check above would fail


def test_a_row_on_the_wrong_side_of_the_first_stage_is_still_found(world, approx_store,
                                                                    monkeypatch):
    tracer = Tracer.open(str(approx_store))
    queries = _queries(world)
    right, _ = tracer.trace(queries, 10, candidates=FEW)
    real = twostage.candidates

    def swapped(*args, **kwargs):  # each query's best candidates given as its worst
        top, bottom = real(*args, **kwargs)
        return bottom, top

    monkeypatch.setattr(twostage, "candidates", swapped)
    wrong, _ = tracer.trace(queries, 10, candidates=FEW)
    _assert_same(right, wrong)


def test_no_pass_over_every_row(world, approx_store, monkeypatch):
    tracer = Tracer.open(str(approx_store))
    query = _queries(world)[:1]
    exact, _ = tracer.trace(query, 10, task="default")
    read = []
    real_rows = EncodingStore.rows

    def counting(self, positions):
        read.extend(np.asarray(positions).tolist())
        return real_rows(self, positions)

    def no_full_pass(self):
        raise AssertionError("a two-stage trace read every row")

    monkeypatch.setattr(EncodingStore, "rows", counting)
    monkeypatch.setattr(EncodingStore, "iter_shards", no_full_pass)
    two, meta = tracer.trace(query, 10, task="default", candidates=10)
    assert len(read) == len(set(read)) == meta["two_stage"]["rows_read"] <= 2 * 10
    assert len(read) < tracer.store.n_rows
    assert two[0].doc_ids[:5] == exact[0].doc_ids[:5]


def test_the_index_is_trained_once(world, approx_store, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(ApproxIndex, "build", no_training)
    monkeypatch.setattr(approx_module.faiss.Index, "train", no_training)
    queries = _queries(world)
    first = Tracer.open(str(approx_store)).trace(queries, 10, candidates=FEW)[0]
    second = Tracer.open(str(approx_store)).trace(queries, 10, candidates=FEW)[0]
    assert [r.doc_ids for r in first] == [r.doc_ids for r in second]


def test_without_a_saved_index_candidates_say_how_to_build_it(world, store_copy):
    tracer = Tracer.open(str(store_copy))
    with pytest.raises(FactraceError, match="factrace index approx --index"):
        tracer.trace(_queries(world), 10, candidates=FEW)


def test_a_damaged_or_short_index_is_refused(world, approx_store):
    entry = mf.read_manifest(approx_store)["approx"]
    file = approx_store / entry["file"]
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(FactraceError, match="damaged.*checksum.*factrace index approx"):
        Tracer.open(str(approx_store)).trace(_queries(world), 10, candidates=FEW)
    build_approx(ApproxConfig(index=str(approx_store)))
    manifest = mf.read_manifest(approx_store)
    manifest["approx"]["rows"] -= 1
    mf.write_manifest(approx_store, manifest)
    with pytest.raises(FactraceError, match="covers 63 of its 64 rows; rebuild it with"):
        Tracer.open(str(approx_store)).trace(_queries(world), 10, candidates=FEW)


# growing the store ---------------------------------------------------------------------------
def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _built_in_two(world, tmp_path):
    """A store of the first 40 corpus rows with a saved index, and the other rows' corpus."""
    rows = [json.loads(line) for line in open(world["corpus"])]
    enc = variant_config("trackstar", dim=256, train_examples=40, batch_tokens=512)
    build_index(IndexConfig(model=world["model"], corpus=_write(tmp_path / "a.jsonl", rows[:40]),
                            out=str(tmp_path / "s"), queries=world["queries"],
                            optimizer_state=world["optimizer"], encoder=enc, shard_rows=16,
                            progress=False))
    build_approx(ApproxConfig(index=str(tmp_path / "s"), spec="SQ4"))
    return tmp_path / "s", _write(tmp_path / "b.jsonl", rows[40:])


def test_index_add_extends_the_saved_index_without_training(world, tmp_path, monkeypatch):
    path, second = _built_in_two(world, tmp_path)
    before = mf.read_manifest(path)["approx"]
    old_file = path / before["file"]

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(ApproxIndex, "build", no_training)
    monkeypatch.setattr(approx_module.faiss.Index, "train", no_training)
    grown = add_to_index(AddConfig(index=str(path), corpus=second, progress=False))
    after = mf.read_manifest(path)["approx"]
    assert after["rows"] == grown.n_rows > before["rows"]
    assert (after["spec"], after["trained_rows"]) == (before["spec"], before["trained_rows"])
    assert not old_file.exists() and sorted(p.name for p in path.glob("approx-*")) == \
        [after["file"]]
    tracer = Tracer.open(str(path))
    queries = _queries(world)
    exact, _ = tracer.trace(queries, 10)
    _assert_same(exact, tracer.trace(queries, 10, candidates=grown.n_rows)[0])


def test_an_interrupted_extension_resumes_to_cover_exactly_the_store(world, tmp_path,
                                                                    monkeypatch):
    path, second = _built_in_two(world, tmp_path)
    shutil.copytree(path, tmp_path / "clean")
    add_to_index(AddConfig(index=str(tmp_path / "clean"), corpus=second, progress=False))
    real = approx_module._write

    def die_before_recording(store, index, entry, record):
        def killed(key, value):
            raise KeyboardInterrupt

        return real(store, index, entry, killed)

    monkeypatch.setattr(approx_module, "_write", die_before_recording)
    with pytest.raises(KeyboardInterrupt):
        add_to_index(AddConfig(index=str(path), corpus=second, progress=False))
    monkeypatch.setattr(approx_module, "_write", real)
    grown = add_to_index(AddConfig(index=str(path), corpus=second, progress=False))
    entry = mf.read_manifest(path)["approx"]
    assert entry["rows"] == grown.n_rows
    assert [p.name for p in path.glob("approx-*")] == [entry["file"]]
    clean = mf.read_manifest(tmp_path / "clean")["approx"]
    assert entry["sha256"] == clean["sha256"]  # the same codes as an uninterrupted addition
    assert ApproxIndex.load(grown).index.ntotal == grown.n_rows


# the command line ----------------------------------------------------------------------------
def test_cli_index_approx_and_trace_candidates(world, store_copy, tmp_path, capsys):
    from factrace.cli import main

    out = tmp_path / "r.jsonl"
    argv = ["trace", "--index", str(store_copy), "--queries", world["queries"], "--out",
            str(out), "--candidates", "30", "-q"]
    assert main(argv) == 2
    assert "factrace index approx --index" in capsys.readouterr().err
    assert main(["index", "approx", "--index", str(store_copy)]) == 0
    assert "FAISS SQ4 over 64 rows" in capsys.readouterr().err  # too few rows for PQ
    assert main(argv) == 0
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert meta["search"] == "two-stage" and meta["two_stage"]["candidates"] == 30


def test_equal_scores_come_in_row_order(tmp_path):
    import torch

    from factrace.encode.whitening import TaskWhitening, _Block
    from factrace.store.encodings import StoreWriter

    n = 600
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((n, 8)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    equal = [3, 120, 250, 333, 599]
    rows[equal] = rows[3]  # equal rows: equal scores, in any order from torch.topk
    ids = [f"r{i}" for i in range(n)]
    writer = StoreWriter.create_or_resume(tmp_path / "s", {"model": "x"}, 8)
    writer.write_shard(0, ids, rows)
    writer.finish()
    store = EncodingStore.open(tmp_path / "s")
    scorer = TaskWhitening("none", 8, [_Block(0, 8, torch.ones(8))]).scorer(
        torch.from_numpy(np.stack([rows[3], -rows[3]])))
    candidates = np.stack([rng.permutation(n), rng.permutation(n)])
    found, _ = twostage.rerank(scorer, store, ids, candidates, candidates[:, ::-1].copy(), 10)
    expected = [f"r{i}" for i in equal]
    assert found[0][0][:5] == expected and found[1][2][:5] == expected  # best, and opponents
