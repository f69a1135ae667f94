"""Datasets as they are kept: saved datasets, Arrow files and directories of Parquet files, as a
corpus and as queries, with their columns renamed (factrace.data.sources); the one-line error
for a missing column; location tables over each form; a store built from a saved dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_io import peak_arrow_memory

from factrace.cli import main
from factrace.data.io import (
    Source,
    corpus_shards,
    iter_corpus,
    read_queries,
    validate_corpus,
    with_columns,
)
from factrace.data.records import Query
from factrace.data.sources import source_from_meta, source_meta
from factrace.errors import FactraceError
from factrace.store.locations import Locations

ROWS = [{"doc_id": i if i % 4 else f"doc-{i}", "body": f"passage {i} é ✓ " + "x" * (i % 9),
         "score": float(i)} for i in range(37)]
QUERY_ROWS = [{"qid": f"q{i}", "question": f"Question {i} is", "answer": f" answer {i}",
               "relation": "P1"} for i in range(11)]
CORPUS_COLUMNS = {"id": "doc_id", "text": "body"}
QUERY_COLUMNS = {"id": "qid", "prompt": "question", "target": "answer"}
FORMATS = ["jsonl", "parquet", "parquet-dir", "arrow-stream", "arrow-file", "saved"]


def write_as(kind: str, rows: list[dict], directory: Path) -> Path:
    """``rows`` kept in one of the forms a data set takes (strings for mixed id types)."""
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        path = directory / "rows.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
        return path
    table = pa.Table.from_pylist([{k: str(v) if k in ("doc_id", "qid") else v
                                   for k, v in r.items()} for r in rows])
    if kind == "parquet":
        pq.write_table(table, directory / "rows.parquet", row_group_size=5)
        return directory / "rows.parquet"
    if kind == "parquet-dir":
        for k, start in enumerate(range(0, len(rows), 8)):
            pq.write_table(table.slice(start, 8), directory / f"part-{k:05d}.parquet",
                           row_group_size=3)
        return directory
    if kind.startswith("arrow"):
        path = directory / "rows.arrow"
        new = pa.ipc.new_stream if kind == "arrow-stream" else pa.ipc.new_file
        with pa.OSFile(str(path), "wb") as sink, new(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=4):
                writer.write_batch(batch)
        return path
    if kind == "saved":
        import datasets

        path = directory / "saved"
        datasets.Dataset(table).save_to_disk(str(path), num_shards=3)
        return path
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("kept")
    return {"corpus": {kind: write_as(kind, ROWS, root / "corpus" / kind) for kind in FORMATS},
            "queries": {kind: write_as(kind, QUERY_ROWS, root / "queries" / kind)
                        for kind in FORMATS}}


def _plain_jsonl(path: Path, rows: list[dict], fields: dict[str, str]) -> Path:
    """The same rows as JSON Lines under factrace's own field names."""
    path.write_text("".join(json.dumps({f: r[c] for f, c in fields.items()}) + "\n"
                            for r in rows), "utf-8")
    return path


# Round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FORMATS)
def test_each_form_reads_the_passages_of_its_jsonl_equivalent(kept, tmp_path, kind):
    reference = list(iter_corpus(_plain_jsonl(tmp_path / "c.jsonl", ROWS, CORPUS_COLUMNS)))
    source = Source(kept["corpus"][kind], CORPUS_COLUMNS)
    assert list(iter_corpus(source)) == reference
    assert list(iter_corpus(source, start=6, stop=23)) == reference[6:23]
    info = validate_corpus(source)
    assert info.n_rows == len(ROWS) and sum(s.n_rows for s in info.shards) == len(ROWS)


def test_a_saved_dataset_is_its_arrow_files_in_order(kept):
    shards = corpus_shards(Source(kept["corpus"]["saved"], CORPUS_COLUMNS))
    assert [s.format for s in shards] == ["arrow"] * 3
    assert [s.path.name for s in shards] == sorted(s.path.name for s in shards)
    assert all(s.column("text") == "body" for s in shards)


@pytest.mark.parametrize("kind", FORMATS)
def test_each_form_reads_the_queries_of_its_jsonl_equivalent(kept, tmp_path, kind):
    reference = read_queries(_plain_jsonl(tmp_path / "q.jsonl", QUERY_ROWS, QUERY_COLUMNS))
    assert reference[0] == Query("q0", "Question 0 is", " answer 0")
    assert read_queries(Source(kept["queries"][kind], QUERY_COLUMNS)) == reference


def test_queries_in_their_own_column_names_need_no_renaming(tmp_path):
    rows = [{"id": f"q{i}", "prompt": "p", "target": " t", "other": 1} for i in range(3)]
    path = tmp_path / "q.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert read_queries(path) == [Query(f"q{i}", "p", " t") for i in range(3)]


def test_a_source_is_a_path_and_its_metadata_round_trips(tmp_path):
    assert with_columns(tmp_path / "c.jsonl") == str(tmp_path / "c.jsonl")
    assert with_columns("c.jsonl", id=None, text=None) == "c.jsonl"
    source = with_columns("saved", text="body", id="id")
    assert source == Source("saved", {"text": "body"}) and str(source) == "saved"
    meta = source_meta("corpus", source, "/abs/saved")
    assert meta == {"corpus": "/abs/saved", "corpus_columns": {"text": "body"}}
    assert source_from_meta(meta, "corpus") == Source("/abs/saved", {"text": "body"})
    assert source_from_meta({"corpus": "/c.jsonl"}, "corpus") == "/c.jsonl"


# Errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FORMATS)
def test_a_mistyped_column_is_one_line_naming_the_columns(kept, kind):
    source = Source(kept["corpus"][kind], {"id": "doc_id", "text": "bdy"})
    with pytest.raises(FactraceError) as raised:
        validate_corpus(source)
    message = str(raised.value)
    assert len(message.splitlines()) == 1
    assert 'missing field "bdy"' in message or 'missing column "bdy"' in message
    for column in ("doc_id", "body", "score"):
        assert column in message
    queries = Source(kept["queries"][kind], {"id": "qid", "prompt": "question"})
    with pytest.raises(FactraceError, match=r'missing (column|field) "target" \(.*answer'):
        read_queries(queries)


def test_a_column_of_the_wrong_type_names_it_and_the_columns(kept):
    source = Source(kept["corpus"]["saved"], {"id": "doc_id", "text": "score"})
    with pytest.raises(FactraceError,
                       match=r'column "score" has type double, expected string \(columns: '):
        list(iter_corpus(source))


def test_the_command_line_says_which_columns_there_are(kept, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    argv = ["baseline", "--method", "random", "--corpus", str(kept["corpus"]["saved"]),
            "--queries", str(kept["queries"]["parquet"]), "--query-id-field", "qid",
            "--query-prompt-field", "question", "--query-target-field", "answer",
            "--out", str(out), "-q"]
    assert main([*argv, "--id-field", "doc_id", "--text-field", "text"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("factrace: error: ")
    assert 'missing column "text" (columns: doc_id, body, score' in err
    assert not out.exists()
    assert main([*argv, "--id-field", "doc_id", "--text-field", "body"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["query_id"] for r in rows] == [r["qid"] for r in QUERY_ROWS]
    assert set(rows[0]["doc_ids"]) <= {str(r["doc_id"]) for r in ROWS}


# Location tables --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FORMATS)
def test_location_tables_read_each_passage_back(kept, kind):
    source = Source(kept["corpus"][kind], CORPUS_COLUMNS)
    table = Locations.build(source)
    reference = list(iter_corpus(source))
    assert len(table) == len(reference)
    back = Locations.from_saved(json.loads(json.dumps(table.entry())), table.arrays())
    for index, passage in enumerate(reference):
        assert table.position(passage.id) == index
        assert back.find(passage.id) == passage
    assert all(f["columns"] == CORPUS_COLUMNS for f in table.entry()["files"])
    if kind == "saved":
        assert len(table.files) == 3 and len({int(k) for k in table.table[:, 0]}) == 3


def test_plain_columns_leave_the_table_entry_as_before(kept, tmp_path):
    path = _plain_jsonl(tmp_path / "c.jsonl", ROWS, CORPUS_COLUMNS)
    assert all("columns" not in f for f in Locations.build(path).entry()["files"])


# Streaming --------------------------------------------------------------------------------------


def test_an_arrow_stream_is_read_one_batch_at_a_time(tmp_path):
    n = 40_000
    table = pa.table({"id": [str(i) for i in range(n)], "text": [f"passage {i} " * 20
                                                                 for i in range(n)]})
    path = tmp_path / "big.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=1000):
            writer.write_batch(batch)
    count, peak = peak_arrow_memory(path)
    assert count == n
    assert 0 < peak < table.nbytes / 10, (peak, table.nbytes)


# A store from a saved dataset -------------------------------------------------------------------


def test_a_store_built_from_a_saved_dataset_traces_as_one_built_from_jsonl(
        world, store, tmp_path):
    """The world corpus as a saved dataset (renamed columns, three files) and the world queries
    as Parquet: ``index build`` and ``trace`` rank exactly as the store of the JSONL corpus
    does, and the store reads each passage's text back from the dataset's files."""
    rows = [{"doc_id": r["id"], "body": r["text"]} for r in world["rows"]]
    saved = write_as("saved", rows, tmp_path / "corpus")
    queries = [json.loads(line) for line in Path(world["queries"]).read_text().splitlines()]
    questions = tmp_path / "queries.parquet"
    pq.write_table(pa.Table.from_pylist([{"qid": q["id"], "question": q["prompt"],
                                          "answer": q["target"]} for q in queries]), questions)
    columns = ["--query-id-field", "qid", "--query-prompt-field", "question",
               "--query-target-field", "answer"]
    built = tmp_path / "store"
    assert main(["index", "build", "--model", world["model"], "--optimizer-state",
                 world["optimizer"], "--corpus", str(saved), "--id-field", "doc_id",
                 "--text-field", "body", "--queries", str(questions), *columns,
                 "--out", str(built), "--dim", "256", "--train-examples", "40",
                 "--batch-tokens", "512", "--shard-rows", "16", "-q"]) == 0
    ours, theirs = tmp_path / "ours.jsonl", tmp_path / "theirs.jsonl"
    assert main(["trace", "--index", str(built), "--queries", str(questions), *columns,
                 "--out", str(ours), "-q"]) == 0
    assert main(["trace", "--index", store.out, "--queries", world["queries"],
                 "--out", str(theirs), "-q"]) == 0
    mine = [json.loads(line) for line in ours.read_text().splitlines()]
    reference = [json.loads(line) for line in theirs.read_text().splitlines()]
    assert [r["doc_ids"] for r in mine] == [r["doc_ids"] for r in reference]
    for a, b in zip(mine, reference, strict=True):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)
    meta = json.loads((tmp_path / "ours.jsonl.meta.json").read_text())
    assert meta["queries_columns"] == {"id": "qid", "prompt": "question", "target": "answer"}
    from factrace.store.encodings import EncodingStore

    (table,) = EncodingStore.open(built).locations()
    assert len(table.files) == 3
    assert table.find(rows[7]["doc_id"]).text == rows[7]["body"]
