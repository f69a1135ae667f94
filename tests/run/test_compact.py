"""Compact stores (``index build --compact``): codes instead of rows, exact answers by
re-encoding each question's candidates."""

import json
import shutil

import numpy as np
import pytest

from factrace.config import variant_config
from factrace.data.io import read_queries
from factrace.errors import FactraceError
from factrace.run import index as index_module
from factrace.run.index import (
    AddConfig,
    ApproxConfig,
    IndexConfig,
    add_to_index,
    build_approx,
    build_index,
)
from factrace.run.tracer import COMPACT_CANDIDATES, Tracer
from factrace.search import approx as approx_module
from factrace.search import twostage
from factrace.store import manifest as mf
from factrace.store.encodings import EncodingStore

# SQ4 (4 bits a coordinate) trains on any number of rows; the test world has 64
SPEC = "SQ4"


def _config(world, corpus, out, **kw):
    return IndexConfig(model=world["model"], corpus=corpus, out=str(out),
                       queries=world["queries"], optimizer_state=world["optimizer"],
                       encoder=variant_config("trackstar", dim=256, train_examples=40,
                                              batch_tokens=512),
                       shard_rows=16, progress=False, **kw)


@pytest.fixture(scope="module")
def compact(world, tmp_path_factory):
    """The shared store's corpus and settings, built compact."""
    out = tmp_path_factory.mktemp("compact") / "store"
    build_index(_config(world, world["corpus"], out, compact=True, compact_spec=SPEC))
    return out


def _queries(world):
    return read_queries(world["queries"])


def _assert_same(exact, two, tol=1e-4):
    assert [r.doc_ids for r in two] == [r.doc_ids for r in exact]
    assert [r.opponent_ids for r in two] == [r.opponent_ids for r in exact]
    for a, b in zip(exact, two, strict=True):
        assert b.scores == pytest.approx(a.scores, abs=tol)
        assert b.opponent_scores == pytest.approx(a.opponent_scores, abs=tol)


def test_a_compact_store_keeps_codes_not_rows(store, compact):
    files = {p.name for p in compact.iterdir()}
    assert not any(f.startswith("shard-") and f.endswith(".npy") and ".codes." not in f
                   for f in files)
    assert sum(f.endswith(".codes.npy") for f in files) == 4
    manifest = mf.read_manifest(compact)
    assert manifest["compact"]["spec"] == SPEC and "codec.faiss" in files
    full = EncodingStore.open(store.out)
    opened = EncodingStore.open(compact)
    assert opened.compact and not full.compact
    assert opened.ids == full.ids and opened.n_rows == full.n_rows
    code_bytes = sum((compact / e["codes"]).stat().st_size for e in manifest["shards"])
    row_bytes = full.n_rows * full.dim * 2
    assert code_bytes < row_bytes / 3  # 4-bit codes: d/2 bytes a row, and npy headers
    with pytest.raises(FactraceError, match="compact: it keeps codes, not rows"):
        opened.shard_encodings(0)


def test_re_encoded_rows_are_the_stored_rows(store, compact):
    full, small = Tracer.open(store.out), Tracer.open(str(compact))
    positions = np.arange(full.store.n_rows)[::-1]  # any order, windows included
    assert (small.rows(positions) - full.rows(positions)).abs().max() <= 1e-3


@pytest.mark.parametrize("task", [None, "default"])
def test_every_row_a_candidate_answers_as_the_full_store(world, store, compact, task):
    queries = _queries(world)
    exact, _ = Tracer.open(store.out).trace(queries, 10, task=task)
    tracer = Tracer.open(str(compact))
    two, meta = tracer.trace(queries, 10, task=task, candidates=tracer.store.n_rows)
    _assert_same(exact, two)
    assert meta["search"] == "two-stage"
    assert meta["two_stage"]["rows_from"] == "re-encoded passages"


def test_without_candidates_a_compact_store_searches_in_two_stages(world, store, compact):
    queries = _queries(world)
    exact, _ = Tracer.open(store.out).trace(queries, 10)
    two, meta = Tracer.open(str(compact)).trace(queries, 10)
    assert meta["two_stage"]["candidates"] == COMPACT_CANDIDATES
    _assert_same(exact, two)  # the default candidates: every row of this store


def test_a_wrong_first_stage_is_caught(world, store, compact, monkeypatch):
    queries = _queries(world)
    exact, _ = Tracer.open(store.out).trace(queries, 10)
    real = twostage.first_stage_queries
    monkeypatch.setattr(twostage, "first_stage_queries",
                        lambda scorer: np.roll(real(scorer), 1, axis=0))
    two, _ = Tracer.open(str(compact)).trace(queries, 10, candidates=20)
    assert np.mean([a.doc_ids == b.doc_ids for a, b in zip(exact, two, strict=True)]) < 5 / 6


