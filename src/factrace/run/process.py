"""Process-wide settings for a long batch run (the ``factrace`` command, Ray workers).

Keep freed memory: PyTorch's CPU tensors come from glibc's malloc, which serves blocks above a
threshold with ``mmap`` and hands them back to the kernel when freed, so every batch faults its
activations in afresh, a page at a time (about 1.2 million page faults for one 70k-token index
build). Told to keep freed memory (no ``mmap`` for large blocks, trim the heap only above 2 GiB
of free space), malloc reuses the same pages batch after batch; peak memory grows by 5-8%
(benchmarks/README.md). Elsewhere than glibc this does nothing.

Collect cyclic garbage less often: loading transformers and a model creates millions of
objects, and Python's default thresholds run hundreds of full collections over them (0.5 s of
a 10 s index build). A run like this makes few reference cycles, so larger thresholds cost
little memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Tune glibc malloc for this process; ``False`` where there is no glibc ``mallopt``."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 256 << 20))
    return all(mallopt(param, value) == 1 for param, value in settings)


GC_THRESHOLDS = (100_000, 50, 100)


def collect_garbage_less_often() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


def tune_process() -> None:
    """Both settings, for a process that runs one long batch job."""
    keep_freed_memory()
    collect_garbage_less_often()
