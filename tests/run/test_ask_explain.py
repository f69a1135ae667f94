"""``ask`` and ``explain``: the model's own completion traced, and scores split token by token.

The per-token claims are checked against slow references: autograd one loss term at a time
with the dense Kronecker projection and a dense R⁻¹ built from its definition; the score as
``trace`` reports it; greedy generation as an argmax loop.
"""

import numpy as np
import pytest
import torch

from factrace.config import EncoderConfig
from factrace.data.io import read_queries
from factrace.data.records import Query
from factrace.data.tokenize import TokenizedExample, tokenize_query
from factrace.encode.encoder import Encoder
from factrace.encode.whitening import TrainBasis
from factrace.errors import FactraceError
from factrace.model.optimizer_state import OptimizerState, ParamMoment
from factrace.run import explain as explaining
from factrace.run.ask import answer_span, completion_query
from factrace.run.explain import TermProducts, loss_terms, token_pieces
from factrace.run.tracer import Tracer
from reference import (
    autograd_gradient,
    dense_projection,
    dense_r_inverse,
    fitted_correction,
    rotate,
)
from tiny import tiny_loaded

REL = 1e-4


@pytest.fixture(scope="module")
def tracer(store):
    return Tracer.open(store.out)


@pytest.fixture(scope="module")
def queries(world):
    return read_queries(world["queries"])


def _sum(tokens):
    return sum(t["contribution"] for t in tokens)


# loss terms ------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_terms_sum_to_the_projection(arch, reduction):
    """p = Σ_t p_t: the one-hot copies of an example add up to the example's own projection
    (whatever the loss reduction; gpt2's Conv1D keeps its weights transposed)."""
    loaded = tiny_loaded(arch)
    enc = Encoder(loaded, EncoderConfig(dim=64, second_moment="none", hessian="none",
                                        loss_reduction=reduction, batch_tokens=10_000))
    examples = [TokenizedExample("a", (1, 5, 9, 14, 20, 7), (0, 1, 1, 0, 1, 1)),
                TokenizedExample("b", (1, 30, 31), (0, 0, 1))]
    _, whole = enc.example_vectors(examples)
    for terms, p in zip(loss_terms(enc, examples), whole, strict=True):
        assert terms.positions == [j for j, m in enumerate(terms.example.loss_mask) if m]
        assert torch.allclose(terms.vectors.sum(0), p, rtol=1e-4, atol=1e-6 * p.abs().max())
        # and each term is its own token's: no two terms are the same vector
        assert torch.linalg.matrix_rank(terms.vectors) == len(terms.positions)


def _random_state(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return OptimizerState({name: ParamMoment(exp_avg_sq=(torch.rand(p.shape, generator=g) + 0.1)
                                             * 1e-4) for name, p in model.named_parameters()},
                          "test")


def _random_basis(spans, seed=0):
    g = torch.Generator().manual_seed(seed)
    vectors = [torch.linalg.qr(torch.randn(size, size, generator=g, dtype=torch.float64))[0]
               .float() for _, size in spans]
    return TrainBasis(list(spans), [np.ones(size) for _, size in spans], vectors, 10)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "mixtral"])  # mixtral: weights by expert
@pytest.mark.parametrize("second_moment, projection, reduction", [
    ("factored", "kronecker", "sum"), ("exact", "kronecker", "mean"),
    ("none", "kronecker", "sum"), ("factored", "exact", "sum"), ("exact", "exact", "mean")])
