"""Faults while writing a store: readers during an addition, a full disk, a kill at every write."""

import dataclasses
import errno
import hashlib
import json
import time

import numpy as np
import pytest

from factrace.cli import main
from factrace.data.io import read_queries
from factrace.errors import FactraceError
from factrace.run.index import AddConfig, ApproxConfig, add_to_index, build_approx, build_index
from factrace.run.tracer import Tracer
from factrace.store import manifest as mf
from factrace.store.encodings import EncodingStore, StoreWriter


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _extra(tmp_path):
    return _jsonl(tmp_path / "extra.jsonl", [
        {"id": f"x{i}", "text": f"Ivo number {i} was born in Tesk and moved to Brant."}
        for i in range(20)])


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _content(out):
    """What must equal a clean build: every shard's name and files' checksums (the manifest's
    list, checked against the files), the encoder state, the location tables, the tasks."""
    manifest = mf.read_manifest(out)
    assert manifest["complete"] and not (out / mf.PENDING).exists()
    for entry in manifest["shards"]:
        for kind in ("encodings", "ids"):
            assert _sha(out / entry[kind]) == entry["sha256"][kind]
    assert not [p for p in out.iterdir() if mf.is_tmp(p)]
    on_disk = sorted(p.name for p in out.glob("shard-*"))
    assert on_disk == sorted(e[k] for e in manifest["shards"] for k in ("encodings", "ids"))
    return {"shards": manifest["shards"], "state": _sha(out / manifest["state"]["file"]),
            "locations": [_sha(out / e["file"]) for e in manifest["locations"]],
            "tasks": {name: (e["sha256"], e.get("norms_sha256"))
                      for name, e in manifest.get("tasks", {}).items()}}


class _Fault:
    """Counts the store's atomic writes (``manifest.write_atomic``) and makes the ``at``-th
    fail with ``error`` (a full disk: raised while writing, through the real writer)."""

    def __init__(self, monkeypatch, at=None, error=None):
        self.calls, self.at, self.error, self.paths = 0, at, error, []
        real = mf.write_atomic

        def write_atomic(path, write):
            self.calls += 1
            self.paths.append(path)
            if self.calls == self.at:
                def fail(f):
                    f.write(b"partial")
                    raise self.error
                return real(path, fail)
            return real(path, write)

        monkeypatch.setattr(mf, "write_atomic", write_atomic)


# readers during an addition -----------------------------------------------------------------
def test_readers_see_the_store_as_it_was_until_an_addition_commits(world, store_copy, tmp_path,
                                                                    monkeypatch):
    out = store_copy
    build_approx(ApproxConfig(index=str(out), spec="SQ4"))
    before = mf.read_manifest(out)
    committed = {p.name: _sha(p) for p in out.rglob("*") if p.is_file() and p.name not in
                 (mf.LOCK, mf.VERIFIED, mf.MANIFEST)}
    queries = read_queries(world["queries"])
    early = Tracer.open(str(out))  # opened before the addition: its snapshot
    expected, _ = early.trace(queries, 5, task="default")
    seen = []

    def read(when):
        # mid-addition: the store opens as it was (verified), a new reader answers as before
        store = EncodingStore.open(out)
        assert store.manifest == before and store.n_rows == EncodingStore(out, before).n_rows
        reader = Tracer.open(str(out))
        got, _ = reader.trace(queries, 5, task="default")
        approx, _ = reader.trace(queries, 5, task="default", candidates=store.n_rows)
        assert [r.doc_ids for r in got] == [r.doc_ids for r in approx] == \
            [r.doc_ids for r in expected]
        seen.append(when)

    real_shard, real_commit = StoreWriter.write_shard, mf.commit

    def write_then_read(self, *args, **kwargs):
        real_shard(self, *args, **kwargs)  # the addition's shard is on disk
        read(self.done_shards)

    def read_then_commit(directory, manifest):
        read("commit")  # every file of the addition written: the task's norms, the index
        real_commit(directory, manifest)

    monkeypatch.setattr(StoreWriter, "write_shard", write_then_read)
    monkeypatch.setattr(mf, "commit", read_then_commit)
    grown = add_to_index(AddConfig(index=str(out), corpus=_extra(tmp_path), progress=False))
    assert seen == [len(before["shards"]) + 1, len(before["shards"]) + 2, "commit"]
    assert grown.n_rows == EncodingStore(out, before).n_rows + 20 and grown.is_passage("x3")
    # the files the old snapshot names were never rewritten in place: a replaced one (the
    # approximate index, the task's row norms) is gone after the commit, the rest unchanged
    replaced = {before["approx"]["file"], before["tasks"]["default"]["norms"].split("/")[-1]}
    for name, sha in committed.items():
        if name not in replaced:
            assert _sha(next(out.rglob(name))) == sha, name
    # the tracer opened before keeps reading its snapshot (its rows, its task, loaded already)
    again, _ = early.trace(queries, 5, task="default")
    assert [r.doc_ids for r in again] == [r.doc_ids for r in expected]
    assert Tracer.open(str(out)).store.n_rows == grown.n_rows


