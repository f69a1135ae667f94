"""Corpus reading (factrace.data.io): every format, row ranges, validation errors, streaming."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factrace.data import corpus as corpus_module
from factrace.data.io import (
    corpus_shards,
    corpus_size,
    iter_corpus,
    iter_located,
    validate_corpus,
)
from factrace.data.records import Passage
from factrace.errors import FactraceError

N_ROWS = 23
# Integer and string ids mixed, texts with unicode, a leading space and an empty text.
ROWS = [
    {"id": i if i % 3 else f"doc-{i}", "text": f"passage {i} é ✓" if i != 5 else ""}
    for i in range(N_ROWS)
]
EXPECTED = [Passage(str(row["id"]), row["text"]) for row in ROWS]


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), "utf-8")
    return path


def write_parquet(path: Path, rows: list[dict], row_group_size: int = 4) -> Path:
    table = pa.table({"id": [str(r["id"]) for r in rows], "text": [r["text"] for r in rows]})
    table = table.append_column("extra", pa.array([1.5] * len(rows)))
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def make_corpus(kind: str, directory: Path, rows: list[dict] = ROWS) -> Path:
    """The same rows in one of the supported layouts."""
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        return write_lines(directory / "corpus.jsonl", rows)
    if kind == "jsonl.gz":
        path = directory / "corpus.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        return path
    if kind == "parquet":
        return write_parquet(directory / "corpus.parquet", rows)
    if kind == "arrow":
        path = directory / "corpus.arrow"
        table = pa.table({"text": [r["text"] for r in rows], "id": [str(r["id"]) for r in rows]})
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=5):
                writer.write_batch(batch)
        return path
    if kind == "hf":
        import datasets

        path = directory / "saved"
        texts = [r["text"] for r in rows]
        dataset = datasets.Dataset.from_dict({"id": [str(r["id"]) for r in rows], "text": texts})
        dataset.save_to_disk(str(path), num_shards=3)
        return path
    if kind == "hf-int-ids":
        import datasets

        path = directory / "saved-int"
        ids = list(range(len(rows)))
        datasets.Dataset.from_dict({"text": [r["text"] for r in rows], "id": ids}).save_to_disk(
            str(path)
        )
        return path
    if kind == "dir":
        path = directory / "shards"
        path.mkdir()
        write_lines(path / "part-00.jsonl", rows[:7])
        write_lines(path / "part-01.jsonl", [])  # an empty shard is fine
        write_parquet(path / "part-02.parquet", rows[7:16], row_group_size=3)
        with gzip.open(path / "part-03.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows[16:])
        (path / "README.md").write_text("not a shard")
        (path / ".part-04.jsonl.1234.tmp").write_text("{broken\n")
        (path / "_SUCCESS").write_text("")
        return path
    raise AssertionError(kind)


KINDS = ["jsonl", "jsonl.gz", "parquet", "arrow", "hf", "dir"]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpora")
    return {kind: make_corpus(kind, root / kind.replace(".", "-")) for kind in KINDS}


# Round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_reads_all_rows_in_order(corpora: dict[str, Path], kind: str) -> None:
    assert list(iter_corpus(corpora[kind])) == EXPECTED
    assert corpus_size(corpora[kind]) == N_ROWS
    info = validate_corpus(corpora[kind])
    assert (info.n_rows, info.n_empty) == (N_ROWS, 1)
    assert info.n_chars == sum(len(p.text) for p in EXPECTED)
    assert sum(shard.n_rows for shard in info.shards) == N_ROWS


def test_integer_ids_become_strings(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [{"id": 7, "text": "a"}, {"id": -2, "text": "b"}])
    assert [p.id for p in iter_corpus(path)] == ["7", "-2"]
    table = pa.table({"id": pa.array([7, 12], pa.int64()), "text": ["a", "b"]})
    pq.write_table(table, tmp_path / "c.parquet")
    assert [p.id for p in iter_corpus(tmp_path / "c.parquet")] == ["7", "12"]
    saved = make_corpus("hf-int-ids", tmp_path / "hf", ROWS[:3])
    assert [p.id for p in iter_corpus(saved)] == ["0", "1", "2"]


def test_directory_shards_are_read_in_name_order(corpora: dict[str, Path]) -> None:
    names = [shard.path.name for shard in corpus_shards(corpora["dir"])]
    assert names == ["part-00.jsonl", "part-01.jsonl", "part-02.parquet", "part-03.jsonl.gz"]
    info = validate_corpus(corpora["dir"])
    assert [s.n_rows for s in info.shards] == [7, 0, 9, 7]


def test_saved_dataset_shards_follow_state_json(corpora: dict[str, Path]) -> None:
    shards = corpus_shards(corpora["hf"])
    assert len(shards) == 3 and all(shard.format == "arrow" for shard in shards)


def test_blank_lines_crlf_and_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": 1, "text": "a"}\r\n\r\n   \n{"id": 2, "text": "b"}')
    assert list(iter_corpus(path)) == [Passage("1", "a"), Passage("2", "b")]
    assert corpus_size(path) == 2


def test_other_columns_and_fields_are_ignored(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [{"id": 1, "text": "a", "url": None, "meta": [1]}])
    assert list(iter_corpus(path)) == [Passage("1", "a")]


# Ranges -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_ranges_equal_slices_of_the_full_list(corpora: dict[str, Path], kind: str) -> None:
    path = corpora[kind]
    for start in range(N_ROWS + 2):
        for stop in {None, start, start + 1, start + 3, start + 8, max(start, N_ROWS), N_ROWS + 5}:
            got = list(iter_corpus(path, start=start, stop=stop))
            assert got == EXPECTED[start:stop], (start, stop)


@pytest.mark.parametrize("kind", KINDS)
def test_contiguous_ranges_cover_the_corpus_once(corpora: dict[str, Path], kind: str) -> None:
    bounds = [0, 5, 6, 13, 16, N_ROWS]
    pieces = [
        passage
        for start, stop in zip(bounds, bounds[1:], strict=False)
        for passage in iter_corpus(corpora[kind], start=start, stop=stop)
    ]
    assert pieces == EXPECTED


def test_located_numbers_are_file_lines_and_rows(corpora: dict[str, Path]) -> None:
    located = list(iter_located(corpora["dir"], start=6, stop=9))
    assert [(shard.path.name, number) for shard, number, _ in located] == [
        ("part-00.jsonl", 7),
        ("part-02.parquet", 1),
        ("part-02.parquet", 2),
    ]
    assert located[1][0].where(2) == f"{corpora['dir'] / 'part-02.parquet'}: row 2"


def test_rows_before_start_are_not_parsed(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": 1, "text": "a"}\n{broken\n{"id": 3, "text": "c"}\n')
    assert list(iter_corpus(path, start=2)) == [Passage("3", "c")]
    with pytest.raises(FactraceError, match=r"c\.jsonl:2: not valid JSON"):
        list(iter_corpus(path, start=1))


def test_bad_range_is_a_bug(corpora: dict[str, Path]) -> None:
    with pytest.raises(ValueError):
        iter_corpus(corpora["jsonl"], start=-1)
    with pytest.raises(ValueError):
        iter_corpus(corpora["jsonl"], start=5, stop=4)


# Bad rows ---------------------------------------------------------------------------------------

GOOD = b'{"id": 1, "text": "fine"}\n'
BAD_LINES = [
    (b'{"id": 2, "text": }', "not valid JSON"),
    (b'{"id": 2, "text": "a"', "not valid JSON"),
    (b"[2, 3]", "expected a JSON object, got a list"),
    (b'"just a string"', "expected a JSON object, got a string"),
    (b'{"text": "no id"}', 'missing field "id"'),
    (b'{"id": 2}', 'missing field "text"'),
    (b'{"id": 2.5, "text": "a"}', 'field "id" must be a string or an integer, got a number (2.5)'),
    (b'{"id": true, "text": "a"}', 'field "id" must be a string or an integer, got a boolean'),
    (b'{"id": null, "text": "a"}', 'field "id" must be a string or an integer, got null'),
    (b'{"id": [2], "text": "a"}', 'field "id" must be a string or an integer, got a list'),
    (b'{"id": 2, "text": 5}', 'field "text" must be a string, got an integer (5)'),
    (b'{"id": 2, "text": null}', 'field "text" must be a string, got null'),
    (b'{"id": 2, "text": "caf\xe9"}', "not valid UTF-8 (byte 0xe9 at column 23)"),
    (b'{"id": 2, "text": "\xff\xfe"}', "not valid UTF-8"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_bad_line_names_file_line_and_problem(tmp_path: Path, line: bytes, message: str) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(GOOD + b"\n" + GOOD + line + b"\n" + GOOD)  # bad row on line 4
    with pytest.raises(FactraceError) as raised:
        list(iter_corpus(path))
    text = str(raised.value)
    assert text.startswith(f"{path}:4: ")
    assert message in text
    assert "\n" not in text
    with pytest.raises(FactraceError, match=":4: "):
        validate_corpus(path)


def test_rows_before_an_error_are_yielded(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(GOOD + GOOD + b'{"id": 3}\n')
    stream = iter_corpus(path)
    assert [next(stream).id, next(stream).id] == ["1", "1"]
    with pytest.raises(FactraceError, match=r"corpus\.jsonl:3: missing field \"text\""):
        next(stream)


def test_json_array_file_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps([{"id": 1, "text": "a"}]))
    with pytest.raises(FactraceError, match=r"corpus\.json:1: .*not a JSON array"):
        list(iter_corpus(path))


def test_corrupt_gzip_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(gzip.compress(GOOD * 50)[:40])
    with pytest.raises(FactraceError, match=r"corpus\.jsonl\.gz:\d+: cannot read"):
        list(iter_corpus(path))


def test_bad_error_in_a_later_shard_names_that_shard(tmp_path: Path) -> None:
    write_lines(tmp_path / "a.jsonl", ROWS[:3])
    (tmp_path / "b.jsonl").write_bytes(GOOD + b'{"id": 9, "txt": "typo"}\n')
    with pytest.raises(FactraceError, match=rf"^{tmp_path / 'b.jsonl'}:2: missing field \"text\""):
        list(iter_corpus(tmp_path))


# Bad columnar files -----------------------------------------------------------------------------


def test_parquet_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"doc_id": ["a"], "text": ["x"]}), path)
    with pytest.raises(
        FactraceError, match=r'c\.parquet: missing column "id" \(columns: doc_id, text'
    ):
        list(iter_corpus(path))


def test_parquet_wrong_column_type(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": [1.0, 2.0], "text": ["x", "y"]}), path)
    with pytest.raises(FactraceError, match=r'c\.parquet: column "id" has type double'):
        list(iter_corpus(path))
    pq.write_table(pa.table({"id": [1, 2], "text": [b"x", b"y"]}), path)
    with pytest.raises(FactraceError, match=r'column "text" has type binary, expected string'):
        list(iter_corpus(path))


def test_parquet_null_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    texts = ["a", "b", "c", None, "e"]
    pq.write_table(
        pa.table({"id": ["1", "2", "3", "4", "5"], "text": texts}), path, row_group_size=2
    )
    with pytest.raises(FactraceError, match=r'c\.parquet: row 4: "text" is null'):
        list(iter_corpus(path))
    assert [p.id for p in iter_corpus(path, stop=3)] == ["1", "2", "3"]


def test_not_a_parquet_file(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    path.write_text("hello")
    with pytest.raises(FactraceError, match=r"c\.parquet: not readable as a Parquet file"):
        list(iter_corpus(path))
    with pytest.raises(FactraceError, match=r"c\.parquet: not readable as a Parquet file"):
        corpus_size(path)


def test_saved_dataset_without_id_column(tmp_path: Path) -> None:
    import datasets

    path = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(str(path))
    with pytest.raises(FactraceError, match=r'\.arrow: missing column "id" \(columns: text'):
        list(iter_corpus(path))


def test_dataset_dict_asks_for_a_split(tmp_path: Path) -> None:
    import datasets

    path = tmp_path / "dd"
    split = datasets.Dataset.from_dict({"id": [1], "text": ["a"]})
    datasets.DatasetDict({"train": split}).save_to_disk(str(path))
    with pytest.raises(FactraceError, match=r"DatasetDict with splits train; pass one split"):
        iter_corpus(path)


# Paths ------------------------------------------------------------------------------------------


def test_missing_path_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(FactraceError, match=r"nope\.jsonl: no such file or directory"):
        iter_corpus(tmp_path / "nope.jsonl")
    with pytest.raises(FactraceError, match="no such file"):
        corpus_size(tmp_path / "nope.jsonl")


def test_directory_without_shards(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FactraceError, match="no corpus files in this directory"):
        iter_corpus(tmp_path)


# Validation -------------------------------------------------------------------------------------


def test_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    rows = [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "c", "text": "z"}]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows + [rows[1], rows[0]]) + "\n")
    with pytest.raises(FactraceError) as raised:
        validate_corpus(path)
    assert str(raised.value).startswith(f'{path}:4: duplicate id "b" (first seen on line 2)')


def test_integer_and_string_ids_collide_after_normalisation(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "corpus.jsonl", [{"id": 7, "text": "x"}, {"id": "7", "text": "y"}]
    )
    with pytest.raises(
        FactraceError, match=r'corpus\.jsonl:2: duplicate id "7" \(first seen on line 1\)'
    ):
        validate_corpus(path)


def test_duplicate_across_shards_names_both_files(tmp_path: Path) -> None:
    write_lines(tmp_path / "a.jsonl", ROWS[:4])
    write_parquet(tmp_path / "b.parquet", ROWS[3:6])
    with pytest.raises(FactraceError) as raised:
        validate_corpus(tmp_path)
    assert str(raised.value).startswith(
        f'{tmp_path / "b.parquet"}: row 1: duplicate id "doc-3" (first seen at {tmp_path / "a.jsonl"}:4)'
    )


def test_digest_collisions_are_not_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(corpus_module, "id_digest", lambda passage_id: 42)
    path = write_lines(tmp_path / "corpus.jsonl", ROWS)
    assert validate_corpus(path).n_rows == N_ROWS
    path = write_lines(tmp_path / "dup.jsonl", ROWS[:5] + [ROWS[2]])
    with pytest.raises(
        FactraceError, match=r'dup\.jsonl:6: duplicate id "2" \(first seen on line 3\)'
    ):
        validate_corpus(path)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_corpus(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(content)
    with pytest.raises(FactraceError, match=r"corpus\.jsonl: corpus is empty"):
        validate_corpus(path)
    assert corpus_size(path) == 0
    assert list(iter_corpus(path)) == []


def test_empty_parquet_corpus(tmp_path: Path) -> None:
    path = tmp_path / "corpus.parquet"
    pq.write_table(
        pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}), path
    )
    assert corpus_size(path) == 0
    with pytest.raises(FactraceError, match="corpus is empty"):
        validate_corpus(path)


# Streaming --------------------------------------------------------------------------------------


def test_jsonl_streaming_memory_does_not_grow_with_the_corpus(tmp_path: Path) -> None:
    n = 100_000
    path = tmp_path / "big.jsonl"
    with path.open("w") as handle:
        handle.writelines(f'{{"id": {i}, "text": "passage {i} states a fact"}}\n' for i in range(n))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_corpus(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < size / 100, (peak, size)


PEAK_ARROW_MEMORY = """
import sys
import pyarrow as pa
from factrace.data.io import iter_corpus

