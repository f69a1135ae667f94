"""``--scores-out``: every (query, passage) score of scan and trace, equal to the rankings' own
scores; refused up front when too large; read back with clear errors."""

import numpy as np
import pytest

import factrace.run.scan as scan_module
from factrace.errors import FactraceError
from factrace.run.scan import ScanConfig, scan
from factrace.run.tracer import TraceConfig, trace
from factrace.search.full import FullScores, read_scores, write_scores
from factrace.store.encodings import EncodingStore


def _by_doc(ranking):
    return dict(zip(ranking.doc_ids, ranking.scores, strict=True))


@pytest.mark.parametrize("train_examples", [1000, 40])  # the R_train rows reused, or re-encoded
def test_scan_and_trace_write_every_score(world, store, tmp_path, train_examples):
    path = tmp_path / "scan.npz"
    encoder = store.encoder.replace(train_examples=train_examples)
    res = scan(ScanConfig(model=world["model"], corpus=world["corpus"], queries=world["queries"],
                          optimizer_state=world["optimizer"], top_k=1000, encoder=encoder,
                          shard_rows=16, progress=False, scores_out=str(path)))
    full = read_scores(path)
    assert full.query_ids == [r.query_id for r in res.rankings]
    assert full.scores.dtype == np.float32
    assert sorted(full.doc_ids) == sorted(res.rankings[0].doc_ids)  # every row, once
    assert full.doc_ids == list(EncodingStore.open(store.out).ids)  # in corpus row order
    for i, ranking in enumerate(res.rankings):  # top-k over everything = every score
        expected = _by_doc(ranking)
        got = dict(zip(full.doc_ids, full.scores[i].tolist(), strict=True))
        assert got == pytest.approx(expected, abs=1e-6)
    assert res.metadata.get("fit", {}).get("corpus_pass") == (
        "reused the R_train pass's encodings" if train_examples == 1000 else None)
    if train_examples != store.encoder.train_examples:
        return
    traced_path = tmp_path / "trace.npz"
    trace(TraceConfig(index=store.out, queries=world["queries"], top_k=3, progress=False,
                      scores_out=str(traced_path)))
    traced = read_scores(traced_path)
    assert traced.doc_ids == full.doc_ids and traced.query_ids == full.query_ids
    np.testing.assert_allclose(traced.scores, full.scores, atol=1e-5)


def test_too_large_scores_are_refused_before_any_work(world, store, tmp_path, monkeypatch):
    def no_fit(*args, **kwargs):
        raise AssertionError("fitted although the scores file was refused")

    monkeypatch.setattr(scan_module, "fit", no_fit)
    path = tmp_path / "big.npz"
    with pytest.raises(FactraceError, match=r"take .* above the limit of .*--scores-max-gib"):
        scan(ScanConfig(model=world["model"], corpus=world["corpus"], queries=world["queries"],
                        optimizer_state=world["optimizer"], encoder=store.encoder,
                        progress=False, scores_out=str(path), scores_max_gib=1e-9))
    with pytest.raises(FactraceError, match="exact search"):
        trace(TraceConfig(index=store.out, queries=world["queries"], progress=False,
                          faiss="IVF4,Flat", scores_out=str(path)))
    assert not path.exists() and not list(tmp_path.iterdir())


def test_scores_file_round_trip_and_bad_files(tmp_path):
    full = FullScores(np.arange(6, dtype=np.float32).reshape(2, 3), ["q1", "q2"],
                      ["a", "b", "c#0"], "m")
    write_scores(tmp_path / "s.npz", full)
    back = read_scores(tmp_path / "s.npz")
    assert (back.query_ids, back.doc_ids, back.method) == (["q1", "q2"], ["a", "b", "c#0"], "m")
    np.testing.assert_array_equal(back.scores, full.scores)
    np.savez(tmp_path / "wrong.npz", scores=np.zeros((2, 2)), query_ids=np.array(["a", "b"]))
    with pytest.raises(FactraceError, match="missing doc_ids"):
        read_scores(tmp_path / "wrong.npz")
    np.savez(tmp_path / "shape.npz", scores=np.zeros((2, 2)), query_ids=np.array(["a", "b"]),
             doc_ids=np.array(["x"]))
    with pytest.raises(FactraceError, match=r"scores are \[2, 2\] but there are 2 query ids "
                                            r"and 1 doc ids"):
        read_scores(tmp_path / "shape.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(FactraceError, match="not a readable"):
        read_scores(tmp_path / "text.npz")
