"""compare's ladder: one encoding of the corpus per optimizer correction, every rung scored
from it exactly as scan scores that rung on its own."""

import pytest

import factrace.evaluate.compare as compare
from factrace.config import variant_config
from factrace.data.corpus import iter_corpus
from factrace.data.io import read_queries
from factrace.evaluate.compare import CompareConfig, ladder_rankings
from factrace.model.load import load_model
from factrace.model.optimizer_state import load_optimizer_state
from factrace.run.scan import ScanConfig, scan

OPTIONS = {"dim": 64, "train_examples": 16}


def _ladder(world, variants, folder, **extra):
    cfg = CompareConfig(world["model"], world["optimizer"], world["corpus"], world["queries"],
                        qrels="", out="", top_k=5, variants=variants, progress=False,
                        encoder_options=OPTIONS, **extra)
    loaded = load_model(world["model"], "cpu", "float32")
    state = load_optimizer_state(world["optimizer"], loaded.model)
    return ladder_rankings(cfg, loaded, state, read_queries(world["queries"]), folder)


def test_rungs_share_one_encoding_per_correction_and_rank_as_separate_fits(world, tmp_path,
                                                                            monkeypatch):
    builds = []
    original = compare.build_index

    def counting(job):
        builds.append((job.encoder.second_moment, job.encoder.hessian))
        return original(job)

    monkeypatch.setattr(compare, "build_index", counting)
    together = _ladder(world, ("trackstar-train", "trackstar", "trackstar-paper"),
                       tmp_path / "together")
    assert builds == [("factored", "train")]  # the three rungs read one encoding
    for name in ("trackstar", "trackstar-paper", "trackstar-train"):
        alone = _ladder(world, (name,), tmp_path / name)[name]
        assert [r.doc_ids for r in together[name]] == [r.doc_ids for r in alone]
        assert [r.scores for r in together[name]] == [r.scores for r in alone]
    # the two dampings do give different encodings
    assert ([r.scores for r in together["trackstar"]]
            != [r.scores for r in together["trackstar-paper"]])


def test_compare_without_optimizer_state_estimates_v(world, tmp_path):
    """--second-moment estimate: the corrected variants use V estimated from the corpus."""
    import pytest

    from factrace.errors import FactraceError

    cfg = CompareConfig(world["model"], None, world["corpus"], world["queries"], qrels="",
                        out="", top_k=5, variants=("grad-cos", "grad-cos+opt"), progress=False,
                        encoder_options={"dim": 64, "train_examples": 16},
                        second_moment="estimate")
    loaded = load_model(world["model"], "cpu", "float32")
    passages = list(iter_corpus(world["corpus"]))
    queries = read_queries(world["queries"])
    got = ladder_rankings(cfg, loaded, None, queries, tmp_path / "encodings")
    # the reference: an encoder that estimates V itself, on the same sample
    from factrace.config import variant_config
    from factrace.encode.encoder import Encoder
    from factrace.run.fit import sample_passages

    enc = Encoder(loaded, variant_config("grad-cos+opt", dim=64, second_moment="estimate"))
    enc.fit_second_moment(enc.tokenize_passages(sample_passages(world["corpus"], len(passages),
                                                                enc.config.estimate_examples)))
    ids, psi = enc.encode_passages(passages)
    _, q = enc.encode_queries(queries)
    best = (q @ psi.T).topk(5, dim=1)
    for ranking, idx in zip(got["grad-cos+opt"], best.indices.tolist(), strict=True):
        assert ranking.doc_ids == [ids[i] for i in idx]
    assert [r.doc_ids for r in got["grad-cos"]] != [r.doc_ids for r in got["grad-cos+opt"]]
    with pytest.raises(FactraceError, match="--second-moment estimate"):
        compare.compare(CompareConfig(world["model"], None, world["corpus"], world["queries"],
                                      world["queries"], str(tmp_path / "out")))


RUNGS = ("grad-dot", "grad-cos", "grad-cos+opt", "trackstar-train", "trackstar",
         "trackstar-paper")


@pytest.fixture(scope="module")
def ladder(world, tmp_path_factory):
    return _ladder(world, RUNGS, tmp_path_factory.mktemp("ladder"))


@pytest.mark.parametrize("name", RUNGS)
def test_every_rung_ranks_as_scan_ranks_it(world, ladder, name):
    """The ladder's rungs come from one shared encoding per correction; each equals its own
    scan (opponents included)."""
    got = ladder[name]
    want = scan(ScanConfig(model=world["model"], corpus=world["corpus"],
                           optimizer_state=world["optimizer"], queries=world["queries"],
                           top_k=5, progress=False,
                           encoder=variant_config(name, **OPTIONS))).rankings
    for g, w in zip(got, want, strict=True):
        assert g.query_id == w.query_id and g.doc_ids == w.doc_ids
        # both store float16 rows (here rotated p, there unit rows): 2^-11 relative each
        assert g.scores == pytest.approx(w.scores, rel=2e-3, abs=1e-4)
        assert g.opponent_ids == w.opponent_ids
