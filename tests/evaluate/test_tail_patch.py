"""Tail-patch against a known answer, an exact restore, and a slow deep-copy reference."""

import copy
import math

import pytest
import torch
from trained_tiny import FACTS, FINAL_LR, UNRELATED

from factrace.data.batching import collate
from factrace.data.records import Passage, Query
from factrace.data.tokenize import tokenize_passage, tokenize_query
from factrace.errors import FactraceError
from factrace.evaluate.tail_patch import (
    TrainingState,
    passage_example,
    tail_patch,
    training_step,
)
from factrace.model.load import LoadedModel
from factrace.model.loss import forward_logits, per_example_loss, target_logprob
from factrace.model.optimizer_state import restore_adamw
from tiny import CharTokenizer

TEXTS = {**FACTS, **UNRELATED}
QUERIES = [
    Query("alice", "Alice was born in", " Paris"),
    Query("bob", "Bob was born in", " Tokyo"),
    Query("carol", "Carol was born in", " Lima"),
    Query("dave", "Dave was born in", " Oslo"),
]


def other_fact(query_id: str) -> str:
    return next(f for f in FACTS if f != query_id)


def rankings_fact_first() -> dict[str, list[str]]:
    return {q.id: [q.id, "apples", "rivers", other_fact(q.id)] for q in QUERIES}


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def optimizer_tensors(optimizer) -> list[tuple[int, str, torch.Tensor]]:
    sd = optimizer.state_dict()["state"]
    return [(pid, key, value.clone()) for pid, state in sorted(sd.items())
            for key, value in sorted(state.items()) if isinstance(value, torch.Tensor)]


def assert_same(before, after):
    assert before.keys() == after.keys() if isinstance(before, dict) else len(before) == len(after)
    pairs = before.items() if isinstance(before, dict) else enumerate(before)
    for key, value in pairs:
        other = after[key]
        if isinstance(value, tuple):
            assert value[:2] == other[:2]
            value, other = value[2], other[2]
        assert torch.equal(value, other), key


def test_fact_passage_raises_target_more_than_unrelated(trained):
    loaded, path = trained
    result = tail_patch(loaded, path, QUERIES, {q.id: list(TEXTS) for q in QUERIES}, TEXTS, k=10,
                        progress=False)
    deltas = {q: dict(pairs) for q, pairs in result.per_passage.items()}
    assert all(len(d) == len(TEXTS) for d in deltas.values())
    # Per query (a tiny model is noisy; over 16 seeds 63 of 64 queries had the fact on top).
    on_top = [q for q, d in deltas.items() if max(d, key=d.get) == q]
    assert len(on_top) >= 3, deltas
    assert all(deltas[q][q] > 0 for q in deltas)
    # On average over queries, by a wide margin (at least 2x over 16 seeds).
    fact = sum(d[q] for q, d in deltas.items()) / len(deltas)
    for doc_id in UNRELATED:
        assert fact > 1.5 * sum(d[doc_id] for d in deltas.values()) / len(deltas)
    other_fact = sum(max(v for k, v in d.items() if k in FACTS and k != q)
                     for q, d in deltas.items()) / len(deltas)
    assert fact > 1.5 * other_fact
    # A ranking that puts the fact first but patches only it scores higher than the unrelated one.
    only_fact = tail_patch(loaded, path, QUERIES, {q.id: [q.id] for q in QUERIES}, TEXTS, k=1,
                           progress=False)
    unrelated = tail_patch(loaded, path, QUERIES, {q.id: ["apples"] for q in QUERIES}, TEXTS, k=1,
                           progress=False)
    assert only_fact.mean > unrelated.mean
    assert result.lr == pytest.approx(FINAL_LR)
    assert result.seconds_per_query > 0


