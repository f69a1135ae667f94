"""Hostile input for every reader: any bytes, any JSON values, damaged Parquet and damaged
stores give a result or one clear line, a :class:`FactraceError`, never another exception.

The run here is short (a few dozen examples per property). A long run scales every property's
examples, e.g. for a few minutes::

    FACTRACE_FUZZ_EXAMPLES=5000 python -m pytest -q tests/data/test_fuzz_readers.py
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from factrace.data.corpus import iter_corpus, validate_corpus
from factrace.data.io import read_qrels, read_queries, read_rankings
from factrace.errors import FactraceError

EXAMPLES = int(os.environ.get("FACTRACE_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
MAX_MESSAGE = 600  # a path (up to ~250 characters here), the problem, at most ~200 of input


def _jsonl_readers():
    return {
        "corpus": lambda p: list(iter_corpus(p)),
        "validate": validate_corpus,
        "queries": read_queries,
        "qrels": read_qrels,
        "rankings": read_rankings,
    }


def _outcome(read, path):
    """Run a reader: a result, or a one-line FactraceError of bounded length (anything else
    propagates and fails the property)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return read(path)
        except FactraceError as error:
            assert type(error) is FactraceError
            message = str(error)
            assert message and "\n" not in message and "\r" not in message, message
            assert len(message) <= MAX_MESSAGE, message[:300] + "..."
            return error


def _write(data: bytes, name: str = "input.jsonl") -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fuzz"))
    path = folder / name
    path.write_bytes(data)
    return path


def _all_readers(data: bytes, name: str = "input.jsonl") -> None:
    path = _write(data, name)
    try:
        for read in _jsonl_readers().values():
            _outcome(read, path)
    finally:
        shutil.rmtree(path.parent)


# JSON values: every type, NaN and infinities, huge integers, nested containers.
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=300)
           | st.sampled_from(["", " ", "p1", "q1", "7", "\x00", "\ud800", " Paris"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=12)
KEYS = ["id", "text", "prompt", "target", "query_id", "doc_id", "doc_ids", "scores",
        "opponent_ids", "opponent_scores"]
IDS = st.sampled_from(["a", "b", "c", 1, 2, "1"])
GOOD = {"id": IDS, "text": st.text(max_size=20), "prompt": st.sampled_from(["x is", "x is "]),
        "target": st.sampled_from([" y", "y", ""]), "query_id": IDS, "doc_id": IDS,
        "doc_ids": st.lists(IDS, max_size=3), "opponent_ids": st.lists(IDS, max_size=3),
        "scores": st.lists(st.floats(-3, 3), max_size=3),
        "opponent_scores": st.lists(st.floats(-3, 3), max_size=3)}


@st.composite
def rows(draw):
    """A JSON object with some of the readers' fields, each plausible or anything at all."""
    row = {}
    for key in KEYS:
        kind = draw(st.sampled_from(["absent", "good", "good", "any"]))
        if kind == "good":
            row[key] = draw(GOOD[key])
        elif kind == "any":
            row[key] = draw(VALUES)
    row.update(draw(st.dictionaries(st.text(max_size=4), VALUES, max_size=2)))
    return row


def _dumps(value, ascii_only: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)


@st.composite
def lines(draw):
    """One line of a file: an object, another JSON value, broken JSON, or raw bytes."""
    kind = draw(st.sampled_from(["row", "row", "row", "value", "broken", "bytes", "blank",
                                 "number"]))
    ascii_only = draw(st.booleans())
    if kind == "row":
        text = _dumps(draw(rows()), ascii_only)
    elif kind == "value":
        text = _dumps(draw(VALUES), ascii_only)
    elif kind == "broken":
        text = _dumps(draw(rows()), ascii_only)
        text = text[: draw(st.integers(0, len(text)))]
    elif kind == "number":  # an integer literal longer than Python converts by default
        key = draw(st.sampled_from(KEYS))
        text = f'{{"{key}": {"7" * draw(st.integers(4000, 5000))}, "text": "t"}}'
    elif kind == "blank":
        text = draw(st.sampled_from(["", " ", "\t", "\r"]))
    else:
        return draw(st.binary(max_size=200))
    return text.encode("utf-8", "surrogatepass")


@FUZZ
@given(st.binary(max_size=2000))
def test_any_bytes(data):
    _all_readers(data)


@FUZZ
@given(st.lists(lines(), max_size=8), st.sampled_from([b"\n", b"\r\n"]), st.booleans())
@example([b'{"\\r": null}'], b"\n", False)  # a key echoed raw broke the one-line message
def test_any_json_lines(parts, newline, bom):
    data = newline.join(parts)
    _all_readers((b"\xef\xbb\xbf" if bom else b"") + data)


@FUZZ
@given(st.lists(rows(), min_size=1, max_size=6), st.integers(0, 10**6), st.booleans())
def test_truncated_and_gzipped_files(objects, cut, gz):
    import gzip

    data = "\n".join(_dumps(row) for row in objects).encode("utf-8", "surrogatepass")
    if gz:
        data = gzip.compress(data)
    _all_readers(data[: cut % (len(data) + 1)], "input.jsonl.gz" if gz else "input.jsonl")


def test_huge_lines_and_nul_bytes(tmp_path):
    huge = tmp_path / "huge.jsonl"
    huge.write_bytes(b'{"id": "a", "text": "' + b"x" * (8 << 20) + b'"}\n' + b"\x00" * 4096)
    for read in _jsonl_readers().values():
        _outcome(read, huge)
    number = tmp_path / "number.jsonl"
    number.write_bytes(b'{"id": ' + b"9" * 100_000 + b', "text": "t"}\n')
    for read in _jsonl_readers().values():
        assert isinstance(_outcome(read, number), FactraceError)


# Parquet: columns of any type, nulls, and damaged files.
COLUMN_VALUES = st.sampled_from([
    pa.array(["a", "b"]), pa.array([1, 2]), pa.array([1.5, float("nan")]),
    pa.array(["a", None]), pa.array([None, None]), pa.array([b"a", b"\xff"]),
    pa.array([True, False]), pa.array([["a"], []]), pa.array([{"x": 1}, {"x": 2}]),
    pa.array(["", ""]), pa.array(["a", "a"]), pa.array([" y", "y"]),
    pa.array([-1, 2**62]), pa.array(["\x00", "\ud7ff"]),
])


@st.composite
def tables(draw):
    names = draw(st.lists(st.sampled_from(KEYS[:6] + ["other"]), max_size=5, unique=True))
    return pa.table({name: draw(COLUMN_VALUES) for name in names}) if names else pa.table({})


@FUZZ
@given(tables(), st.booleans(), st.integers(0, 10**6), st.integers(0, 255))
def test_parquet_files(table, damage, where, byte):
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=1)
    data = bytearray(buffer.getvalue())
    if damage and data:
        at = where % len(data)
        if byte % 2:
            data[at] = byte
        else:
            data = data[:at]
    _all_readers(bytes(data), "input.parquet")


def test_a_long_string_in_a_manifest_field_is_not_echoed():
    """A guard of the message-length rule itself: it must be able to fail."""
    with pytest.raises(AssertionError):
        _outcome(lambda _: (_ for _ in ()).throw(FactraceError("x" * 2000)), None)
