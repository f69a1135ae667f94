"""Atomic outputs (factrace.data.atomic): complete under the final name, or nothing at all."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from factrace.data.io import atomic_dir, atomic_path, atomic_write, write_jsonl


class Boom(Exception):
    pass


def entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_write_appears_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with atomic_write(target) as handle:
        handle.write("héllo\n")
        assert not target.exists()  # nothing under the final name while writing
    assert target.read_bytes() == "héllo\n".encode()
    assert entries(tmp_path) == ["out.txt"]


def test_binary_write(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "out.bin", "wb") as handle:
        handle.write(b"\x00\xff")
    assert (tmp_path / "out.bin").read_bytes() == b"\x00\xff"


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(Boom), atomic_write(tmp_path / "out.txt") as handle:
        handle.write("partial")
        raise Boom
    assert entries(tmp_path) == []


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_write(target) as handle:
        handle.write("new")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert entries(tmp_path) == ["out.txt"]


def test_successful_write_replaces_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_write(target) as handle:
        handle.write("new")
    assert target.read_text() == "new"


def test_parents_are_created_and_removed_again_on_failure(tmp_path: Path) -> None:
    with pytest.raises(Boom), atomic_path(tmp_path / "a" / "b" / "out.txt") as tmp:
        tmp.write_text("x")
        raise Boom
    assert entries(tmp_path) == []
    with atomic_path(tmp_path / "a" / "b" / "out.txt") as tmp:
        tmp.write_text("x")
    assert (tmp_path / "a" / "b" / "out.txt").read_text() == "x"


def test_atomic_path_body_that_writes_nothing_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target):
        pass
    assert target.read_text() == "old"


def test_files_get_ordinary_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "out.txt") as handle:
            handle.write("x")
        with atomic_dir(tmp_path / "store") as directory:
            (directory / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o755


def test_directory_appears_on_success(tmp_path: Path) -> None:
    target = tmp_path / "store"
    with atomic_dir(target) as directory:
        assert directory.is_dir() and directory.parent == tmp_path
        (directory / "manifest.json").write_text("{}")
        assert not target.exists()
    assert entries(target) == ["manifest.json"]
    assert entries(tmp_path) == ["store"]


def test_failed_directory_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(Boom), atomic_dir(tmp_path / "store") as directory:
        (directory / "shard-0").write_text("partial")
        raise Boom
    assert entries(tmp_path) == []


def test_directory_replaces_an_existing_one_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "store"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(Boom), atomic_dir(target) as directory:
        (directory / "new").write_text("new")
        raise Boom
    assert entries(target) == ["old"]
    with atomic_dir(target) as directory:
        (directory / "new").write_text("new")
    assert entries(target) == ["new"]
    assert entries(tmp_path) == ["store"]


def test_write_jsonl_leaves_nothing_when_the_rows_fail(tmp_path: Path) -> None:
    def rows():
        yield {"id": 1}
        raise Boom

    target = tmp_path / "rows.jsonl"
    with pytest.raises(Boom):
        write_jsonl(target, rows())
    assert entries(tmp_path) == []


def test_write_jsonl_refuses_nan_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_jsonl(tmp_path / "rows.jsonl", [{"score": 1.0}, {"score": float("nan")}])
    assert entries(tmp_path) == []


def test_atomic_path_body_may_build_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "table"
    target.mkdir()
    (target / "old").write_text("old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "part-0").write_text("new")
    assert entries(target) == ["part-0"]
    assert entries(tmp_path) == ["table"]
