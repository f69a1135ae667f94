"""Token budgets: fixed, filling a device (with fake memory readings), and running out of memory."""

import pytest
import torch
from test_capture import PASSAGES, QUERIES, random_state

from factrace.config import EncoderConfig
from factrace.data.batching import collate, token_budget_batches
from factrace.data.records import Passage
from factrace.data.tokenize import TokenizedExample
from factrace.encode.budget import START_TOKENS, TokenBudget
from factrace.encode.encoder import Encoder
from factrace.errors import FactraceError
from tiny import tiny_loaded

CPU = torch.device("cpu")


class FakeMemory:
    """A device where a batch takes ``base + per_token × tokens`` bytes at its peak."""

    def __init__(self, base, per_token, usable):
        self.base, self.per_token, self.usable_bytes = base, per_token, usable
        self.tokens = 0
        self.released = 0

    def start(self):
        return self.base

    def peak(self):
        return self.base + self.per_token * self.tokens

    def usable(self):
        return self.usable_bytes

    def release(self):
        self.released += 1


def _run(budget, memory, tokens):
    memory.tokens = tokens
    with budget.measure(tokens):
        pass


def test_fixed_and_cpu_budgets_do_not_move():
    fixed = TokenBudget(CPU, 100)
    auto = TokenBudget(CPU)
    for b in (fixed, auto):
        with b.measure(50):
            pass
    assert fixed() == 100 and auto() == START_TOKENS
    with pytest.raises(ValueError):
        TokenBudget(CPU, 0)


def test_automatic_budget_grows_to_fill_the_device_at_most_doubling():
    memory = FakeMemory(base=10_000, per_token=1_000, usable=200_000_000)
    budget = TokenBudget(torch.device("cuda"), memory=memory, fill=0.5)
    fits = int((0.5 * memory.usable_bytes - memory.base) / memory.per_token)
    seen = [budget()]
    for _ in range(8):
        _run(budget, memory, budget())
        seen.append(budget())
    for before, after in zip(seen[:-1], seen[1:], strict=True):
        assert after == min(2 * before, fits)
    assert seen[-1] == fits
    # the peak memory per token actually used never exceeds the share of the device allowed
    assert memory.base + memory.per_token * seen[-1] <= 0.5 * memory.usable_bytes


def test_out_of_memory_lowers_the_ceiling_for_good():
    memory = FakeMemory(base=0, per_token=10, usable=10**12)
    budget = TokenBudget(torch.device("cuda"), memory=memory)
    _run(budget, memory, budget())
    failed = budget()
    budget.shrink(failed)
    assert budget() == failed // 2 and memory.released == 1
    for _ in range(5):
        _run(budget, memory, budget())
        assert budget() <= failed // 2


def test_batches_follow_a_changing_budget():
    examples = [TokenizedExample(f"e{i}", [1] * 4, [True] * 4) for i in range(12)]
    limits = iter([8, 16, 4, 40])
    current = {"tokens": next(limits)}
    sizes = []
    for batch in token_budget_batches(examples, lambda: current["tokens"], pad_id=0):
        sizes.append(len(batch.ids))
        assert batch.input_ids.numel() <= current["tokens"]
        current["tokens"] = next(limits, 40)
    assert sizes == [2, 4, 1, 5]


def test_split_keeps_rows_and_order():
    examples = [TokenizedExample(f"e{i}", [i + 1] * (i + 1), [True] * (i + 1)) for i in range(5)]
    batch = collate(examples, pad_id=0)
    first, second = batch.split()
    assert first.ids + second.ids == batch.ids
    assert torch.equal(torch.cat([first.input_ids, second.input_ids]), batch.input_ids)
    assert torch.equal(torch.cat([first.loss_mask, second.loss_mask]), batch.loss_mask)
    with pytest.raises(ValueError):
        collate(examples[:1], pad_id=0).split()


def _fail_above(model, rows, where="forward"):
    """The first block raises the CUDA out-of-memory error for batches of more than ``rows``: in
    its forward, or in the backward (after every later block's gradients were captured)."""
    layer = model.model.layers[0]

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    if where == "forward":
        return layer.register_forward_pre_hook(
            lambda _m, args: oom() if args[0].shape[0] > rows else None)

    def hook(_module, _args, output):
        out = output[0] if isinstance(output, tuple) else output
        if out.shape[0] > rows:
            out.register_hook(lambda g: oom())
    return layer.register_forward_hook(hook)


@pytest.mark.parametrize("where", ["forward", "backward"])
@pytest.mark.parametrize("mode", ["factored", "estimate"])
def test_out_of_memory_splits_the_batch_and_changes_nothing(mode, where):
    loaded = tiny_loaded("llama")
    config = EncoderConfig(dim=64, hessian="none", second_moment=mode, batch_tokens=100_000)
    state = None
    if mode == "factored":
        state = random_state(loaded.model)
    passages = PASSAGES * 3
    passages = [Passage(f"{p.id}{i}", p.text) for i, p in enumerate(passages)]

    def run():
        enc = Encoder(loaded, config, state)
        sums = None
        if mode == "estimate":
            sums = enc.squared_gradient_sums(enc.tokenize_passages(passages))
            enc.set_estimated_second_moment(sums)
        ids, psi = enc.encode_passages(passages)
        _, q = enc.encode_queries(QUERIES)
        return enc, sums, ids, psi, q

    _, sums, ids, psi, q = run()
    handle = _fail_above(loaded.model, 2, where)
    try:
        enc, sums2, ids2, psi2, q2 = run()
    finally:
        handle.remove()
    assert enc.budget() < 100_000  # it ran out of memory, and learnt from it
    assert ids2 == ids
    torch.testing.assert_close(psi2, psi, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(q2, q, rtol=1e-4, atol=1e-6)
    if mode == "estimate":
        for name in sums.r:
            torch.testing.assert_close(sums2.r[name], sums.r[name], rtol=1e-6, atol=0)
            torch.testing.assert_close(sums2.c[name], sums.c[name], rtol=1e-6, atol=0)
            assert sums2.examples[name] == sums.examples[name] == len(passages)


def test_an_example_that_never_fits_is_a_clear_error():
    loaded = tiny_loaded("llama")
    enc = Encoder(loaded, EncoderConfig(dim=64, hessian="none", second_moment="none"))
    handle = _fail_above(loaded.model, 0)
    try:
        with pytest.raises(FactraceError, match="does not fit .* even alone"):
            enc.encode_passages(PASSAGES)
    finally:
        handle.remove()
