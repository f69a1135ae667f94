"""How many padded tokens the next batch may hold.

A fixed ``--batch-tokens`` stays fixed. Left automatic, the budget adapts to the memory this
process can use: after every batch the peak memory it took per padded token is measured (the
largest seen is kept) and the next budget is what fits in ``fill`` of that memory, at most twice
the last one. On a CUDA device it starts at 8192 tokens and grows to fill the device. On a CPU it
starts at 1024 tokens, never exceeds 8192 (larger batches buy no speed there), and the memory is
the process's resident set against what the machine (or its cgroup) has available, so a large
model's first batches cannot grow past the RAM and be killed by the kernel. Each pass that
encodes (the V estimate, R, the encodings) keeps its own budget: their bytes per token differ.
Whatever the setting, a batch that runs out of device memory is split in two and the budget
halved for the rest of the run (:meth:`TokenBudget.shrink`), so a run never fails for a batch
that could have been smaller.

Freed memory that the C heap keeps resident (glibc keeps it; ``factrace`` asks it to keep more,
:mod:`factrace.run.process`) would make that measure lie: a batch that reuses it grows the
resident set by less than it needs, and a later batch that cannot reuse it (another pass, other
shapes) then overshoots. So a CPU budget hands the free heap back to the kernel
(``malloc_trim``) before the first batch of each pass, and before any batch while the free heap
exceeds :data:`TRIM_SHARE` of the memory the process may use; the batches it measures then
start from what is really in use.

Measuring a batch's peak on a CPU resets the kernel's peak counter of the process, which is also
what ``getrusage`` and ``/usr/bin/time -v`` report as the maximum resident set: after an
adaptive CPU run they give the peak since the last batch began, not the run's. :func:`peak_rss`
keeps the run's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from contextlib import contextmanager
from pathlib import Path

import torch

START_TOKENS = 8192
MAX_TOKENS = 1 << 20
CPU_START_TOKENS, CPU_MAX_TOKENS = 1024, 8192
CPU_MARGIN = 1.25
"""On a CPU a batch is planned at this many times the dearest bytes per token seen: one pass's
batches differ in cost per token by their mix of lengths (the V estimate forms a gradient per
example, so short rows cost more a token), and a CPU cannot split a batch the kernel kills. On
SmolLM2-135M a batch cost up to 1.2 times the dearest before it (benchmarks/README.md)."""
TRIM_SHARE = 0.25
"""A CPU budget trims the C heap before a batch when its free bytes exceed this share of the
memory the process may use."""


class CudaMemory:
    """Memory readings of one CUDA device (what :class:`TokenBudget` needs, nothing more)."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self, first: bool = False) -> int:
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


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def _cgroup_room() -> int | None:
    """Bytes the cgroup (v2, or v1) still allows, or None without a limit."""
    for limit, current in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                           ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                            "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            raw = Path(limit).read_text().strip()
            if raw == "max" or int(raw) >= 1 << 60:
                return None
            return int(raw) - int(Path(current).read_text().strip())
        except (OSError, ValueError):
            continue
    return None


_peak_before_reset = 0
"""The largest peak resident set (bytes) read before the kernel's counter was last reset."""


def peak_rss() -> int | None:
    """This process's peak resident set so far, in bytes (Linux; ``None`` elsewhere), however
    often the CPU budget has reset the kernel's counter since."""
    try:
        return max(_peak_before_reset, _status_bytes("VmHWM"))
    except OSError:
        return None


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


class Heap:
    """The C heap (glibc): the free bytes it holds, and handing them back to the kernel.
    Elsewhere than glibc ≥ 2.33 it reports nothing free and trims nothing."""

    def __init__(self):
        self._mallinfo2 = self._trim = None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallinfo2, trim = libc.mallinfo2, libc.malloc_trim
        except (OSError, AttributeError):
            return
        mallinfo2.restype, mallinfo2.argtypes = _MallInfo2, []
        trim.restype, trim.argtypes = ctypes.c_int, [ctypes.c_size_t]
        self._mallinfo2, self._trim = mallinfo2, trim

    def free_bytes(self) -> int:
        """Bytes in the heap's free chunks (resident unless trimmed before)."""
        return int(self._mallinfo2().fordblks) if self._mallinfo2 else 0

    def trim(self) -> None:
        if self._trim:
            self._trim(0)


