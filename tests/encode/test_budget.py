"""Token budgets: fixed, filling a device (with fake memory readings), and running out of memory."""

import pytest
import torch
from test_capture import PASSAGES, QUERIES, random_state

from factrace.config import EncoderConfig
from factrace.data.batching import collate, token_budget_batches
from factrace.data.records import Passage
from factrace.data.tokenize import TokenizedExample
from factrace.encode.budget import (
    CPU_MARGIN,
    CPU_MAX_TOKENS,
    CPU_START_TOKENS,
    START_TOKENS,
    TokenBudget,
)
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

    def start(self, first=False):
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


def test_a_fixed_budget_does_not_move():
    fixed = TokenBudget(CPU, 100, memory=FakeMemory(0, 1, 10))
    with fixed.measure(50):
        pass
    assert fixed() == 100
    with pytest.raises(ValueError):
        TokenBudget(CPU, 0)


@pytest.mark.parametrize("usable_gib", [3, 8, 64])
def test_a_cpu_budget_keeps_the_peak_under_the_memory_it_may_use(usable_gib):
    """A large model on a CPU (1 GiB resident, 2 MiB per padded token at the peak): the first
    batch is small, later ones grow only as far as the memory allows, never past 8192."""
    memory = FakeMemory(1 << 30, 2 << 20, usable_gib << 30)
    budget = TokenBudget(CPU, memory=memory, fill=0.85)
    seen = _batches(budget, memory, 12)
    assert seen[0][0] == CPU_START_TOKENS
    assert all(tokens <= CPU_MAX_TOKENS for tokens, _ in seen)
    assert all(peak <= 0.85 * memory.usable_bytes for _, peak in seen[1:])
    # it settles at the largest batch that would fit at CPU_MARGIN times the cost a token
    # (or at the CPU ceiling)
    dearer = FakeMemory(1 << 30, CPU_MARGIN * (2 << 20), usable_gib << 30)
    limit = _largest_fitting(dearer, 0.85 * memory.usable_bytes)
    assert seen[-1][0] == min(CPU_MAX_TOKENS, limit)


class Uneven(FakeMemory):
    """Each batch's cost per token is the next of ``costs``."""

    def __init__(self, costs, **kwargs):
        super().__init__(**kwargs)
        self.costs = iter(costs)

    def start(self, first=False):
        self.per_token = next(self.costs)
        return self.base


@pytest.mark.parametrize("margin, within", [(None, True), (1.0, False)])
def test_a_cpu_batch_dearer_than_any_before_still_peaks_within_the_share(margin, within):
    """Batches of one pass differ in cost per token (their lengths); on a CPU, where a batch
    the kernel kills cannot be split, the budget leaves room for one 20% dearer than any seen.
    Without the margin, that batch overshoots."""
    usable = 16 << 30
    memory = Uneven([2 << 20] * 8 + [int(1.2 * (2 << 20))], base=1 << 30, per_token=0,
                    usable=usable)
    budget = TokenBudget(CPU, memory=memory, fill=0.85, margin=margin)
    assert budget.margin == (CPU_MARGIN if margin is None else margin)
    seen = _batches(budget, memory, 9)
    assert seen[-1][0] == seen[-2][0] < CPU_MAX_TOKENS  # settled where the memory binds
    assert (seen[-1][1] <= 0.85 * usable) == within
    assert budget.peak_share == pytest.approx(max(p for _, p in seen) / usable)


def test_this_machine_gives_a_cpu_budget_that_adapts():
    from factrace.encode.budget import CpuMemory

    budget = TokenBudget(CPU)
    assert budget.adaptive == CpuMemory.supported()
    if budget.adaptive:
        assert budget() == CPU_START_TOKENS
        memory = CpuMemory()
        base = memory.start()
        import mmap

        block = mmap.mmap(-1, 64 << 20)  # fresh pages (the heap may hold freed ones resident)
        for offset in range(0, 64 << 20, 4096):
            block[offset] = 1  # touch every page: 64 MiB resident
        assert memory.peak() - base >= 60 << 20
        block.close()
        assert memory.usable() > memory.peak() - base