def test_an_interrupted_addition_blocks_other_writers_and_resumes(world, store_copy, tmp_path,
                                                                   monkeypatch):
    out = store_copy
    n_before = EncodingStore.open(out).n_rows
    fault = _Fault(monkeypatch, at=4, error=KeyboardInterrupt())
    extra = _extra(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        add_to_index(AddConfig(index=str(out), corpus=extra, progress=False))
    assert "shard-00004" in fault.paths[-2].name  # killed after the addition's first shard
    assert EncodingStore.open(out).n_rows == n_before and (out / "shard-00004.npy").exists()
    with pytest.raises(FactraceError, match="addition of .*extra.jsonl was interrupted"):
        build_approx(ApproxConfig(index=str(out), spec="SQ4"))
    fault.at = None
    assert add_to_index(AddConfig(index=str(out), corpus=extra, progress=False)).n_rows == \
        n_before + 20
    assert not (out / mf.PENDING).exists()


# a full disk -------------------------------------------------------------------------------
def _cli_build(world, out):
    return ["index", "build", "--model", world["model"], "--optimizer-state", world["optimizer"],
            "--corpus", world["corpus"], "--queries", world["queries"], "--out", str(out),
            "--dim", "256", "--train-examples", "40", "--batch-tokens", "512",
            "--shard-rows", "16", "-q"]


def test_a_full_disk_is_one_line_and_the_same_command_resumes(world, store, tmp_path,
                                                               monkeypatch, capsys):
    out = tmp_path / "store"
    full = OSError(errno.ENOSPC, "No space left on device")
    for at in (3, 9):  # the state's record; shard 2's rows
        fault = _Fault(monkeypatch, at=at, error=full)
        assert main(_cli_build(world, out)) == 2
        err = capsys.readouterr().err
        assert err == (f"factrace: error: no space left on device writing "
                       f"{fault.paths[at - 1]}; free space and rerun the same command to "
                       "resume\n"), err
        assert not [p for p in out.iterdir() if mf.is_tmp(p)]
    fault.at = None
    assert main(_cli_build(world, out)) == 0
    assert _content(out) == _content_of(store)
    # the same during `index add`: readers keep the store, the rerun finishes the addition
    add = ["index", "add", "--index", str(out), "--corpus", _extra(tmp_path), "-q"]
    fault.calls, fault.at = 0, 4
    assert main(add) == 2
    assert "no space left on device writing" in capsys.readouterr().err
    assert EncodingStore.open(out).n_rows == EncodingStore.open(store.out).n_rows
    fault.at = None
    assert main(add) == 0
    assert EncodingStore.open(out).n_rows == EncodingStore.open(store.out).n_rows + 20


def _content_of(cfg):
    from pathlib import Path

    return _content(Path(cfg.out))


# a kill at every write -----------------------------------------------------------------------
@pytest.mark.slow
def test_a_build_killed_at_any_write_resumes_to_the_same_store(world, store, tmp_path,
                                                                monkeypatch):
    clean = _content_of(store)
    counter = _Fault(monkeypatch)
    build_index(dataclasses.replace(store, out=str(tmp_path / "count")))
    n = counter.calls
    assert n >= 15, counter.paths
    started = time.time()
    for at in range(1, n + 1):
        out = tmp_path / f"k{at}"
        cfg = dataclasses.replace(store, out=str(out))
        fault = _Fault(monkeypatch, at=at, error=KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            build_index(cfg)
        fault.at = None
        build_index(cfg)
        assert _content(out) == clean, (at, fault.paths[at - 1])
        np.testing.assert_array_equal(EncodingStore.open(out).ids, EncodingStore.open(
            store.out).ids)
    print(f"{n} write points in {time.time() - started:.1f} s")


def test_a_replaced_task_appears_at_once_and_leaves_the_old_one_until_then(world, store_copy,
                                                                          monkeypatch):
    from factrace.run.index import TaskConfig, add_task
    from factrace.store import tasks

    out = store_copy
    old = EncodingStore.open(out)
    old_entry = old.manifest["tasks"]["default"]
    real = EncodingStore.record_all
    checked = []

    def check_then_record(self, values):
        # the new task's files are written: the store as it was still reads its own
        assert tasks.load(EncodingStore.open(out), "default")[0] == \
            tasks.load(old, "default")[0]
        checked.append(sorted(values))
        real(self, values)

    monkeypatch.setattr(EncodingStore, "record_all", check_then_record)
    fewer = out.parent / "fewer.jsonl"  # other queries: other task files
    fewer.write_text("".join(open(world["queries"]).readlines()[:-1]))
    add_task(TaskConfig(index=str(out), queries=str(fewer), name="default", progress=False))
    assert checked == [["tasks"]]  # one manifest write
    new_entry = mf.read_manifest(out)["tasks"]["default"]
    assert new_entry["file"] != old_entry["file"] and new_entry["norms"] != old_entry["norms"]
    assert not (out / old_entry["file"]).exists() and not (out / old_entry["norms"]).exists()
    tasks.load(EncodingStore.open(out), "default")