def test_aggregation_mean_over_passages_then_queries(trained):
    loaded, path = trained
    result = tail_patch(loaded, path, QUERIES, rankings_fact_first(), TEXTS, k=3, progress=False)
    per_query = {q: sum(d for _, d in pairs) / 3 for q, pairs in result.per_passage.items()}
    assert all(len(pairs) == 3 for pairs in result.per_passage.values())
    assert result.per_query == pytest.approx(per_query)
    values = list(per_query.values())
    mean = sum(values) / 4
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / 3 / 4)
    assert result.mean == pytest.approx(mean)
    assert result.stderr == pytest.approx(se)
    assert result.to_dict()["per_passage"]["alice"][0][0] == "alice"


def test_weights_and_requires_grad_restored_bit_for_bit(trained):
    loaded, path = trained
    before = weights(loaded.model)
    loaded.model.lm_head.weight.requires_grad_(False)
    try:
        tail_patch(loaded, path, QUERIES[:2], rankings_fact_first(), TEXTS, k=4, progress=False)
        assert not loaded.model.lm_head.weight.requires_grad
    finally:
        loaded.model.lm_head.weight.requires_grad_(True)
    assert_same(before, weights(loaded.model))
    assert all(p.grad is None for p in loaded.model.parameters())


def test_training_state_restores_weights_and_optimizer_exactly(trained):
    loaded, path = trained
    model = copy.deepcopy(loaded.model)
    twin = LoadedModel(model, CharTokenizer(), None)
    optimizer = restore_adamw(model, path)
    w0, s0 = weights(model), optimizer_tensors(optimizer)
    snapshot = TrainingState(optimizer)
    batch = collate([passage_example(twin, "alice", TEXTS)], 0)
    training_step(twin, optimizer, batch)
    w1, s1 = weights(model), optimizer_tensors(optimizer)
    assert not torch.equal(w0["model.layers.0.mlp.up_proj.weight"],
                           w1["model.layers.0.mlp.up_proj.weight"])
    assert s1[0][2].ne(s0[0][2]).any() or s1[1][2].ne(s0[1][2]).any()
    snapshot.restore()
    assert_same(w0, weights(model))
    assert_same(s0, optimizer_tensors(optimizer))
    # The same step from the restored state lands on the same weights.
    training_step(twin, optimizer, batch)
    assert_same(w1, weights(model))
    assert_same(s1, optimizer_tensors(optimizer))


def reference_delta(loaded, path, query, text, lr=None) -> float:
    """Slow and obviously correct: a deep copy of the model, a fresh optimizer, one step."""
    model = copy.deepcopy(loaded.model)
    optimizer = restore_adamw(model, path)
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    tokenizer = loaded.tokenizer
    q = collate([tokenize_query(tokenizer, query, 64)], 0)
    p = collate(tokenize_passage(tokenizer, Passage("x", text), 64), 0)
    before = math.exp(target_logprob(model, q).item())
    model.zero_grad()
    logits = forward_logits(model, p)
    per_example_loss(logits, p.input_ids, p.loss_mask, "mean").mean().backward()
    optimizer.step()
    return math.exp(target_logprob(model, q).item()) - before


@pytest.mark.parametrize("doc_id", ["alice", "rivers"])
def test_delta_equals_deep_copy_reference(trained, doc_id):
    loaded, path = trained
    query = QUERIES[0]
    # The passage comes second, so its step starts from a restored model and optimizer.
    ranking = ["bob", doc_id]
    result = tail_patch(loaded, path, [query], {query.id: ranking}, TEXTS, k=2, progress=False)
    for (got_id, got), want_id in zip(result.per_passage[query.id], ranking, strict=True):
        want = reference_delta(loaded, path, query, TEXTS[want_id])
        assert got_id == want_id
        assert got == pytest.approx(want, rel=1e-5, abs=1e-9)
        assert abs(want) > 1e-6


def test_lr_option_overrides_final_lr(trained):
    loaded, path = trained
    query = QUERIES[1]
    zero = tail_patch(loaded, path, [query], {query.id: ["bob"]}, TEXTS, k=1, lr=0.0,
                      progress=False)
    assert zero.lr == 0.0 and zero.mean == 0.0
    small = tail_patch(loaded, path, [query], {query.id: ["bob"]}, TEXTS, k=1, lr=1e-4,
                       progress=False)
    assert small.mean == pytest.approx(reference_delta(loaded, path, query, FACTS["bob"], 1e-4),
                                       rel=1e-5)