class CpuMemory:
    """Memory readings of this process on a CPU (Linux): resident set, its peak (reset per
    batch through ``/proc/self/clear_refs``), and what the machine or cgroup has available."""

    def __init__(self, heap: Heap | None = None):
        self.heap = heap or Heap()

    @staticmethod
    def supported() -> bool:
        try:
            _status_bytes("VmHWM")
            return os.access("/proc/self/clear_refs", os.W_OK)
        except OSError:
            return False

    def start(self, first: bool = False) -> int:
        """Before a batch (``first``: of a pass): the resident set it starts from, after
        handing the free heap back when it is the first or the free heap is large."""
        global _peak_before_reset
        _peak_before_reset = max(_peak_before_reset, _status_bytes("VmHWM"))
        if first or self.heap.free_bytes() > TRIM_SHARE * self.usable():
            self.heap.trim()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak resident set starts again from the present one
        return _status_bytes("VmRSS")

    def peak(self) -> int:
        return _status_bytes("VmHWM")

    def usable(self) -> int:
        """Bytes this process could hold: its resident set plus what is still available."""
        available = 0
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
        room = _cgroup_room()
        if room is not None:
            available = min(available, max(room, 0))
        return _status_bytes("VmRSS") + available

    def release(self) -> None:
        pass


class TokenBudget:
    """The token budget: call it for the next batch's budget."""

    def __init__(self, device: torch.device, tokens: int | None = None, *, fill: float = 0.85,
                 memory: CudaMemory | CpuMemory | None = None, margin: float | None = None):
        if tokens is not None and tokens < 1:
            raise ValueError("batch_tokens must be positive")
        cpu = device.type != "cuda"
        if memory is None:
            if not cpu:
                memory = CudaMemory(device)
            elif tokens is None and CpuMemory.supported():
                memory = CpuMemory()
        self.memory = memory
        self.adaptive = tokens is None and self.memory is not None
        start = CPU_START_TOKENS if cpu and self.adaptive else START_TOKENS
        self.tokens = tokens or start
        self.ceiling = CPU_MAX_TOKENS if cpu and self.adaptive else MAX_TOKENS
        self.fill = fill
        self.margin = margin if margin is not None else (CPU_MARGIN if cpu else 1.0)
        self.bytes_per_token = 0.0
        #: the largest peak a batch reached, as a share of the memory usable when it began
        self.peak_share = 0.0
        self.measured = 0  # batches measured so far
        #: the most padded tokens the memory measured so far allows (None: nothing measured)
        self.fitting: int | None = None

    def __call__(self) -> int:
        return self.tokens

    @contextmanager
    def measure(self, padded_tokens: int):
        """Around one batch: afterwards, the next budget from the memory this one took."""
        if not self.adaptive:
            yield
            return
        base = self.memory.start(first=self.measured == 0)
        usable = self.memory.usable()
        self.measured += 1
        yield
        peak = self.memory.peak()
        self.peak_share = max(self.peak_share, peak / max(usable, 1))
        used = max(peak - base, 1)
        self.bytes_per_token = max(self.bytes_per_token, used / max(padded_tokens, 1))
        room = self.fill * self.memory.usable() - base
        fits = int(room / (self.margin * self.bytes_per_token))
        self.fitting = fits
        self.tokens = max(1, min(self.ceiling, 2 * self.tokens, fits))

    def shrink(self, failed_tokens: int) -> None:
        """A batch of ``failed_tokens`` ran out of memory: never try that many again."""
        self.ceiling = max(1, min(self.ceiling, failed_tokens // 2))
        self.tokens = min(self.tokens, self.ceiling)
        if self.memory is not None:
            self.memory.release()