def test_peak_rss_survives_the_resets_that_getrusage_does_not():
    import mmap
    import resource

    from factrace.encode.budget import CpuMemory, peak_rss

    if not CpuMemory.supported():
        pytest.skip("no /proc/self/clear_refs here")
    memory = CpuMemory()
    base = memory.start()
    block = mmap.mmap(-1, 128 << 20)
    for offset in range(0, 128 << 20, 4096):
        block[offset] = 1  # 128 MiB resident, then handed back
    block.close()
    memory.start()  # the next batch: the kernel's peak counter starts again
    # what /usr/bin/time -v would report (the kernel's counter) has forgotten the block...
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 < base + (96 << 20)
    # ...the run's peak has not
    assert peak_rss() >= base + (120 << 20)


class FakeHeap:
    def __init__(self, free):
        self.free, self.trimmed = free, 0

    def free_bytes(self):
        return self.free

    def trim(self):
        self.trimmed += 1
        self.free = 0


def test_a_cpu_budget_trims_the_free_heap_at_a_pass_start_and_when_it_is_large():
    from factrace.encode.budget import TRIM_SHARE, CpuMemory

    if not CpuMemory.supported():
        pytest.skip("no /proc/self/clear_refs here")
    heap = FakeHeap(free=0)
    budget = TokenBudget(CPU, memory=CpuMemory(heap))
    assert budget.adaptive
    for _ in range(3):
        with budget.measure(10):
            pass
    assert heap.trimmed == 1  # the pass's first batch only: nothing free since
    heap.free = int(TRIM_SHARE * budget.memory.usable()) // 2
    with budget.measure(10):
        pass
    assert heap.trimmed == 1  # a little free heap is kept for the next batch to reuse
    heap.free = int(1.1 * TRIM_SHARE * budget.memory.usable())
    with budget.measure(10):
        pass
    assert heap.trimmed == 2
    TokenBudget(CPU, memory=CpuMemory(heap)).measure(10).__enter__()  # another pass
    assert heap.trimmed == 3


FREED_HEAP = """
import ctypes, ctypes.util, json
from factrace.encode.budget import CpuMemory, Heap, _status_bytes
from factrace.run.process import keep_freed_memory

assert keep_freed_memory()  # as the factrace command runs: freed blocks stay in the heap
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(8 << 20) for _ in range(32)]
for block in blocks:
    ctypes.memset(block, 1, 8 << 20)
for block in blocks:
    libc.free(block)
held, free = _status_bytes("VmRSS"), Heap().free_bytes()
again = CpuMemory().start()  # a later batch of the pass: a little free heap is kept
first = CpuMemory().start(first=True)  # a pass's first batch
print(json.dumps([held, free, again, first]))
"""


def test_freed_heap_memory_is_handed_back_before_a_pass_is_measured():
    """Freed blocks the C heap keeps resident would count as a batch's starting point (and a
    batch reusing them would seem to need less than it does): a pass's first batch starts
    from the memory really in use. In a child process: it changes malloc's settings."""
    import json
    import subprocess
    import sys

    from factrace.encode.budget import CpuMemory, Heap

    if not CpuMemory.supported() or Heap()._trim is None:
        pytest.skip("needs Linux and glibc")
    out = subprocess.run([sys.executable, "-c", FREED_HEAP], capture_output=True, text=True,
                         check=True).stdout
    held, free, again, first = json.loads(out)
    assert free >= 250 << 20  # 256 MiB freed, still in the heap...
    assert held - again < 64 << 20  # ...and resident
    assert held - first >= 200 << 20  # handed back before the first batch


def _largest_fitting(memory, limit):
    """The most tokens whose batch peaks within ``limit`` bytes on the fake device (bisection
    on the device itself, not on the budget's arithmetic)."""
    def fits(tokens):
        memory.tokens = tokens
        return memory.peak() <= limit

    low, high = 0, 1
    while fits(high):
        low, high = high, 2 * high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def _batches(budget, memory, n):
    """Run ``n`` batches of the budget's size; each one's (tokens, peak bytes)."""
    seen = []
    for _ in range(n):
        tokens = budget()
        _run(budget, memory, tokens)
        seen.append((tokens, memory.peak()))
    return seen