def test_n_queries_takes_the_first_in_file_order_and_k_caps(trained):
    loaded, path = trained
    result = tail_patch(loaded, path, QUERIES, rankings_fact_first(), TEXTS, k=10, n_queries=2,
                        progress=True)
    assert list(result.per_query) == ["alice", "bob"]
    assert [len(v) for v in result.per_passage.values()] == [4, 4]
    assert result.to_dict()["k"] == 10


def test_callable_passages_and_windows():
    from tiny import tiny_loaded

    loaded = tiny_loaded("llama")
    long_text = "".join(chr(ord("a") + i % 26) for i in range(150))
    windows = tokenize_passage(loaded.tokenizer, Passage("long", long_text), loaded.max_length)
    assert len(windows) == 3
    got = passage_example(loaded, "long#1", {"long": long_text}.__getitem__)
    assert got == windows[1]
    assert passage_example(loaded, "long", {"long": Passage("long", long_text)}).input_ids == \
        windows[0].input_ids
    with pytest.raises(FactraceError, match="long#7"):
        passage_example(loaded, "long#7", {"long": long_text})
    with pytest.raises(FactraceError, match="no text for passage 'nope'"):
        passage_example(loaded, "nope", {"long": long_text})


def test_user_errors(trained, tmp_path):
    loaded, path = trained
    with pytest.raises(FactraceError, match="no ranking"):
        tail_patch(loaded, path, QUERIES, {"alice": ["alice"]}, TEXTS, progress=False)
    with pytest.raises(FactraceError, match="not found"):
        tail_patch(loaded, tmp_path / "missing.pt", QUERIES, {}, TEXTS, progress=False)
    before = weights(loaded.model)
    with pytest.raises(FactraceError, match="no text"):
        tail_patch(loaded, path, QUERIES[:1], {"alice": ["alice", "ghost"]}, TEXTS,
                   progress=False)
    assert_same(before, weights(loaded.model))


def test_low_precision_weights_warn(trained):
    loaded, path = trained
    model = copy.deepcopy(loaded.model).to(torch.bfloat16)
    twin = LoadedModel(model, CharTokenizer(), None)
    with pytest.warns(UserWarning, match="float32"):
        tail_patch(twin, path, QUERIES[:1], {"alice": ["alice"]}, TEXTS, k=1, progress=False)


def test_without_optimizer_state_one_sgd_step_of_lr(trained):
    """No AdamW state saved: Δ of one plain SGD step, against a deep-copy reference."""
    loaded, _ = trained
    query = QUERIES[0]
    result = tail_patch(loaded, None, [query], {query.id: ["alice"]}, TEXTS, k=1, lr=0.05,
                        progress=False)
    model = copy.deepcopy(loaded.model)
    q = collate([tokenize_query(loaded.tokenizer, query, 64)], 0)
    p = collate(tokenize_passage(loaded.tokenizer, Passage("x", TEXTS["alice"]), 64), 0)
    before = math.exp(target_logprob(model, q).item())
    per_example_loss(forward_logits(model, p), p.input_ids, p.loss_mask, "mean").mean().backward()
    with torch.no_grad():
        for param in model.parameters():
            param -= 0.05 * param.grad
    want = math.exp(target_logprob(model, q).item()) - before
    assert result.mean == pytest.approx(want, rel=1e-5) and abs(want) > 1e-6
    assert result.step == "SGD" and result.lr == 0.05
    assert result.describe() == "one SGD step, learning rate 0.05 (no optimizer state)"
    with pytest.raises(FactraceError, match="--lr"):
        tail_patch(loaded, None, [query], {query.id: ["alice"]}, TEXTS, k=1, progress=False)
