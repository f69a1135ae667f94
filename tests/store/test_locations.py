"""Location tables against the slow reference (reading the corpus in order), window ids with
``#`` inside passage ids, changed corpus files, and the tables a store keeps through index add
and a resumed build."""

import gzip
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factrace.data.corpus import iter_corpus
from factrace.errors import FactraceError
from factrace.store.ids import first_repeat, passage_of, split_window, window_id
from factrace.store.locations import Locations

ROWS = [{"id": f"p{i}" if i % 5 else f"faq#{i}", "text": f"passage {i} " + "é" * (i % 7)}
        for i in range(40)]


def _jsonl(path: Path, rows, bom=False, blanks=False, gz=False) -> Path:
    lines = []
    for r in rows:
        lines.append(json.dumps(r, ensure_ascii=False))
        if blanks:
            lines.append("   ")
    data = ("\n".join(lines) + "\n").encode()
    data = (b"\xef\xbb\xbf" if bom else b"") + data
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _corpora(tmp_path: Path) -> dict[str, Path]:
    plain = _jsonl(tmp_path / "plain.jsonl", ROWS, bom=True, blanks=True)
    packed = _jsonl(tmp_path / "packed.jsonl.gz", ROWS, gz=True)
    table = pa.Table.from_pylist(ROWS)
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=7)
    arrow = tmp_path / "rows.arrow"
    with pa.ipc.new_file(arrow, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=9):
            writer.write_batch(batch)
    shards = tmp_path / "shards"
    shards.mkdir()
    _jsonl(shards / "a.jsonl", ROWS[:13])
    pq.write_table(pa.Table.from_pylist(ROWS[13:30]), shards / "b.parquet", row_group_size=5)
    _jsonl(shards / "c.jsonl.gz", ROWS[30:], gz=True)
    return {"jsonl": plain, "gzip": packed, "parquet": tmp_path / "rows.parquet",
            "arrow": arrow, "directory": shards}


@pytest.mark.parametrize("kind", ["jsonl", "gzip", "parquet", "arrow", "directory"])
def test_every_passage_is_found_where_the_corpus_has_it(tmp_path, kind):
    corpus = _corpora(tmp_path)[kind]
    table = Locations.build(str(corpus))
    reference = list(iter_corpus(corpus))
    assert len(table) == len(reference)
    for index, passage in enumerate(reference):
        assert table.position(passage.id) == index
        assert table.find(passage.id) == passage
    assert table.find("p999") is None and "faq#1" not in table
    back = Locations.from_saved(table.entry(), table.arrays())
    assert back.find(reference[-1].id) == reference[-1]


def test_a_changed_corpus_file_is_refused_with_its_name(tmp_path):
    corpus = _jsonl(tmp_path / "c.jsonl", ROWS)
    table = Locations.build(str(corpus))
    corpus.write_bytes(corpus.read_bytes().replace(b"passage 3", b"passage 4"))  # same size
    with pytest.raises(FactraceError, match=r"c\.jsonl: this corpus file changed.*same size"):
        table.find("p3")
    table = Locations.build(str(corpus))
    _jsonl(corpus, ROWS[:-1])
    with pytest.raises(FactraceError, match=r"c\.jsonl: this corpus file changed.*size") as e:
        table.find("p3")
    assert len(str(e.value).splitlines()) == 1
    corpus.unlink()
    with pytest.raises(FactraceError, match="not there"):
        Locations.from_saved(table.entry(), table.arrays()).find("p3")


def test_window_ids_and_passage_ids_with_a_hash():
    assert window_id("faq#2", 0) == "faq#2#0"
    assert split_window("faq#2#0") == ("faq#2", 0)
    assert split_window("faq#x") == ("faq#x", None)
    known = {"faq#2", "faq", "a#b"}
    assert passage_of("faq#2", known) == ("faq#2", None)  # its own passage, not faq's window 2
    assert passage_of("faq#2#1", known) == ("faq#2", 1)
    assert passage_of("faq#3", known) == ("faq", 3)
    assert passage_of("a#b", known.__contains__) == ("a#b", None)
    assert first_repeat(["a", "b#0", "c", "b#0", "a"]) == "b#0"
    assert first_repeat(["a", "a#0", "a#1"]) is None