def test_forward_mode_products_equal_each_terms_projection(arch, second_moment, projection,
                                                           reduction):
    """⟨w, p_t⟩ by one forward pass with dual numbers equals the product with each term's own
    projection (one-hot loss masks), whatever the correction, projection, reduction and
    rotation (a random orthogonal basis per block of the projection)."""
    loaded = tiny_loaded(arch)
    enc = Encoder(loaded, EncoderConfig(dim=64 if projection == "kronecker" else None,
                                        second_moment=second_moment, hessian="none",
                                        projection=projection, loss_reduction=reduction,
                                        batch_tokens=10_000),
                  _random_state(loaded.model) if second_moment != "none" else None)
    if projection == "kronecker":  # (no projection means no R, whose basis is the identity)
        enc.basis = _random_basis([(b.offset, b.size) for b in enc.blocks])
    example = TokenizedExample("a", (1, 5, 9, 14, 20, 7, 33), (0, 1, 1, 0, 1, 1, 1))
    w = torch.randn(enc.dim, generator=torch.Generator().manual_seed(1))
    want = loss_terms(enc, [example])[0].vectors.double() @ w.double()
    got = TermProducts(enc)(example, w)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_token_pieces_rebuild_the_decoded_text(tracer):
    tok = tracer.encoder.loaded.tokenizer
    ids = tok("Ember was born in Orvane. café ü", add_special_tokens=True)["input_ids"]
    pieces = token_pieces(tok, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == tok.decode(ids, clean_up_tokenization_spaces=False)


# explain: sums ---------------------------------------------------------------------------------
def test_contributions_sum_to_the_score_trace_reports(tracer, queries):
    """For the top proponent of every query and the top opponent of half of them, traced as a
    set (their own R_eval): ``score`` is trace's, and each side's contributions sum to it."""
    rankings, meta = tracer.trace(queries, top_k=5)
    assert meta["whitening"]["r_eval"] == "these queries"
    checked = 0
    for n, (q, r) in enumerate(zip(queries, rankings, strict=True)):
        pairs = [(r.doc_ids[0], r.scores[0])]
        if n % 2:
            pairs.append((r.opponent_ids[0], r.opponent_scores[0]))
        for doc, score in pairs:
            e = tracer.explain(q, doc, queries=queries)
            assert e["score"] == pytest.approx(score, rel=1e-5)
            assert _sum(e["passage_tokens"]) == pytest.approx(score, rel=REL)
            assert _sum(e["query_tokens"]) == pytest.approx(score, rel=REL)
            assert e["remainder"]["passage"] == pytest.approx(
                e["score"] - _sum(e["passage_tokens"]), abs=1e-9)
            assert e["whitening"]["r_eval"] == "these queries"
            checked += 1
    assert checked == len(queries) + len(queries) // 2


def test_a_single_query_is_explained_with_the_default_task_as_traced_alone(tracer, queries):
    q = queries[3]
    (r,), meta = tracer.trace([q], top_k=3)
    assert meta["whitening"]["r_eval"] == "task default"
    for doc, score in zip(r.doc_ids, r.scores, strict=True):
        e = tracer.explain(q, doc)
        assert e["score"] == pytest.approx(score, rel=1e-5)
        assert e["whitening"]["r_eval"] == "task default" and "note" in e["whitening"]
        assert _sum(e["passage_tokens"]) == pytest.approx(score, rel=REL)
        assert _sum(e["query_tokens"]) == pytest.approx(score, rel=REL)


def test_passage_tokens_are_the_passage_and_query_tokens_the_target(tracer, queries, world):
    q = queries[0]
    (r,), _ = tracer.trace([q], top_k=1)
    doc = r.doc_ids[0]
    e = tracer.explain(q, doc)
    text = {row["id"]: row["text"] for row in world["rows"]}[doc.split("#")[0]]
    joined = "".join(t["token"] for t in e["passage_tokens"])
    assert joined in text and (doc.endswith("#1") or text.startswith(joined))
    assert "".join(t["token"] for t in e["query_tokens"]) == q.target


def test_windows_of_a_long_passage_are_explained(tracer, queries):
    windows = [d for d in tracer.store.ids if "#" in d]
    assert windows, "the world has passages longer than the context"
    for doc in windows[:2]:
        e = tracer.explain(queries[0], doc, queries=queries)
        assert _sum(e["passage_tokens"]) == pytest.approx(e["score"], rel=REL, abs=1e-6)
    base = windows[0].split("#")[0]
    first, second = (tracer.explain(queries[0], f"{base}#{n}", queries=queries) for n in (0, 1))
    assert first["passage_tokens"] != second["passage_tokens"]


# explain: brute force -----------------------------------------------------------------------------
def test_one_pair_against_autograd_per_token_and_a_dense_r_inverse(tracer, queries):
    """Every passage and query token's contribution from scratch: autograd of that token's
    loss alone, the encoder's correction applied to the weight gradient, the dense Kronecker
    projection, rotation in float64, and R⁻¹ a dense inverse of R's definition (R_eval from
    the six queries' own reference projections)."""
    enc = tracer.encoder
    rankings, _ = tracer.trace(queries, top_k=1)
    qi = 1
    q, doc = queries[qi], rankings[qi].doc_ids[0]
    e = tracer.explain(q, doc, queries=queries)

    transposed = {tm.name: tm.transposed for tm in enc.tracked}
    dense = dense_projection(enc)
    correct = fitted_correction(enc)

    def p_ref(example):
        grads = autograd_gradient(enc.loaded.model, example, list(transposed), transposed)
        p = sum(dense[n] @ correct(n, g).reshape(-1) for n, g in grads.items())
        return rotate(enc.basis, p)

    def one_hot(example, j):
        return TokenizedExample("x", example.input_ids,
                                tuple(int(k == j) for k in range(len(example))))

    examples = enc.tokenize_queries(queries)
    y = torch.stack([p_ref(x) for x in examples])
    r_inv = dense_r_inverse(enc.basis, y, e["whitening"]["lambda"], enc.config.damping)
    s = tracer.stored_row(tracer.row_index(doc)).double()
    yq = y[qi]
    qn, rn = (yq @ r_inv @ yq).sqrt(), (s @ r_inv @ s).sqrt()
    assert e["score"] == pytest.approx(float(yq @ r_inv @ s / qn / rn), rel=REL)

    passage = tracer.passage_examples([doc])[doc]
    positions = [j for j, m in enumerate(passage.loss_mask) if m]
    a = torch.stack([p_ref(one_hot(passage, j)) for j in positions])
    a = a / a.sum(0).norm()
    want = a @ r_inv @ yq / qn / rn
    got = torch.tensor([t["contribution"] for t in e["passage_tokens"]], dtype=torch.float64)
    assert [t["position"] for t in e["passage_tokens"]] == positions
    assert (got - want).abs().max() <= 2e-3 * want.abs().max()

    target = examples[qi]
    positions = [j for j, m in enumerate(target.loss_mask) if m]
    b = torch.stack([p_ref(one_hot(target, j)) for j in positions])
    want = b @ r_inv @ s / qn / rn
    got = torch.tensor([t["contribution"] for t in e["query_tokens"]], dtype=torch.float64)
    assert [t["position"] for t in e["query_tokens"]] == positions
    assert (got - want).abs().max() <= 1e-3 * want.abs().max()


def test_without_forward_mode_the_one_hot_terms_give_the_same(tracer, queries, monkeypatch):
    """A model whose operations lack forward-mode derivatives is explained from each term's
    projection instead, with the same numbers."""
    rankings, _ = tracer.trace(queries, top_k=1)
    q, doc = queries[2], rankings[2].doc_ids[0]
    forward = tracer.explain(q, doc, queries=queries)
    assert forward["per_token"] == "forward-mode"

    def unsupported(self, example, direction):
        raise NotImplementedError("no forward AD")

    monkeypatch.setattr(explaining.TermProducts, "__call__", unsupported)
    other = Tracer(tracer.store, tracer.encoder)
    fallback = other.explain(q, doc, queries=queries)
    assert fallback["per_token"] == "one-hot loss masks"
    for key in ("passage_tokens", "query_tokens"):
        got = [t["contribution"] for t in fallback[key]]
        want = [t["contribution"] for t in forward[key]]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-5 * max(map(abs, want)))