def test_only_the_candidates_are_re_encoded(world, compact, monkeypatch):
    tracer = Tracer.open(str(compact))
    encoded = []
    real = tracer.encoder.passage_rows

    def counting(passages):
        ids, rows = real(passages)
        encoded.extend(ids)
        return ids, rows

    monkeypatch.setattr(tracer.encoder, "passage_rows", counting)
    _, meta = tracer.trace(_queries(world)[:1], 5, task="default", candidates=5)
    assert 0 < meta["two_stage"]["rows_read"] <= 10
    # whole passages are encoded for their windows: at most one passage per candidate row
    assert len(encoded) < tracer.store.n_rows


def test_explain_and_ask_on_a_compact_store(world, store, compact):
    full, small = Tracer.open(store.out), Tracer.open(str(compact))
    query = _queries(world)[0]
    exact, _ = full.trace([query], 3, task="default")
    doc = exact[0].doc_ids[0]
    a, b = full.explain(query, doc), small.explain(query, doc)
    assert b["score"] == pytest.approx(a["score"], abs=1e-4)
    assert b["score"] == pytest.approx(exact[0].scores[0], abs=1e-4)
    answer = small.ask("Alba was born in", max_new_tokens=4, top_k=3)
    expected = full.ask("Alba was born in", max_new_tokens=4, top_k=3)
    assert answer.ranking.doc_ids == expected.ranking.doc_ids
    assert answer.metadata["search"] == "two-stage"


def test_a_task_added_to_a_compact_store_keeps_no_row_norms(world, store, compact, tmp_path):
    path = _copy(compact, tmp_path)
    from factrace.run.index import TaskConfig, add_task

    entry = add_task(TaskConfig(index=str(path), queries=world["queries"], name="again",
                                progress=False))
    assert "norms" not in entry
    queries = _queries(world)[:1]
    exact, _ = Tracer.open(store.out).trace(queries, 10, task="default")
    two, _ = Tracer.open(str(path)).trace(queries, 10, task="again")
    _assert_same(exact, two)


def _copy(path, tmp_path):
    return shutil.copytree(path, tmp_path / "store",
                           ignore=shutil.ignore_patterns(mf.LOCK))


def test_what_a_compact_store_cannot_do_is_refused(world, compact, tmp_path):
    tracer = Tracer.open(str(compact))
    with pytest.raises(FactraceError, match="compact store.*--faiss"):
        tracer.trace(_queries(world), 10, faiss="Flat")
    with pytest.raises(FactraceError, match="compact store"):
        tracer.trace(_queries(world), 10, report_recall=True)
    with pytest.raises(FactraceError, match="its codes are its approximate index"):
        build_approx(ApproxConfig(index=str(_copy(compact, tmp_path))))


def test_damaged_codes_are_refused(world, compact, tmp_path):
    path = _copy(compact, tmp_path)
    manifest = mf.read_manifest(path)
    shard = path / manifest["shards"][1]["codes"]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(FactraceError, match="shard-00001.*damaged"):
        Tracer.open(str(path))
    shard.write_bytes(bytes(data[:-1]))  # and the codec
    path2 = _copy(compact, tmp_path / "b")
    codec = path2 / manifest["compact"]["file"]
    codec.write_bytes(codec.read_bytes()[:-8])
    with pytest.raises(FactraceError, match="codec.faiss is missing or damaged"):
        Tracer.open(str(path2)).trace(_queries(world), 10)


# growing and resuming ------------------------------------------------------------------------
def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_index_add_codes_the_new_rows_with_the_same_codec(world, tmp_path, monkeypatch):
    rows = [json.loads(line) for line in open(world["corpus"])]
    first, second = _write(tmp_path / "a.jsonl", rows[:40]), _write(tmp_path / "b.jsonl",
                                                                     rows[40:])
    for name, kw in (("full", {}), ("small", {"compact": True, "compact_spec": SPEC})):
        build_index(_config(world, first, tmp_path / name, **kw))
    codec = mf.read_manifest(tmp_path / "small")["compact"]

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(approx_module.Codec, "train", no_training)
    for name in ("full", "small"):
        add_to_index(AddConfig(index=str(tmp_path / name), corpus=second, progress=False))
    assert mf.read_manifest(tmp_path / "small")["compact"] == codec
    full, small = Tracer.open(str(tmp_path / "full")), Tracer.open(str(tmp_path / "small"))
    assert small.store.ids == full.store.ids and small.store.n_rows > 40
    queries = _queries(world)
    exact, _ = full.trace(queries, 10)
    _assert_same(exact, small.trace(queries, 10, candidates=small.store.n_rows)[0])


