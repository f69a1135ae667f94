"""Exact top-k throughput over a stored float16 encoding store vs a plain float32 matmul.

For each query count q, measures in one run:
  - search: ``exact_search`` (top-k and bottom-k) over an on-disk store of ``rows`` float16
    encodings of dimension ``dim`` (memory-mapped, page cache warm), and
  - matmul: ``torch.matmul`` of the same shapes, ``[q, dim] @ [dim, rows]``, with the encodings
    already in memory as float32 (no top-k, no conversion, no disk),
and prints both as multiply-adds per second (rows·dim·q / seconds, best of ``--repeats``) and
their ratio. The target is a ratio of at least 0.5.

On a machine whose cores are busy with other processes, OpenMP's spinning barriers stall at
each of the search's many per-chunk parallel regions (the plain matmul is one region), which
can cut the ratio several-fold; ``OMP_WAIT_POLICY=PASSIVE`` (set in the environment, for both
measurements) avoids that, as does ``--threads 1``.

    python benchmarks/search.py                    # rows=65536 dim=4096 q=16,256
    python benchmarks/search.py --rows 8192 --dim 65536 --queries 64
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from factrace.search import exact_search
from factrace.store import EncodingStore, StoreWriter


def build_store(path: Path, rows: int, dim: int, shard_rows: int, seed: int) -> EncodingStore:
    """A store of random unit rows, written shard by shard (bounded memory)."""
    writer = StoreWriter.create_or_resume(path, {"benchmark": str(seed)}, dim)
    generator = torch.Generator().manual_seed(seed)
    for index, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        x = torch.randn(n, dim, generator=generator)
        x /= x.norm(dim=1, keepdim=True)
        writer.write_shard(index, [str(i) for i in range(start, start + n)], x)
    writer.finish()
    return EncodingStore.open(path, verify=False)


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: page cache, allocator, thread pool
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--queries", default="16,256", help="comma-separated query counts")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--shard-rows", type=int, default=16384)
    parser.add_argument("--chunk-rows", type=int, default=None, help="default: the library's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    wait = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY={wait}; "
        f"rows={args.rows} dim={args.dim} "
        f"k={args.k} shard_rows={args.shard_rows} chunk_rows={args.chunk_rows or 'default'}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(Path(tmp) / "store", args.rows, args.dim, args.shard_rows, seed=0)
        dense = torch.cat([torch.from_numpy(np.array(e)).float() for _, e in store.iter_shards()])
        print(f"{'q':>5} {'search MAC/s':>13} {'matmul MAC/s':>13} {'ratio':>6}")
        for q in [int(v) for v in args.queries.split(",")]:
            queries = torch.randn(q, args.dim)
            queries /= queries.norm(dim=1, keepdim=True)
            macs = args.rows * args.dim * q
            search = best_time(
                lambda x=queries: exact_search(x, store, args.k, chunk_rows=args.chunk_rows),
                args.repeats,
            )
            matmul = best_time(lambda x=queries: torch.matmul(x, dense.T), args.repeats)
            print(f"{q:>5} {macs / search:13.3e} {macs / matmul:13.3e} {matmul / search:6.2f}")


if __name__ == "__main__":
    main()
