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
@example(pa.table({"text": ["a", None], "prompt": ["a", None]}), True, 908489, 129)  # schema
# metadata no longer UTF-8: pyarrow raised UnicodeDecodeError
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


# A damaged store: flipped or cut bytes in manifest.json, a task file or a location table,
# and manifests of any JSON values, give a FactraceError from opening it or reading from it.


def _store_reads(path: Path, passage_id: str, task: str | None):
    from factrace.store import tasks
    from factrace.store.encodings import EncodingStore

    store = EncodingStore.open(path)
    store.passage(passage_id)
    store.is_passage("no such passage")
    if task is not None:
        tasks.load(store, task)
    return store


def _damaged_copy(store) -> Path:
    return Path(shutil.copytree(store.out, Path(tempfile.mkdtemp(prefix="fuzz")) / "store"))


def _store_facts(store):
    from factrace.store.encodings import EncodingStore

    opened = EncodingStore.open(store.out)
    manifest = opened.manifest
    return manifest, opened.ids[0], manifest.get("default_task")


def _damage(data: bytes, edits) -> bytes:
    data = bytearray(data)
    for kind, at, byte in edits:
        if not data:
            break
        at %= len(data)
        if kind == "flip":
            data[at] ^= 1 << (byte % 8)
        elif kind == "set":
            data[at] = byte
        else:
            del data[at:]
    return bytes(data)


EDITS = st.lists(st.tuples(st.sampled_from(["flip", "set", "cut"]), st.integers(0, 10**7),
                           st.integers(0, 255)), min_size=1, max_size=3)


@FUZZ
@given(st.sampled_from(["manifest", "task", "norms", "locations"]), EDITS)
def test_damaged_store_files(store, which, edits):
    manifest, passage_id, task = _store_facts(store)
    files = {"manifest": "manifest.json", "locations": manifest["locations"][0]["file"],
             "task": manifest["tasks"][task]["file"],
             "norms": manifest["tasks"][task].get("norms")}
    copy = _damaged_copy(store)
    try:
        target = copy / (files[which] or files["task"])
        target.write_bytes(_damage(target.read_bytes(), edits))
        _outcome(lambda p: _store_reads(p, passage_id, task), copy)
    finally:
        shutil.rmtree(copy.parent)


@st.composite
def manifests(draw, real):
    """The real manifest with some values (anywhere in it) replaced by any JSON value, some
    keys dropped, or an unrelated JSON value."""
    if draw(st.integers(0, 9)) == 0:
        return draw(VALUES)
    manifest = json.loads(json.dumps(real))
    for _ in range(draw(st.integers(1, 3))):
        node, path = manifest, []
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict)
                                       else range(len(node))))
            path.append((node, key))
            node = node[key]
        if not path:
            continue
        parent, key = path[-1]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = draw(VALUES)
    return manifest


@FUZZ
@given(st.data())
def test_manifests_of_any_values(store, data):
    real, passage_id, task = _store_facts(store)
    manifest = data.draw(manifests(real))
    copy = _damaged_copy(store)
    try:
        (copy / "manifest.json").write_text(json.dumps(manifest, allow_nan=True))
        _outcome(lambda p: _store_reads(p, passage_id, task), copy)
    finally:
        shutil.rmtree(copy.parent)


@pytest.mark.parametrize("edit", [
    {"shards": [None]}, {"locations": [{"file": None}]}, {"tasks": {"default": {"file": 3}}},
    {"config": {"corpus": 7}}, {"additions": [None]}, {"dim": "256"}, {"complete": "yes"},
    {"format_version": "x" * 5000}, {"tasks": {"default": {"file": "../../etc/passwd"}}},
    "no files",
])
def test_manifest_values_found_by_the_fuzzer(store, edit):
    """Values that made opening or reading a store raise TypeError, KeyError,
    AttributeError or IndexError (a location table naming files its entry no longer lists),
    or echo a whole field, before manifests were checked."""
    real, passage_id, task = _store_facts(store)
    if edit == "no files":
        edit = {"locations": [{**real["locations"][0], "files": []}]}
    copy = _damaged_copy(store)
    try:
        (copy / "manifest.json").write_text(json.dumps({**real, **edit}))
        assert isinstance(_outcome(lambda p: _store_reads(p, passage_id, task), copy),
                          FactraceError)
    finally:
        shutil.rmtree(copy.parent)
