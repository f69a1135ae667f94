"""The encoding store: round trip, resume, fingerprints, corruption, atomic writes."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from factrace.errors import FactraceError
from factrace.store import EncodingStore, StoreWriter
from factrace.store import manifest as mf

from .helpers import FINGERPRINTS, shard_data, write_store

DIM = 16


def _files(path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_round_trip(tmp_path):
    shards = shard_data([5, 0, 7, 3], DIM)
    config = {"d": DIM, "blocks": [[4, 4]], "optimizer": "factored"}
    writer = StoreWriter.create_or_resume(tmp_path / "s", FINGERPRINTS, DIM, config)
    for index, (ids, encodings) in enumerate(shards):
        writer.write_shard(index, ids, encodings)
    writer.finish()

    store = EncodingStore.open(tmp_path / "s", expect=FINGERPRINTS)
    assert (store.dim, store.n_rows, store.n_shards, len(store)) == (DIM, 15, 4, 15)
    assert store.shard_rows == [5, 0, 7, 3]
    assert store.ids == [i for ids, _ in shards for i in ids]
    for (ids, encodings), (got_ids, got) in zip(shards, store.iter_shards(), strict=True):
        assert got_ids == ids
        assert got.dtype == np.float16 and got.shape == (len(ids), DIM)
        np.testing.assert_array_equal(got, encodings.astype(np.float16))

    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["format_version"] == mf.FORMAT_VERSION
    assert manifest["dtype"] == "float16" and manifest["dim"] == DIM and manifest["complete"]
    assert manifest["fingerprints"] == FINGERPRINTS
    assert manifest["config"] == config
    entry = manifest["shards"][2]
    assert (entry["name"], entry["rows"]) == ("shard-00002", 7)
    for kind in ("encodings", "ids"):
        data = (tmp_path / "s" / entry[kind]).read_bytes()
        assert entry["sha256"][kind] == hashlib.sha256(data).hexdigest()


def test_write_accepts_torch_and_converts_to_float16(tmp_path):
    import torch

    x = torch.randn(4, DIM, dtype=torch.float64)
    write_store(tmp_path / "s", [(["a", "b", "c", "d"], x)], DIM)
    ((_, got),) = EncodingStore.open(tmp_path / "s").iter_shards()
    np.testing.assert_array_equal(got, x.numpy().astype(np.float16))


def test_interrupted_build_resumes_to_identical_files(tmp_path):
    shards = shard_data([6, 6, 6, 4], DIM, seed=3)
    whole = write_store(tmp_path / "whole", shards, DIM)

    path = tmp_path / "resumed"
    write_store(path, shards[:2], DIM, finish=False)
    # what a writer killed mid-shard leaves: a temporary, and a renamed file of shard 2
    # whose manifest entry was never written
    (path / ".shard-00002.npy.tmp").write_bytes(b"partial")
    (path / "shard-00002.ids.json").write_text('["stale"]\n')

    writer = StoreWriter.create_or_resume(path, FINGERPRINTS, DIM, {"d": DIM, "layout": "layers"})
    assert (writer.done_shards, writer.next_shard, writer.n_rows) == (2, 2, 12)
    assert not writer.complete
    assert not (path / ".shard-00002.npy.tmp").exists()
    assert not (path / "shard-00002.ids.json").exists()
    for index in range(writer.next_shard, len(shards)):
        writer.write_shard(index, *shards[index])
    writer.finish()

    assert _files(path) == _files(whole)


def test_complete_store_is_left_as_is(tmp_path):
    path = write_store(tmp_path / "s", shard_data([3, 3], DIM), DIM)
    before = _files(path)
    writer = StoreWriter.create_or_resume(path, FINGERPRINTS, DIM, {"other": "config"})
    assert writer.complete and writer.done_shards == 2
    with pytest.raises(FactraceError, match="complete"):
        writer.write_shard(2, ["x"], np.zeros((1, DIM)))
    writer.finish()
    assert _files(path) == before


def test_resume_with_other_fingerprints_names_the_key(tmp_path):
    path = write_store(tmp_path / "s", shard_data([3], DIM), DIM, finish=False)
    other = {**FINGERPRINTS, "projection_seed": "1"}
    with pytest.raises(FactraceError, match=r"projection seed \(store: 0, now: 1\)"):
        StoreWriter.create_or_resume(path, other, DIM)
    with pytest.raises(FactraceError, match=r"encoding dimension \(store: 16, now: 8\)"):
        StoreWriter.create_or_resume(path, FINGERPRINTS, 8)
    dropped = {k: v for k, v in FINGERPRINTS.items() if k != "r"}
    with pytest.raises(
        FactraceError, match=r"different R \(Hessian approximation\) \(store: r-9, now: none\)"
    ):
        StoreWriter.create_or_resume(path, dropped, DIM)


def test_open_with_other_fingerprints_names_each_part(tmp_path):
    path = write_store(tmp_path / "s", shard_data([3], DIM), DIM)
    EncodingStore.open(path, expect={"model": "m-abc"})  # a subset that agrees is fine
    with pytest.raises(FactraceError) as error:
        EncodingStore.open(
            path, expect={**FINGERPRINTS, "projection_seed": "1", "tokenizer": "t-2"}
        )
    message = str(error.value)
    assert "projection seed (store: 0, now: 1)" in message
    assert "tokenizer (store: t-1, now: t-2)" in message
    assert "model" not in message.split("different", 1)[1]
    assert "\n" not in message
    with pytest.raises(FactraceError, match=r"different Hessian R \(store: r-9, now: r-0\)"):
        EncodingStore.open(path, expect={"r": "r-0"}, labels={"r": "Hessian R"})
    with pytest.raises(FactraceError, match=r"different dataset \(store: none, now: c4\)"):
        EncodingStore.open(path, expect={"dataset": "c4"})


def test_incomplete_store_is_refused(tmp_path):
    path = write_store(tmp_path / "s", shard_data([3, 3], DIM), DIM, finish=False)
    with pytest.raises(FactraceError, match="incomplete.*resume the build"):
        EncodingStore.open(path)


def test_missing_store_is_refused(tmp_path):
    with pytest.raises(FactraceError, match="no encoding store"):
        EncodingStore.open(tmp_path / "nothing")


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_shard_is_detected(tmp_path, verify):
    path = write_store(tmp_path / "s", shard_data([4, 5, 6], DIM), DIM)
    shard = path / "shard-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(FactraceError, match="shard-00001"):
        EncodingStore.open(path, verify=verify)


@pytest.mark.parametrize("file", ["shard-00002.npy", "shard-00002.ids.json"])
def test_one_altered_byte_is_detected(tmp_path, file):
    path = write_store(tmp_path / "s", shard_data([4, 5, 6], DIM), DIM)
    EncodingStore.open(path)
    data = bytearray((path / file).read_bytes())
    data[-5] ^= 0x01
    (path / file).write_bytes(bytes(data))
    with pytest.raises(FactraceError, match=f"shard-00002.*{file}.*checksum"):
        EncodingStore.open(path)


def test_missing_shard_file_is_detected(tmp_path):
    path = write_store(tmp_path / "s", shard_data([4, 5], DIM), DIM)
    (path / "shard-00000.ids.json").unlink()
    with pytest.raises(FactraceError, match="shard-00000"):
        EncodingStore.open(path, verify=False)


def test_shards_must_come_in_order_and_fit(tmp_path):
    writer = StoreWriter.create_or_resume(tmp_path / "s", FINGERPRINTS, DIM)
    with pytest.raises(ValueError, match="out of order"):
        writer.write_shard(1, ["a"], np.zeros((1, DIM)))
    with pytest.raises(ValueError, match="shape"):
        writer.write_shard(0, ["a"], np.zeros((1, DIM + 1)))
    with pytest.raises(ValueError, match="ids"):
        writer.write_shard(0, ["a", "b"], np.zeros((1, DIM)))
    with pytest.raises(ValueError, match="NaN"):
        writer.write_shard(0, ["a"], np.full((1, DIM), np.nan))
    with pytest.raises(TypeError):
        writer.write_shard(0, [7], np.zeros((1, DIM)))
    assert writer.done_shards == 0


def test_failed_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    path = write_store(tmp_path / "s", shard_data([3], DIM), DIM, finish=False)
    before = _files(path)

    def broken(f, array, **kwargs):
        f.write(b"\x93NUMPY half")
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", broken)
    writer = StoreWriter.create_or_resume(path, FINGERPRINTS, DIM)
    with pytest.raises(OSError, match="disk full"):
        writer.write_shard(1, ["a"], np.zeros((1, DIM)))
    assert _files(path) == before


def test_non_store_directory_is_not_overwritten(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    with pytest.raises(FactraceError, match="not empty"):
        StoreWriter.create_or_resume(tmp_path / "s", FINGERPRINTS, DIM)
    assert (tmp_path / "s" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float16_rounding_is_numpys(dtype):
    # the fast conversion must round exactly as numpy's astype (to nearest even, ties included)
    from factrace.store.encodings import _as_float16

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 512)) * np.logspace(-9, 3.5, 512)).astype(dtype)
    x[0, :4] = [np.float16(1.0) + np.float16(2**-11), 2**-25, -2**-24, 65504.0]  # ties, subnormals
    got = _as_float16(x, 512)
    assert got.dtype == np.float16 and got.flags.c_contiguous
    np.testing.assert_array_equal(got.view(np.uint16), x.astype(np.float16).view(np.uint16))
    reversed_view = x[:, ::-1]  # negative strides
    np.testing.assert_array_equal(_as_float16(reversed_view, 512),
                                  reversed_view.astype(np.float16))
