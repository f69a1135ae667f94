"""JSON Lines helpers (factrace.data.jsonl): line numbers, encodings, compression."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from factrace.data.io import iter_jsonl, read_jsonl, write_jsonl
from factrace.errors import FactraceError


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('\n{"a": 1}\n\n\n{"a": 2}\n')
    assert list(iter_jsonl(path)) == [(2, {"a": 1}), (5, {"a": 2})]
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_round_trip_keeps_unicode_unescaped(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    rows = [{"text": " Café ✓", "n": 3}, {"text": "line\nbreak", "x": None}]
    assert write_jsonl(path, rows) == 2
    assert read_jsonl(path) == rows
    assert "Café ✓" in path.read_text("utf-8")
    assert path.read_text("utf-8").count("\n") == 2


def test_lone_surrogates_are_written_escaped(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "\\ud800x"}\n')
    rows = read_jsonl(path)
    write_jsonl(tmp_path / "copy.jsonl", rows)
    assert read_jsonl(tmp_path / "copy.jsonl") == rows


def test_gzip_round_trip_is_deterministic(tmp_path: Path) -> None:
    rows = [{"i": i} for i in range(10)]
    first, second = tmp_path / "a" / "rows.jsonl.gz", tmp_path / "b" / "rows.jsonl.gz"
    write_jsonl(first, rows)
    write_jsonl(second, rows)
    assert read_jsonl(first) == rows
    assert gzip.decompress(first.read_bytes()).count(b"\n") == 10
    assert first.read_bytes() == second.read_bytes()
    assert b"rows.jsonl\x00" in first.read_bytes()[:40]  # the final name, not a temporary one


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"a": 1}\n{"a": }\n', "rows.jsonl:2: not valid JSON"),
        (b'{"a": 1}\n\n3\n', "rows.jsonl:3: expected a JSON object, got an integer (3)"),
        (b'{"a": 1}\n{"a": "\xc3"}\n', "rows.jsonl:2: not valid UTF-8 (byte 0xc3 at column 8)"),
        (b'{"a": NaN}\n{"a": [1, 2}\n', "rows.jsonl:2: not valid JSON"),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with pytest.raises(FactraceError) as raised:
        read_jsonl(path)
    assert str(raised.value).startswith(f"{tmp_path}/{message}")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FactraceError, match=r"nope\.jsonl: no such file"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(FactraceError, match="is a directory"):
        read_jsonl(tmp_path)


def test_expected_shape_completes_the_hint(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("[1]\n")
    with pytest.raises(FactraceError, match=r"\(each line must be a JSON object with \"x\"\)"):
        read_jsonl(path, 'a JSON object with "x"')