base, peak, count = pa.total_allocated_bytes(), 0, 0
for count, _ in enumerate(iter_corpus(sys.argv[1]), 1):
    if count % 100 == 0:
        peak = max(peak, pa.total_allocated_bytes() - base)
print(count, peak)
"""


def peak_arrow_memory(path: Path) -> tuple[int, int]:
    """Passages read from ``path`` and the peak of Arrow's allocations while reading them, in a
    fresh interpreter, so that nothing allocated by this process blurs the measure."""
    result = subprocess.run([sys.executable, "-c", PEAK_ARROW_MEMORY, str(path)],
                            capture_output=True, text=True, check=True)
    count, peak = map(int, result.stdout.split())
    return count, peak


def test_parquet_streams_in_batches(tmp_path: Path) -> None:
    """One big uncompressed row group is decoded a little at a time, not read whole."""
    n = 50_000
    path = tmp_path / "big.parquet"
    table = pa.table({"id": pa.array(range(n)), "text": [f"passage {i} " * 40 for i in range(n)]})
    pq.write_table(table, path, row_group_size=n, compression="none")
    count, peak = peak_arrow_memory(path)
    assert count == n
    assert peak < table.nbytes / 3, (peak, table.nbytes)


def test_saved_dataset_keeps_its_shuffled_order(tmp_path: Path) -> None:
    import datasets

    dataset = datasets.Dataset.from_dict({"id": list(range(10)), "text": list("abcdefghij")})
    dataset = dataset.shuffle(seed=0).select(range(5))
    dataset.save_to_disk(str(tmp_path / "saved"))
    assert [p.id for p in iter_corpus(tmp_path / "saved")] == [str(i) for i in dataset["id"]]