# ask ---------------------------------------------------------------------------------------------
def _greedy(model, ids, n, stop):
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            t = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if t in stop:
                break
            ids.append(t)
            out.append(t)
    return out


def test_ask_traces_the_greedy_completion_as_trace_would(tracer):
    prompt = "Alba was born in"
    a = tracer.ask(prompt, max_new_tokens=6, top_k=5, explain_top=2, span="whole")
    tok = tracer.encoder.loaded.tokenizer
    prompt_ids = tok(prompt)["input_ids"]
    completion = _greedy(tracer.encoder.loaded.model, prompt_ids, 6, {tok.eos_token_id})
    assert a.query.input_ids == tuple(prompt_ids + completion)
    assert a.query.loss_mask == (0,) * len(prompt_ids) + (1,) * len(completion)
    assert a.completion == tok.decode(completion) and a.completion.strip()
    # the same query asked through trace: the same ranking, from the default task's R_eval
    query = Query("ask-1", prompt, a.completion)
    assert tokenize_query(tok, query, 48) == a.query
    (r,), meta = tracer.trace([query], top_k=5)
    assert a.ranking.doc_ids == r.doc_ids and a.ranking.opponent_ids == r.opponent_ids
    assert a.ranking.scores == pytest.approx(r.scores, rel=1e-6)
    assert a.metadata["whitening"]["r_eval"] == "task default"
    assert "default task" in a.metadata["whitening"]["note"]
    assert a.ranking.extra["prompt"] == prompt and a.ranking.extra["completion"] == a.completion
    # proponent tokens: the two best explained, and their contributions sum to the scores
    assert list(a.proponent_tokens) == r.doc_ids[:2]
    for doc, score in zip(r.doc_ids[:2], r.scores[:2], strict=True):
        assert _sum(a.proponent_tokens[doc]) == pytest.approx(score, rel=REL)
    assert [t is None for t in a.ranking.extra["proponent_tokens"]] == [False] * 2 + [True] * 3