def test_an_interrupted_compact_build_resumes_to_the_same_bytes(world, tmp_path,
                                                                 monkeypatch):
    clean = tmp_path / "clean"
    build_index(_config(world, world["corpus"], clean, compact=True, compact_spec=SPEC))
    real = index_module.StoreWriter.write_code_shard
    written = []

    def die_after_two(self, index, ids, codes, inputs=None):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(index)
        return real(self, index, ids, codes, inputs)

    monkeypatch.setattr(index_module.StoreWriter, "write_code_shard", die_after_two)
    path = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        build_index(_config(world, world["corpus"], path, compact=True, compact_spec=SPEC))
    assert len(mf.read_manifest(path)["shards"]) == 2
    monkeypatch.setattr(index_module.StoreWriter, "write_code_shard", real)
    build_index(_config(world, world["corpus"], path, compact=True, compact_spec=SPEC))
    a, b = mf.read_manifest(clean), mf.read_manifest(path)
    assert [e["sha256"] for e in a["shards"]] == [e["sha256"] for e in b["shards"]]
    assert a["compact"]["sha256"] == b["compact"]["sha256"]
    with pytest.raises(FactraceError, match="keeps codes.*--overwrite"):
        build_index(_config(world, world["corpus"], path))


def test_a_compact_codec_waits_for_its_training_rows(world, tmp_path):
    # 20 training rows: the codec is trained on the first two shards (16 passages each, and
    # their windows), not on the first alone
    path = tmp_path / "s"
    build_index(_config(world, world["corpus"], path, compact=True, compact_spec=SPEC,
                        compact_train_rows=20))
    manifest = mf.read_manifest(path)
    rows = [e["rows"] for e in manifest["shards"]]
    assert rows[0] < 20 <= rows[0] + rows[1] == manifest["compact"]["trained_rows"]


# the command line ----------------------------------------------------------------------------
def test_cli_compact_build_and_trace_at_the_defaults(world, tmp_path, capsys):
    from factrace.cli import main

    path, out = tmp_path / "s", tmp_path / "r.jsonl"
    assert main(["index", "build", "--model", world["model"], "--corpus", world["corpus"],
                 "--optimizer-state", world["optimizer"], "--out", str(path), "--compact",
                 "-q"]) == 0
    manifest = mf.read_manifest(path)
    # the default codes (PQ<d/2>x4fs) need 624 training rows: 64 rows get SQ4, said so
    assert manifest["compact"]["requested"] == approx_module.default_spec(manifest["dim"])
    assert manifest["compact"]["spec"] == "SQ4" and "SQ4" in manifest["compact"]["notes"][0]
    assert main(["trace", "--index", str(path), "--queries", world["queries"], "--out",
                 str(out)]) == 0
    err = capsys.readouterr().err
    assert f"exact scores of {COMPACT_CANDIDATES} candidates" in err
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert meta["search"] == "two-stage"
    assert main(["index", "approx", "--index", str(path)]) == 2
    assert "compact store" in capsys.readouterr().err
    assert main(["index", "verify", "--index", str(path)]) == 0


def test_serve_asks_and_shows_passages_of_a_compact_store(world, store, compact, tmp_path):
    from starlette.testclient import TestClient

    from factrace.cli import main
    from factrace.serve import ServeConfig, load_explorer
    from factrace.serve.app import create_app

    ranked = tmp_path / "r.jsonl"
    assert main(["trace", "--index", str(compact), "--queries", world["queries"], "--out",
                 str(ranked), "-q"]) == 0
    explorer = load_explorer(ServeConfig(index=str(compact), rankings=[str(ranked)]))
    client = TestClient(create_app(explorer), base_url="http://127.0.0.1")
    answer = client.post("/api/ask", json={"prompt": "Alba was born in", "max_new_tokens": 4,
                                           "top_k": 3})
    assert answer.status_code == 200
    # the explorer traces the whole completion unless a span is chosen
    expected = Tracer.open(store.out).ask("Alba was born in", max_new_tokens=4, top_k=3,
                                          span="whole")
    assert [p["id"] for p in answer.json()["proponents"]] == expected.ranking.doc_ids
    doc = expected.ranking.doc_ids[0]
    shown = client.get(f"/api/passages/{doc}")
    assert shown.status_code == 200 and shown.json()["text"]
