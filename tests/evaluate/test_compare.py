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