def test_automatic_budget_grows_to_fill_the_device_at_most_doubling():
    memory = FakeMemory(base=10_000, per_token=1_000, usable=200_000_000)
    budget = TokenBudget(torch.device("cuda"), memory=memory, fill=0.5)
    limit = 0.5 * memory.usable_bytes
    largest = _largest_fitting(memory, limit)
    assert largest > 8 * START_TOKENS  # room to grow over several batches
    seen = _batches(budget, memory, 12)
    sizes = [tokens for tokens, _ in seen]
    assert sizes[0] == START_TOKENS
    assert all(peak <= limit for _, peak in seen)  # no batch ever takes more than its share
    for before, after in zip(sizes[:-1], sizes[1:], strict=True):
        assert before <= after <= 2 * before  # grows, at most doubling per batch
    assert sizes[-1] == sizes[-2] == largest  # then fills the share, and stays there


def test_automatic_budget_keeps_the_costliest_tokens_seen():
    """Tokens cost more in some batches (longer rows): the budget is sized for the dearest."""
    memory = Uneven([1_000, 3_000] + [1_000] * 10, base=0, per_token=1_000, usable=10**9)
    budget = TokenBudget(torch.device("cuda"), memory=memory, fill=0.5)
    seen = _batches(budget, memory, 12)
    dearest = FakeMemory(base=0, per_token=3_000, usable=10**9)
    largest = _largest_fitting(dearest, 0.5 * memory.usable_bytes)
    assert [tokens for tokens, _ in seen][-1] == largest
    assert all(3_000 * tokens <= 0.5 * memory.usable_bytes for tokens, _ in seen[2:])


def test_automatic_budget_shrinks_when_the_device_fills_up():
    """Another process takes memory: the next batch still fits in the share of what is left."""
    memory = FakeMemory(base=1_000, per_token=100, usable=10**9)
    budget = TokenBudget(torch.device("cuda"), memory=memory, fill=0.5)
    _batches(budget, memory, 20)
    full = budget()
    memory.usable_bytes //= 8
    _batches(budget, memory, 1)
    assert budget() < full
    tokens, peak = _batches(budget, memory, 1)[0]
    assert peak <= 0.5 * memory.usable_bytes
    assert tokens == _largest_fitting(memory, 0.5 * memory.usable_bytes)


def test_encoder_batches_stay_within_a_fixed_budget():
    loaded = tiny_loaded("llama")
    enc = Encoder(loaded, EncoderConfig(dim=64, hessian="none", second_moment="none",
                                        batch_tokens=48))
    passages = [Passage(f"p{i}", "ab " * (i % 5) + "c") for i in range(20)]
    passages.append(Passage("long", "x" * 60))  # longer than the budget: a batch of its own
    widths = []
    handle = loaded.model.register_forward_pre_hook(
        lambda _m, args, kwargs: widths.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True)
    try:
        ids, _ = enc.encode_passages(passages)
    finally:
        handle.remove()
    assert sorted(ids) == sorted(p.id for p in passages)
    assert sum(rows for rows, _ in widths) == len(passages)
    assert len(widths) > 2 and (1, 61) in widths
    for rows, width in widths:
        assert rows * width <= 48 or rows == 1


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
    assert enc.budget()() < 100_000  # it ran out of memory, and learnt from it
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


def test_an_example_too_large_for_the_memory_is_a_one_line_error_naming_it():
    """Measured memory allows fewer tokens than one example has: refused before it runs."""
    loaded = tiny_loaded("llama")
    enc = Encoder(loaded, EncoderConfig(dim=64, hessian="none", second_moment="none"))
    memory = FakeMemory(0, 1 << 20, 40 << 20)  # 1 MiB per token, 40 MiB usable: ~34 tokens
    enc.budgets["encode"] = TokenBudget(CPU, memory=memory, fill=0.85)
    short = Passage("short", "Alba was born in Tesk.")
    long = Passage("long", " ".join(["Alba was born in Tesk."] * 20))
    memory.tokens = 30  # the short batch peaks at 30 MiB: more than 1 MiB per padded token
    enc.encode_passages([short])
    fitting = enc.budgets["encode"].fitting
    assert fitting is not None and fitting < len(long.text.split())
    with pytest.raises(FactraceError, match=r"^long(#0)? \(\d+ tokens\) needs about .* GiB"):
        enc.encode_passages([long])
