"""The real-model benchmark's own arithmetic (benchmarks/real_quality.py, wordnet_world.py),
each against a slow, obviously correct reference."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "encode"))

from real_quality import CountSketch, Stepper, correction_vector  # noqa: E402
from test_capture import PASSAGES  # noqa: E402
from wordnet_world import display_name, fact_of, names  # noqa: E402

from factrace.config import EncoderConfig  # noqa: E402
from factrace.encode.encoder import Encoder  # noqa: E402
from tiny import tiny_loaded  # noqa: E402


def test_dividing_by_the_correction_vector_gives_the_uncorrected_gradient():
    loaded = tiny_loaded("llama")
    opts = dict(projection="exact", hessian="none", normalize=False, batch_tokens=10_000)
    corrected = Encoder(loaded, EncoderConfig(second_moment="estimate", **opts))
    examples = list(corrected.tokenize_passages(PASSAGES))
    corrected.fit_second_moment(examples)
    plain = Encoder(loaded, EncoderConfig(second_moment="none", **opts))
    got = dict(pair for ids, g in corrected.project(examples)
               for pair in zip(ids, g / correction_vector(corrected), strict=True))
    want = dict(pair for ids, g in plain.project(examples) for pair in zip(ids, g, strict=True))
    for key, g in want.items():
        assert torch.allclose(got[key], g, rtol=1e-4, atol=1e-6 * g.abs().max())


def test_count_sketch_is_a_signed_bucketing_and_unbiased():
    total = 70
    sketch = CountSketch(total, 16, window=20)
    s = torch.zeros(sketch.dim, total)  # the sketch as an explicit matrix
    s[sketch.bucket, torch.arange(total)] = sketch.sign
    assert (s.abs().sum(0) == 1).all()  # every weight lands in exactly one bucket, signed
    x, y = torch.randn(3, total), torch.randn(2, total)
    sx, sy = sketch(x, y)
    assert torch.allclose(sx, x @ s.T, atol=1e-5) and torch.allclose(sy, y @ s.T, atol=1e-5)
    a, b = torch.randn(total), torch.randn(total)
    est = [float(torch.stack(CountSketch(total, 16, seed, window=20)(a[None], b[None]))
                 .prod(0).sum()) for seed in range(3000)]
    mean, se = sum(est) / len(est), torch.tensor(est).std().item() / math.sqrt(len(est))
    assert abs(mean - float(a @ b)) < 4 * se


def test_the_adam_step_is_torch_adamw_from_that_state():
    loaded = tiny_loaded("llama")
    enc = Encoder(loaded, EncoderConfig(second_moment="none", hessian="none"))
    names = [m.param_name for m in enc.tracked]
    v = {n: torch.rand_like(loaded.model.get_parameter(n)) * 1e-3 + 1e-5 for n in names}
    stepper = Stepper(loaded, v, adam_lr=3e-3)
    example = next(iter(enc.tokenize_passages(PASSAGES)))
    stepper.gradient(example)
    grads = {n: loaded.model.get_parameter(n).grad.clone() for n in names}
    stepper.apply("adam")
    ours = {n: loaded.model.get_parameter(n).detach().clone() for n in names}
    stepper.restore()
    params = [loaded.model.get_parameter(n) for n in names]
    opt = torch.optim.AdamW(params, lr=3e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    for n, p in zip(names, params, strict=True):
        p.grad = grads[n]
        opt.state[p] = {"step": torch.tensor(1e9), "exp_avg": torch.zeros_like(p),
                        "exp_avg_sq": v[n].clone()}
    before = {n: p.detach().clone() for n, p in zip(names, params, strict=True)}
    opt.step()
    for n, p in zip(names, params, strict=True):
        assert torch.allclose(ours[n], p, rtol=0, atol=1e-7)
        assert not torch.equal(before[n], p)
    stepper.restore()
    for n, p in zip(names, params, strict=True):
        assert torch.equal(p, before[n])


def test_target_probabilities_in_one_padded_batch_are_each_query_alone():
    from real_quality import target_probabilities

    from factrace.data.records import Query
    from factrace.data.tokenize import tokenize_query

    loaded = tiny_loaded("llama")
    queries = [Query("short", "Alice was born in", " Paris"),
               Query("long", "Where did Bob move after the long war? He moved to", " London"),
               Query("two", "Carol works as a", " software engineer")]
    examples = {q.id: tokenize_query(loaded.tokenizer, q, loaded.max_length) for q in queries}
    assert len({len(e) for e in examples.values()}) == 3  # the batch is padded
    batched = target_probabilities(loaded, examples)
    for qid, example in examples.items():
        alone = target_probabilities(loaded, {qid: example})[qid]
        assert 0 < alone < 1  # a random tiny model: p is tiny, so compare log p
        assert math.log(batched[qid]) == pytest.approx(math.log(alone), rel=1e-6)
    assert len(set(batched.values())) == 3


@pytest.mark.parametrize("name,gloss,want", [
    ("Claude Monet", "French impressionist painter (1840-1926)",
     ("nationality", "French", "Claude Monet was a", " French")),
    ("Richard Feynman", "United States physicist (1918-1988)",
     ("nationality", "United States", "Richard Feynman was an", " American")),
    ("Kabul", "the capital and largest city of Afghanistan; located in eastern Afghanistan",
     ("capital", "Afghanistan", "Kabul is the capital of", " Afghanistan")),
    ("Herat", "a city in northwestern Afghanistan on the site of several ancient cities",
     ("city", "Afghanistan", "Herat is a city in", " Afghanistan")),
    ("Basseterre", "the capital of Saint Kitts and Nevis",
     ("capital", "Saint Kitts and Nevis", "Basseterre is the capital of",
      " Saint Kitts and Nevis")),
    ("Ajax", "(Greek mythology) a mighty Greek warrior", None),
    ("Frank", "French diplomat", None),  # no years: not read as a person
])
def test_facts_read_from_glosses(name, gloss, want):
    assert fact_of(name, gloss) == want


def test_names_and_display_names():
    assert names("Reading: a city on the River Thames", "Reading")
    assert not names("Readington: a town", "Reading")
    assert not names("the Anglo-French war", "French")
    assert display_name(["Monet", "Claude Monet"]) == "Claude Monet"
    assert display_name(["Kabul", "capital of Afghanistan", "Afghan capital"]) == "Kabul"
    assert display_name(["Beethoven", "Ludwig van Beethoven"]) == "Ludwig van Beethoven"


def test_the_exact_step_scores_whole_gradient_cosines(tmp_path):
    """Its exact subset against cosines of the whole gradients computed here, and the sketched
    cosines against the exact ones (a sketch as wide as the gradient is nearly exact)."""
    import json
    from types import SimpleNamespace

    import numpy as np
    from real_quality import step_exact
    from test_capture import QUERIES

    passages = PASSAGES * 4
    with open(tmp_path / "corpus.jsonl", "w") as f:
        for i, p in enumerate(passages):
            f.write(json.dumps({"id": f"{p.id}{i}", "text": p.text + " x" * (i % 3)}) + "\n")
    with open(tmp_path / "queries.jsonl", "w") as f:
        for q in QUERIES:
            f.write(json.dumps({"id": q.id, "prompt": q.prompt, "target": q.target}) + "\n")
    loaded = tiny_loaded("llama")
    args = SimpleNamespace(sketch_dim=1 << 18, exact_queries=2, exact_tokens=60)
    info = step_exact(tmp_path, loaded, args)
    opts = dict(projection="exact", hessian="none", normalize=False, batch_tokens=10_000)
    enc = Encoder(loaded, EncoderConfig(second_moment="estimate", **opts))
    enc.fit_second_moment(enc.tokenize_passages(
        [type(passages[0])(f"{p.id}{i}", p.text + " x" * (i % 3)) for i, p in enumerate(passages)]))
    for kind, mode in (("v", enc), ("raw", Encoder(loaded, EncoderConfig(second_moment="none",
                                                                           **opts)))):
        ex = list(mode.tokenize_passages(
            [type(passages[0])(f"{p.id}{i}", p.text + " x" * (i % 3)) for i, p in enumerate(passages)]))
        g = dict(pair for ids, x in mode.project(ex) for pair in zip(ids, x.double(),
                                                                       strict=True))
        qg = dict(pair for ids, x in mode.project(mode.tokenize_queries(QUERIES))
                  for pair in zip(ids, x.double(), strict=True))
        want = np.array([[float(qg[q.id] @ g[e.id] / (qg[q.id].norm() * g[e.id].norm()))
                          for e in ex] for q in QUERIES])
        exact = np.load(tmp_path / f"exact-{kind}-subset.npy")
        assert np.allclose(exact, want[:2], atol=1e-5), kind
        sketched = np.load(tmp_path / f"exact-{kind}.npy")
        assert np.abs(sketched - want).max() < 0.05, kind
        assert info[kind]["sketch_max_abs_error"] == pytest.approx(
            np.abs(sketched[:2] - exact).max(), abs=1e-6)


def test_the_sweep_ranks_as_compare_does_with_that_setting(world, tmp_path):
    """Each η and λ of the sweep, scored from one encoding, against ``compare``'s ladder run
    with that damping or λ as an encoder option (its own encoding)."""
    import shutil

    from real_quality import SWEEP, step_sweep

    from factrace.data.io import read_queries, read_rankings
    from factrace.evaluate.compare import CompareConfig, ladder_rankings
    from factrace.model.load import load_model

    for name in ("corpus", "queries"):
        shutil.copy(world[name], tmp_path / f"{name}.jsonl")
    options = {"dim": 64, "train_examples": 16}
    step_sweep(tmp_path, world["model"], None, options)
    loaded = load_model(world["model"], "cpu", "float32")
    queries = read_queries(world["queries"])
    seen = set()
    for name in ("η=30", "λ=auto"):
        eta, lam, _ = SWEEP[name]
        cfg = CompareConfig(world["model"], None, world["corpus"], world["queries"], qrels="",
                            out="", variants=("trackstar",), baselines=(),
                            encoder_options={**options, "damping": eta, "lambda_": lam},
                            second_moment="estimate", tail_patch=False, progress=False)
        want = ladder_rankings(cfg, loaded, None, queries, tmp_path / f"ref-{eta}")["trackstar"]
        got = read_rankings(tmp_path / "probes" / name / "rankings" / "trackstar.jsonl")
        assert [r.doc_ids for r in got] == [r.doc_ids for r in want], name
        assert [s for r in got for s in r.scores] == pytest.approx(
            [s for r in want for s in r.scores], abs=1e-5)
        seen.add(tuple(got[0].doc_ids))
    assert len(seen) == 2  # the two settings rank differently


def test_the_sweeps_other_r_eval_rank_as_trace_does_for_one_question_or_a_task(world, tmp_path):
    """``single``: each question traced alone on a store with no task (its own R_eval);
    ``heldout``: the even questions traced with the odd ones' task and the other way round."""
    import json
    import shutil

    from real_quality import step_sweep

    from factrace.config import variant_config
    from factrace.data.io import read_rankings
    from factrace.run.index import IndexConfig, TaskConfig, add_task, build_index
    from factrace.run.tracer import TraceConfig, trace

    for name in ("corpus", "queries"):
        shutil.copy(world[name], tmp_path / f"{name}.jsonl")
    options = {"dim": 64, "train_examples": 16}
    step_sweep(tmp_path, world["model"], None, options)
    store = str(tmp_path / "store")
    build_index(IndexConfig(model=world["model"], corpus=world["corpus"], out=store,
                            encoder=variant_config("trackstar", second_moment="estimate",
                                                   **options), progress=False))
    rows = [json.loads(line) for line in open(world["queries"])]

    def write(path, part):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
        return str(path)

    want = {"single λ=0.5": {}, "heldout λ=0.5": {}}
    for i, row in enumerate(rows):  # no task yet: a question alone is its own R_eval
        one = trace(TraceConfig(store, write(tmp_path / f"q{i}.jsonl", [row]), progress=False))
        assert one.metadata["whitening"]["r_eval"] == "these queries"
        want["single λ=0.5"][row["id"]] = one.rankings[0]
    for half, part in {"even": rows[0::2], "odd": rows[1::2]}.items():
        add_task(TaskConfig(store, write(tmp_path / f"{half}.jsonl", part), half,
                            progress=False))
    for half, other in (("even", "odd"), ("odd", "even")):
        for r in trace(TraceConfig(store, str(tmp_path / f"{half}.jsonl"), task=other,
                                   progress=False)).rankings:
            want["heldout λ=0.5"][r.query_id] = r
    for name, expected in want.items():
        got = read_rankings(tmp_path / "probes" / name / "rankings" / "trackstar.jsonl")
        assert len(got) == len(rows)
        for r in got:
            assert r.doc_ids == expected[r.query_id].doc_ids, name
            assert r.scores == pytest.approx(expected[r.query_id].scores, abs=1e-5), name


def test_v_for_the_adam_step_is_fitted_once_and_read_back_the_same(world, tmp_path):
    import shutil

    from real_quality import adam_second_moment

    from factrace.model.load import load_model

    shutil.copy(world["corpus"], tmp_path / "corpus.jsonl")
    loaded = load_model(world["model"], "cpu", "float32")
    fitted = adam_second_moment(tmp_path, loaded)
    assert (tmp_path / "v-estimate.pt").exists()
    (tmp_path / "corpus.jsonl").unlink()  # a second fit would need the corpus
    again = adam_second_moment(tmp_path, loaded)
    assert fitted.keys() == again.keys() and len(fitted) > 0
    for name, v in fitted.items():
        assert v.shape == loaded.model.get_parameter(name).shape
        assert torch.equal(v, again[name])