def test_a_span_traces_the_tokens_overlapping_it(tracer):
    whole = tracer.ask("Alba was born in", max_new_tokens=6, top_k=3, explain_top=0,
                       span="whole")
    tokens = whole.completion_tokens
    assert "".join(t["token"] for t in tokens) == whole.completion
    # from inside one token of several characters to inside a later one
    first, last = [i for i, t in enumerate(tokens) if t["end"] - t["start"] > 1][:2]
    start, end = tokens[first]["start"] + 1, tokens[last]["start"] + 1
    a = tracer.ask("Alba was born in", max_new_tokens=6, top_k=3, span=f"{start}:{end}",
                   explain_top=1)
    n = len(a.query) - len(tokens)
    traced = list(range(first, last + 1))
    assert a.query.loss_mask[n:] == tuple(int(i in traced) for i in range(len(tokens)))
    assert a.span == (start, end) and a.ranking.extra["span"] == [start, end]
    assert a.ranking.doc_ids != whole.ranking.doc_ids or \
        a.ranking.scores != pytest.approx(whole.ranking.scores)
    e = tracer.explain(a.query, a.ranking.doc_ids[0])
    assert [t["position"] for t in e["query_tokens"]] == [n + i for i in traced]
    assert _sum(e["query_tokens"]) == pytest.approx(a.ranking.scores[0], rel=REL)


def test_span_boundaries_select_exactly_the_overlapping_tokens(tracer):
    """Tokens overlapping [START, END): one ending at START or starting at END is left out."""
    tok = tracer.encoder.loaded.tokenizer
    prompt = tok("Alba was born in")["input_ids"]
    completion = tok(" vela tamsin orla", add_special_tokens=False)["input_ids"]
    tokens = completion_query(tok, prompt, completion, "x", None).tokens
    bounds = [(t["start"], t["end"]) for t in tokens]
    text = "".join(t["token"] for t in tokens)
    assert text == " vela tamsin orla" and len(bounds) >= 4

    def traced(a, b):
        return [i for i, t in enumerate(completion_query(tok, prompt, completion, "x",
                                                         (a, b)).tokens) if t["traced"]]

    for i in range(len(bounds)):
        for k in range(i, len(bounds)):
            assert traced(bounds[i][0], bounds[k][1]) == list(range(i, k + 1))
            if i < k and bounds[i][1] - bounds[i][0] > 1 and bounds[k][1] - bounds[k][0] > 1:
                assert traced(bounds[i][1] - 1, bounds[k][0] + 1) == list(range(i, k + 1))
    assert traced(0, None) == list(range(len(bounds)))
    assert traced(None, bounds[0][1]) == [0]


