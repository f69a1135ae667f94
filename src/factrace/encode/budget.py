"""How many padded tokens the next batch may hold.

A fixed ``--batch-tokens`` stays fixed. Left automatic, the budget is 8192 tokens on a CPU and, on
a CUDA device, grows from there to fill the device: after every batch the peak memory it took per
padded token is measured (the largest seen is kept) and the next budget is what fits in
``fill`` of the memory this process can use, at most twice the last one. Whatever the setting, a
batch that runs out of device memory is split in two and the budget halved for the rest of the
run (:meth:`TokenBudget.shrink`), so a run never fails for a batch that could have been smaller.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

START_TOKENS = 8192
MAX_TOKENS = 1 << 20


class CudaMemory:
    """Memory readings of one CUDA device (what :class:`TokenBudget` needs, nothing more)."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> int:
        """Reset the peak counter; bytes allocated now."""
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)

    def usable(self) -> int:
        """Bytes this process could hold: free on the device plus what its allocator caches."""
        free, _ = torch.cuda.mem_get_info(self.device)
        return free + torch.cuda.memory_reserved(self.device)

    def release(self) -> None:
        torch.cuda.empty_cache()


class TokenBudget:
    """The token budget: call it for the next batch's budget."""

    def __init__(self, device: torch.device, tokens: int | None = None, *, fill: float = 0.85,
                 memory: CudaMemory | None = None):
        if tokens is not None and tokens < 1:
            raise ValueError("batch_tokens must be positive")
        self.tokens = tokens or START_TOKENS
        self.ceiling = MAX_TOKENS
        self.fill = fill
        self.memory = memory or (CudaMemory(device) if device.type == "cuda" else None)
        self.adaptive = tokens is None and self.memory is not None
        self.bytes_per_token = 0.0

    def __call__(self) -> int:
        return self.tokens

    @contextmanager
    def measure(self, padded_tokens: int):
        """Around one batch: afterwards, the next budget from the memory this one took."""
        if not self.adaptive:
            yield
            return
        base = self.memory.start()
        yield
        used = max(self.memory.peak() - base, 1)
        self.bytes_per_token = max(self.bytes_per_token, used / max(padded_tokens, 1))
        room = self.fill * self.memory.usable() - base
        fits = int(room / self.bytes_per_token)
        self.tokens = max(1, min(self.ceiling, 2 * self.tokens, fits))

    def shrink(self, failed_tokens: int) -> None:
        """A batch of ``failed_tokens`` ran out of memory: never try that many again."""
        self.ceiling = max(1, min(self.ceiling, failed_tokens // 2))
        self.tokens = min(self.tokens, self.ceiling)
        if self.memory is not None:
            self.memory.release()
