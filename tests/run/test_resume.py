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
from factrace.search.store import EncodingStore


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
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


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


def test_altered_shard_detected(world, tmp_path):
    out = tmp_path / "s"
    subprocess.run(_argv(world, out), check=True, timeout=300)
    shard = out / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(FactraceError, match="shard-00001"):
        EncodingStore.open(out)
    shard.write_bytes(bytes(data[:-40]))
    with pytest.raises(FactraceError, match="shard-00001"):
        EncodingStore.open(out)