@pytest.mark.parametrize("text, answer", [
    (" Nololim. It signed", " Nololim."),
    (" Nololim signed\nIt", " Nololim signed"),
    ("\n\n Nololim, 3.5 km away. More", " Nololim, 3.5 km away."),  # decimals end nothing
    (" Mr. Smith was born. Then", " Mr. Smith was born."),  # nor titles
    (" born in the U.S. and e.g. here ", " born in the U.S. and e.g. here"),  # nor e.g., U.S.
    (' He said "yes." Then', ' He said "yes."'),  # closing quotes belong to the end
    (" Really?! Yes", " Really?!"),
    (" Nololim", " Nololim"),  # no end: all of it
    (" Nololim.", " Nololim."),
    ("\n \n", None),  # blank: no answer
])
def test_the_answer_is_the_completion_up_to_a_sentence_end_or_line_break(text, answer):
    span = answer_span(text)
    if answer is None:
        assert span is None
    else:
        assert text[span[0]:span[1]] == answer.lstrip()


def test_ask_traces_the_answer_by_default(tracer):
    """Without a span, the loss is on the tokens of the answer only (the rest of the completion
    is not traced), and the row records the span and how it was chosen."""
    a = tracer.ask("Alba was born in", max_new_tokens=10, top_k=3, explain_top=0)
    span = answer_span(a.completion)
    assert a.traced == "answer" and a.span == span
    assert a.ranking.extra["span"] == list(span) and a.ranking.extra["traced"] == "answer"
    traced = [t["start"] < span[1] and t["end"] > span[0] for t in a.completion_tokens]
    assert [t["traced"] for t in a.completion_tokens] == traced
    n = len(a.query) - len(a.completion_tokens)
    assert a.query.loss_mask == (0,) * n + tuple(map(int, traced))
    assert 0 < sum(traced) < len(traced), "the completion goes on after its answer"
    # the same prompt traced whole, or by the answer's characters given as a span
    whole = tracer.ask("Alba was born in", max_new_tokens=10, top_k=3, explain_top=0,
                       span="whole")
    assert whole.traced == "whole" and whole.span is None and sum(whole.query.loss_mask) == len(
        traced)
    assert whole.ranking.extra["span"] == [0, len(whole.completion)]
    given = tracer.ask("Alba was born in", max_new_tokens=10, top_k=3, explain_top=0,
                       span=f"{span[0]}:{span[1]}")
    assert given.traced == "span" and given.query == a.query
    assert given.ranking.scores == a.ranking.scores


def test_ask_reads_the_texts_of_the_passages_it_ranks_when_asked(tracer, world):
    a = tracer.ask("Alba was born in", max_new_tokens=4, top_k=4, explain_top=1, texts=True)
    ids = a.ranking.doc_ids + a.ranking.opponent_ids
    assert list(a.texts) == ids
    corpus = {row["id"]: row["text"] for row in world["rows"]}
    for doc in ids:
        whole = corpus[doc.split("#")[0]]
        assert a.texts[doc] == whole if "#" not in doc else a.texts[doc] in whole
    # an explained proponent's tokens end its text (the snippet is placed by them)
    best = a.ranking.doc_ids[0]
    assert a.texts[best].endswith("".join(t["token"] for t in a.proponent_tokens[best]))
    assert tracer.ask("Alba was born in", max_new_tokens=4, top_k=4, explain_top=0).texts == {}


