"""Two-stage trace (``index approx`` + ``trace --candidates``): recall, latency and code size.

Store mode: a built store (a copy is made, the index is saved into the copy) and its queries.
Queries are encoded once; then, per C, every query is traced two-stage as one question and
compared with exact trace (share of queries whose top 10 equals exact's, recall@10), and the
first and second stage of one question are timed (median over the queries).

    python benchmarks/two_stage.py store --index STORE --queries Q.jsonl --candidates 50 100 200

Synthetic mode: N random unit rows of dimension D in a store (no model), the index trained
and added, then Q random questions timed (median) with R = identity:

    python benchmarks/two_stage.py synthetic --rows 1000000 --dim 1024 --candidates 100 1000

Prints one JSON object per C, and the build's seconds and bytes per passage of the codes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from factrace.run.index import ApproxConfig, build_approx
from factrace.search.approx import ApproxIndex, recall_at_k
from factrace.search.topk import exact_topk
from factrace.search.twostage import two_stage
from factrace.store.encodings import EncodingStore, StoreWriter


def _build(path: Path, spec: str | None) -> dict:
    t = time.perf_counter()
    entry = build_approx(ApproxConfig(index=str(path), spec=spec))
    entry["build_s"] = round(time.perf_counter() - t, 1)
    entry["code_bytes_per_row"] = (path / entry["file"]).stat().st_size / entry["rows"]
    return entry


def _one_question(scorer_of, store, approx, c, n_queries):
    firsts, seconds = [], []
    for i in range(n_queries):
        _, record = two_stage(scorer_of(i), store, approx, c, 10, [str(i)])
        firsts.append(record["first_stage_s"])
        seconds.append(record["second_stage_s"])
    return {"first_stage_ms": 1e3 * statistics.median(firsts),
            "second_stage_ms": 1e3 * statistics.median(seconds),
            "rows_read_last": record["rows_read"]}


def store_mode(args) -> None:
    from factrace.data.io import read_queries
    from factrace.run.tracer import Tracer

    work = Path(tempfile.mkdtemp(prefix="two_stage_"))
    path = work / "store"
    shutil.copytree(args.index, path, ignore=shutil.ignore_patterns(".write.lock"))
    print(json.dumps({"build": _build(path, args.spec)}), flush=True)
    tracer = Tracer.open(str(path))
    queries = read_queries(args.queries)[:args.max_queries]
    _, y = tracer.encoder.query_vectors(queries)
    scorer, choice = tracer.scorer(y, args.task)
    t = time.perf_counter()
    exact = exact_topk(scorer, tracer.store, 10).result([q.id for q in queries])
    exact_s = time.perf_counter() - t
    approx = tracer.approx()
    for c in args.candidates:
        two, _ = two_stage(scorer, tracer.store, approx, c, 10, [q.id for q in queries])
        # one question at a time: that question's row of the scorer (R from the whole set)
        timing = _one_question(lambda i: _Row(scorer, i), tracer.store, approx, c,
                               min(len(queries), 50))
        print(json.dumps({"C": c, "queries": len(queries), "r_eval": choice["r_eval"],
                          "top10_equal": float(np.mean([a.doc_ids == b.doc_ids for a, b in
                                                        zip(exact, two, strict=True)])),
                          "recall_at_10": recall_at_k(two, exact, 10),
                          "exact_all_queries_s": exact_s, **timing}), flush=True)
    shutil.rmtree(work)


class _Row:
    """Query ``i`` of a scorer alone (same u, qn, norms)."""

    def __init__(self, scorer, i):
        self.s, self.i = scorer, i
        self.task, self.u, self.qn = scorer.task, scorer.u[i:i + 1], scorer.qn[i:i + 1]

    def at(self, rows, positions):
        return self.s.at(rows, positions)[self.i:self.i + 1]


def synthetic_mode(args) -> None:
    from factrace.encode.whitening import TaskWhitening, _Block

    work = Path(tempfile.mkdtemp(prefix="two_stage_syn_", dir=args.tmp))
    path = work / "store"
    rng = np.random.default_rng(0)
    writer = StoreWriter.create_or_resume(path, {"model": "synthetic"}, args.dim)
    t = time.perf_counter()
    for index, start in enumerate(range(0, args.rows, args.shard_rows)):
        n = min(args.shard_rows, args.rows - start)
        x = rng.standard_normal((n, args.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        writer.write_shard(index, [f"d{i}" for i in range(start, start + n)], x)
    writer.finish()
    write_s = time.perf_counter() - t
    print(json.dumps({"store_write_s": round(write_s, 1), "rows": args.rows,
                      "dim": args.dim}), flush=True)
    print(json.dumps({"build": _build(path, args.spec)}), flush=True)
    store = EncodingStore.open(path, verify=False)
    t = time.perf_counter()
    approx = ApproxIndex.load(store)
    load_s = time.perf_counter() - t
    whitening = TaskWhitening("none", args.dim, [_Block(0, args.dim, torch.ones(args.dim))])
    q = torch.from_numpy(rng.standard_normal((args.queries, args.dim), dtype=np.float32))
    scorer = whitening.scorer(q)
    for c in args.candidates:
        timing = _one_question(lambda i: _Row(scorer, i), store, approx, c, args.queries)
        print(json.dumps({"C": c, "index_load_s": load_s, **timing}), flush=True)
    shutil.rmtree(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("store")
    s.add_argument("--index", required=True)
    s.add_argument("--queries", required=True)
    s.add_argument("--task", default=None)
    s.add_argument("--max-queries", type=int, default=1000)
    y = sub.add_parser("synthetic")
    y.add_argument("--rows", type=int, default=1_000_000)
    y.add_argument("--dim", type=int, default=1024)
    y.add_argument("--shard-rows", type=int, default=65536)
    y.add_argument("--queries", type=int, default=20)
    y.add_argument("--tmp", default=None)
    for p in (s, y):
        p.add_argument("--spec", default=None)
        p.add_argument("--candidates", type=int, nargs="+", default=[50, 100, 200])
    args = parser.parse_args()
    store_mode(args) if args.mode == "store" else synthetic_mode(args)


if __name__ == "__main__":
    main()