def test_a_store_keeps_its_tables_through_add_and_resume(world, store_copy, tmp_path):
    from factrace.run.index import AddConfig, add_to_index
    from factrace.store import EncodingStore
    from factrace.store import manifest as mf

    extra = _jsonl(tmp_path / "extra.jsonl", [{"id": "x#1", "text": "Ivo was born in Tesk."},
                                              {"id": "x2", "text": "Juno was born in Brant."}])
    store = add_to_index(AddConfig(index=str(store_copy), corpus=str(extra), progress=False))
    tables = store.locations()
    assert [t.corpus for t in tables] == [str(Path(c).resolve()) for c in store.corpora]
    assert store.passage("x#1").text == "Ivo was born in Tesk."
    assert store.passage(world["rows"][5]["id"]).text == world["rows"][5]["text"]
    assert store.is_passage("x#1") and not store.is_passage("x")
    # an interrupted addition (killed after its shards, before its table): resumed, it records it
    manifest = mf.read_manifest(store_copy)
    manifest["locations"] = manifest["locations"][:1]
    manifest["complete"] = False
    manifest["additions"][-1]["complete"] = False
    (store_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FactraceError, match="1 of its 2 corpora"):
        EncodingStore(store_copy, manifest).locations()
    store = add_to_index(AddConfig(index=str(store_copy), corpus=str(extra), progress=False))
    assert store.passage("x2").text == "Juno was born in Brant."
    # a damaged table is refused by its checksum
    table = store_copy / store.manifest["locations"][1]["file"]
    shutil.copy(table, tmp_path / "keep")
    table.write_bytes(table.read_bytes()[:-3] + b"xyz")
    with pytest.raises(FactraceError, match="checksum"):
        EncodingStore.open(store_copy).locations()


def test_passages_are_read_through_the_table_not_by_scanning(store, monkeypatch):
    """explain/ask read a passage from the offset the store recorded: scanning a corpus fails."""
    import factrace.data.corpus as corpus_module
    from factrace.run.tracer import Tracer

    def no_scan(*args, **kwargs):
        raise AssertionError("the corpus was scanned")

    monkeypatch.setattr(corpus_module, "iter_corpus", no_scan)
    monkeypatch.setattr(corpus_module, "iter_located", no_scan)
    tracer = Tracer.open(store.out)
    last = tracer.store.ids[-1]
    example = tracer.passage_examples([last])[last]
    assert example.id == last and len(example.input_ids) > 1


def test_a_window_id_equal_to_another_passage_id_is_refused(world, tmp_path):
    from factrace.config import variant_config
    from factrace.run.index import IndexConfig, build_index

    long = " ".join(f"{w} was born in Tesk." for w in ["Alba", "Bruno", "Corin"] * 6)
    corpus = _jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": long},
                                          {"id": "a#1", "text": "Ivo was born in Tesk."}])
    cfg = IndexConfig(model=world["model"], corpus=str(corpus), out=str(tmp_path / "s"),
                      optimizer_state=world["optimizer"],
                      encoder=variant_config("trackstar", dim=64, batch_tokens=512),
                      progress=False)
    with pytest.raises(FactraceError, match="two rows of the store would have the id 'a#1'"):
        build_index(cfg)


def test_ids_whose_digests_collide_are_told_apart_by_reading(tmp_path, monkeypatch):
    import factrace.store.locations as locations

    monkeypatch.setattr(locations, "id_digest", lambda passage_id: 42)
    corpus = _jsonl(tmp_path / "c.jsonl", ROWS[:12])
    table = Locations.build(str(corpus))
    for index, row in enumerate(ROWS[:12]):
        assert table.position(row["id"]) == index
        assert table.find(row["id"]).text == row["text"]
    assert table.find("p999") is None