@pytest.mark.parametrize("kept_ids", [True, False])
def test_an_answers_file_reads_back_as_the_queries_traced(tracer, tmp_path, kept_ids):
    """Each row of ``ask --out`` gives back its query: the same token ids and the same loss
    mask, whatever the span (the answer, a span given, the whole completion); rows without the
    completion's token ids (older files) are tokenised as a query's target is."""
    from factrace.data.io import ranking_row
    from factrace.data.jsonl import write_jsonl
    from factrace.run.ask import read_answers

    answers = [tracer.ask("Alba was born in", max_new_tokens=8, top_k=2, explain_top=0,
                          span=span) for span in ("answer", "2:5", "whole")]
    rows = []
    for n, a in enumerate(answers):
        row = {**ranking_row(a.ranking), "query_id": f"a{n}"}
        if not kept_ids:
            del row["completion_ids"]
        rows.append(row)
    write_jsonl(tmp_path / "asked.jsonl", rows)
    back = tracer.answer_queries(read_answers(str(tmp_path / "asked.jsonl")))
    assert [(q.input_ids, q.loss_mask) for q in back] == [(a.query.input_ids, a.query.loss_mask)
                                                          for a in answers]
    assert len({q.loss_mask for q in back}) == 3


def test_a_blank_completion_is_traced_whole(tracer):
    tok = tracer.encoder.loaded.tokenizer
    prompt = tok("Alba was born in")["input_ids"]
    blank = tok("\n \n", add_special_tokens=False)["input_ids"]
    c = completion_query(tok, prompt, blank, "x")
    assert c.text.strip() == "" and c.span is None and c.traced == "whole, blank answer"
    assert all(t["traced"] for t in c.tokens)
    # spans given as the command line gives them, spaces and all
    said = tok(" Tesk. Alba", add_special_tokens=False)["input_ids"]
    assert completion_query(tok, prompt, said, "x", " whole ").traced == "whole"
    c = completion_query(tok, prompt, said, "x", "answer ")
    assert c.traced == "answer" and c.text[c.span[0]:c.span[1]] == "Tesk."


def test_sampling_is_seeded_and_leaves_the_global_random_state(tracer):
    state = torch.get_rng_state()
    one = tracer.ask("Corin was born in", max_new_tokens=8, temperature=1.5, seed=7,
                     explain_top=0)
    two = tracer.ask("Corin was born in", max_new_tokens=8, temperature=1.5, seed=7,
                     explain_top=0)
    assert one.completion == two.completion
    assert torch.equal(torch.get_rng_state(), state)
    other = tracer.ask("Corin was born in", max_new_tokens=8, temperature=1.5, seed=8,
                       explain_top=0)
    greedy = tracer.ask("Corin was born in", max_new_tokens=8, explain_top=0)
    assert len({one.completion, other.completion, greedy.completion}) > 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt="   "), "is empty"),
    (dict(prompt="alba " * 40), "the context is 48 tokens"),
    (dict(prompt="Alba was born in", span="0:1000"), "outside the completion"),
    (dict(prompt="Alba was born in", span="4:2"), "outside the completion"),
    (dict(prompt="Alba was born in", span="x"), "expected START:END"),
    (dict(prompt="Alba was born in", span="all"), "or answer, or whole"),
    (dict(prompt="Alba was born in", max_new_tokens=0), "--max-new-tokens"),
    (dict(prompt="Alba was born in", temperature=-1.0), "--temperature"),
])
def test_bad_questions_are_refused(tracer, kwargs, message):
    with pytest.raises(FactraceError, match=message):
        tracer.ask(**kwargs)


def test_unknown_rows_and_queries_are_refused(tracer, queries):
    with pytest.raises(FactraceError, match="has no row 'nope'"):
        tracer.explain(queries[0], "nope")
    with pytest.raises(FactraceError, match="not among the queries"):
        tracer.explain(queries[0], "d1", queries=queries[1:])


def test_a_completion_that_ends_at_once_is_refused(store, eos_model):
    tracer = Tracer.open(store.out, model=eos_model)
    with pytest.raises(FactraceError, match="ended its completion at once"):
        tracer.ask("Alba was born in")
