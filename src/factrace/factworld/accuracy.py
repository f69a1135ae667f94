"""Does the model know a fact? Greedy completion of the query prompt.

A query is answered correctly when greedy decoding from ``BOS + prompt`` produces the target's
tokens (``tok(target, add_special_tokens=False)``) first. That is checked in one teacher-forced
forward pass: greedy decoding emits the target iff the argmax at every target position is the
next target token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from factrace.data.records import Query


def query_token_ids(tokenizer, query: Query) -> tuple[list[int], int]:
    """``tok(prompt) + tok(target, no specials)`` and the number of target tokens."""
    prompt = tokenizer(query.prompt)["input_ids"]
    target = tokenizer(query.target, add_special_tokens=False)["input_ids"]
    return list(prompt) + list(target), len(target)


@torch.no_grad()
def greedy_hits(model, tokenizer, queries: Sequence[Query], batch_size: int = 64) -> list[bool]:
    """For each query, whether the model's greedy continuation of its prompt starts with its
    target."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hits: list[bool] = []
    try:
        for start in range(0, len(queries), batch_size):
            encoded = [query_token_ids(tokenizer, q) for q in queries[start : start + batch_size]]
            width = max(len(ids) for ids, _ in encoded)
            input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(encoded), width), dtype=torch.long)
            for row, (ids, _) in enumerate(encoded):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            predicted = logits.argmax(-1).cpu()  # [batch, tokens]: prediction of token t + 1
            for row, (ids, n_target) in enumerate(encoded):
                first = len(ids) - n_target
                guess = predicted[row, first - 1 : len(ids) - 1].tolist()
                hits.append(n_target > 0 and guess == ids[first:])
    finally:
        model.train(was_training)
    return hits


def fact_accuracy(model, tokenizer, queries: Sequence[Query], batch_size: int = 64) -> float:
    """Share of queries whose greedy continuation starts with the target (0.0 if none)."""
    hits = greedy_hits(model, tokenizer, queries, batch_size)
    return sum(hits) / len(hits) if hits else 0.0
