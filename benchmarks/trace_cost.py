"""What query-time R costs: ``trace`` with R_eval fitted on its own queries, and with a saved
task, against a trace over the same rows with R fixed at build time (a plain product).

    python benchmarks/trace_cost.py --rows 100000 --dim 16384 --blocks 4 --queries 1,100,1000

A synthetic store (random rows with a decaying spectrum: the cost does not depend on where the
rows came from) of ``--rows`` float16 rows in ``--blocks`` diagonal blocks, R_train fitted on
2,048 of them. For each query count Q: the three searches alternate, ``--repeats`` rounds, and
the ratios are taken round by round. Query encoding is the same in every mode and is left out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from factrace.encode.hessian import RAccumulator
from factrace.encode.whitening import TaskWhitening, TrainBasis
from factrace.run.index import store_norms
from factrace.run.process import tune_process
from factrace.search.topk import exact_topk
from factrace.store.encodings import EncodingStore, StoreWriter


def synthetic_store(path: Path, rows: int, dim: int, spans, seed: int = 0) -> EncodingStore:
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(0, -1.5, dim)
    writer = StoreWriter.create_or_resume(path, {"model": "synthetic"}, dim)
    for start in range(0, rows, 8192):
        n = min(8192, rows - start)
        block = torch.randn(n, dim, generator=g) * scale
        block /= block.norm(dim=1, keepdim=True)
        writer.write_shard(writer.done_shards, [f"r{start + i}" for i in range(n)], block)
    writer.finish()
    return EncodingStore.open(path, verify=False)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=16384)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--queries", default="1,100,1000")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", default=None, help="where to write the synthetic store")
    args = ap.parse_args()
    tune_process()
    torch.set_num_threads(args.threads)
    size = args.dim // args.blocks
    spans = [(i * size, size) for i in range(args.blocks)]
    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    t = time.perf_counter()
    store = synthetic_store(Path(tmp.name) / "store", args.rows, args.dim, spans)
    print(f"store: {store.n_rows:,} rows x {store.dim:,} (float16, {args.blocks} blocks), "
          f"{time.perf_counter() - t:.0f} s to write", flush=True)
    acc = RAccumulator(spans)
    first = torch.from_numpy(np.asarray(store.shard_encodings(0)[:2048], np.float32))
    acc.add(first)
    basis = TrainBasis.fit(acc)
    g = torch.Generator().manual_seed(1)
    results = {}
    for n_queries in (int(q) for q in args.queries.split(",")):
        y = torch.randn(n_queries, args.dim, generator=g) * torch.logspace(0, -1.5, args.dim)
        y /= y.norm(dim=1, keepdim=True)  # on the rows' scale, so that λ is not degenerate
        task = TaskWhitening.fit(basis, "mixed", y, damping=10.0)
        fixed_q = task.apply_inverse(y)  # any fixed [Q, d] query matrix: a plain product
        t = time.perf_counter()
        norms = store_norms(store, task)
        norms_s = time.perf_counter() - t
        own = task.scorer(y, own=True)
        saved = task.scorer(y, row_norms=norms)
        rounds = []
        for _ in range(args.repeats):
            rounds.append({
                "fixed_s": timed(lambda: exact_topk(fixed_q, store, 10)),  # noqa: B023
                "own_s": timed(lambda: exact_topk(own, store, 10)),  # noqa: B023
                "task_s": timed(lambda: exact_topk(saved, store, 10)),  # noqa: B023
            })
        row = {
            "queries": n_queries, "lambda": round(task.lam, 3), "task_norms_s": round(norms_s, 1),
            "rounds": rounds,
            "own_over_fixed": [round(r["own_s"] / r["fixed_s"], 2) for r in rounds],
            "task_over_fixed": [round(r["task_s"] / r["fixed_s"], 2) for r in rounds],
        }
        results[n_queries] = row
        print(json.dumps(row), flush=True)
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
