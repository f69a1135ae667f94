"""A build killed with SIGKILL midway and restarted equals an uninterrupted build."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from factrace.errors import FactraceError
from factrace.store import manifest as mf
from factrace.store.encodings import EncodingStore


def _argv(world, out, shard_rows=4):
    return [sys.executable, "-m", "factrace.cli", "index", "build", "--model", world["model"],
            "--optimizer-state", world["optimizer"], "--corpus", world["corpus"],
            "--queries", world["queries"], "--out", str(out), "--dim", "256",
            "--train-examples", "32", "--shard-rows", str(shard_rows), "-q"]


def _done(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["shards"])
    except (OSError, ValueError):
        return 0


def _files(out: Path) -> dict[str, bytes]:
    """The store's content (tasks included), not its bookkeeping (lock, verification record,
    the fit's wall times)."""
    skip = {mf.LOCK, mf.VERIFIED}
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
             if p.is_file() and p.name not in skip}
    manifest = json.loads(files.pop("manifest.json"))
    assert set(manifest["config"]["fit"].pop("timings")) == {"r_train_s", "basis_s"}
    files["manifest.json"] = json.dumps(manifest).encode()
    return files


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(world, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_argv(world, full), check=True, env=env, timeout=300)
    proc = subprocess.Popen(_argv(world, killed), env=env)
    deadline = time.time() + 240
    while _done(killed) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "build finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = _done(killed)
    assert 3 <= n_before < 15
    with pytest.raises(FactraceError, match="incomplete"):
        EncodingStore.open(killed)
    # resumed with another --shard-rows: the store keeps the shard size it was started with
    subprocess.run(_argv(world, killed, shard_rows=7), check=True, env=env, timeout=300)
    assert _files(killed) == _files(full)
    assert EncodingStore.open(killed).n_rows == EncodingStore.open(full).n_rows


def test_altered_shard_detected(store_copy):
    out = store_copy
    EncodingStore.open(out)  # intact
    shard = out / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(FactraceError, match="shard-00001"):
        EncodingStore.open(out)
    shard.write_bytes(bytes(data[:-40]))
    with pytest.raises(FactraceError, match="shard-00001"):
        EncodingStore.open(out)


def test_rerun_checks_the_inputs_and_does_not_fit_again(world, tmp_path, capsys, monkeypatch):
    import shutil

    from factrace.config import variant_config
    from factrace.run import index as index_module
    from factrace.run.index import IndexConfig, build_index

    corpus = tmp_path / "corpus.jsonl"
    shutil.copy(world["corpus"], corpus)
    out = tmp_path / "store"
    cfg = IndexConfig(model=world["model"], optimizer_state=world["optimizer"],
                      corpus=str(corpus), queries=world["queries"], out=str(out),
                      encoder=variant_config("trackstar", dim=64, train_examples=16),
                      shard_rows=16, progress=True)
    build_index(cfg)
    full = _files(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["shards"]) == 4 and all("inputs_sha256" in s for s in manifest["shards"])

    def no_fit(*args, **kwargs):
        raise AssertionError("R fitted again")

    monkeypatch.setattr(index_module, "fit", no_fit)
    capsys.readouterr()
    build_index(cfg)
    assert "store " + str(out) + " is already complete (4 shards)" in capsys.readouterr().err

    # as if interrupted after two shards: resumed without a new fit, to the same store
    last = manifest["shards"][2:]
    for entry in last:
        (out / entry["encodings"]).unlink()
        (out / entry["ids"]).unlink()
    interrupted = dict(manifest, shards=manifest["shards"][:2], complete=False)
    (out / "manifest.json").write_text(json.dumps(interrupted))
    build_index(cfg)
    assert f"resuming {out} at shard 3 of 4" in capsys.readouterr().err
    assert _files(out) == full

    # a passage edited after its shard was encoded: refused, naming the shard and rows
    lines = corpus.read_text().splitlines()
    row = json.loads(lines[20])
    lines[20] = json.dumps({"id": row["id"], "text": row["text"] + " Edited."})
    corpus.write_text("\n".join(lines) + "\n")
    with pytest.raises(FactraceError, match=r"shard-00001 was encoded from rows 16-31 .* changed"):
        build_index(cfg)
    corpus.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(FactraceError, match="built from 60 corpus rows"):
        build_index(cfg)
