"""compare's ladder: variants that differ only in damping share R's eigendecomposition."""

import factrace.evaluate.compare as compare
from factrace.data.corpus import iter_corpus
from factrace.data.io import read_queries
from factrace.evaluate.compare import CompareConfig, ladder_rankings
from factrace.model.load import load_model
from factrace.model.optimizer_state import load_optimizer_state


def _ladder(world, variants):
    cfg = CompareConfig(world["model"], world["optimizer"], world["corpus"], world["queries"],
                        qrels="", out="", top_k=5, variants=variants, progress=False,
                        encoder_options={"dim": 64, "train_examples": 16})
    loaded = load_model(world["model"], "cpu", "float32")
    state = load_optimizer_state(world["optimizer"], loaded.model)
    passages = list(iter_corpus(world["corpus"]))
    return ladder_rankings(cfg, loaded, state, passages, read_queries(world["queries"]),
                           len(passages))


def test_shared_decomposition_ranks_as_separate_fits(world, monkeypatch):
    calls = []
    original = compare.decompose

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(compare, "decompose", counting)
    together = _ladder(world, ("trackstar-train", "trackstar", "trackstar-paper"))
    assert calls == ["train", "mixed"]  # trackstar-paper reused trackstar's decomposition
    for name in ("trackstar", "trackstar-paper", "trackstar-train"):
        alone = _ladder(world, (name,))[name]
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
    got = ladder_rankings(cfg, loaded, None, passages, queries, len(passages))
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
