"""Two-stage trace (``index approx`` + ``trace --candidates``): recall, latency and code size.

Store mode: a built store (a copy is made, the index is saved into the copy) and its queries.
Queries are encoded once; then, per C, every query is traced two-stage as one question and
compared with exact trace (share of queries whose top 10 equals exact's, recall@10), and the
first and second stage of one question are timed (median over the queries).

    python benchmarks/two_stage.py store --index STORE --queries Q.jsonl --candidates 50 100 200

Synthetic mode: N random unit rows of dimension D in a store (no model), the index trained
and added, then Q random questions timed (median) with R = identity:

    python benchmarks/two_stage.py synthetic --rows 1000000 --dim 1024 --candidates 100 1000

Compact mode: the compact twin of a built store (``index build --compact``, the same corpus,
model and encoder configuration, the same default task when the store has one), then each
query traced on the twin (candidates re-encoded) and compared with exact trace of the store;
the second stage's seconds per re-encoded row are timed:

    python benchmarks/two_stage.py compact --index STORE --queries Q.jsonl --task half --candidates 100 200

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


def compact_mode(args) -> None:
    from factrace.config import EncoderConfig
    from factrace.data.io import read_queries
    from factrace.run.index import IndexConfig, TaskConfig, add_task, build_index
    from factrace.run.tracer import Tracer

    full = Tracer.open(args.index)
    config = full.store.config
    work = Path(tempfile.mkdtemp(prefix="two_stage_compact_", dir=args.tmp))
    path = work / "store"
    t = time.perf_counter()
    build_index(IndexConfig(model=config["model"], corpus=config["corpus"], out=str(path),
                            optimizer_state=config["optimizer_state"],
                            encoder=EncoderConfig.from_dict(config["encoder"]["config"]).replace(
                                dim=full.store.dim),
                            shard_rows=config["shard_rows"], progress=False, compact=True,
                            compact_spec=args.spec))
    build_s = time.perf_counter() - t
    for name, entry in full.store.manifest.get("tasks", {}).items():
        add_task(TaskConfig(index=str(path), queries=entry["queries"], name=name,
                            default=name == full.store.manifest.get("default_task"),
                            progress=False))
    small = Tracer.open(str(path))
    codes = sum((path / e["codes"]).stat().st_size for e in small.store.manifest["shards"])
    print(json.dumps({"build_s": round(build_s, 1), "compact": small.store.manifest["compact"],
                      "code_bytes_per_passage": codes / small.store.n_rows,
                      "float16_row_bytes": 2 * small.store.dim}), flush=True)
    queries = read_queries(args.queries)[:args.max_queries]
    exact, _ = full.trace(queries, 10, task=args.task)
    for c in args.candidates:
        two, meta = small.trace(queries, 10, task=args.task, candidates=c)
        shared = [abs(a - b) for x, y in zip(exact, two, strict=True)
                  for d, a in zip(x.doc_ids, x.scores, strict=True)
                  for e, b in zip(y.doc_ids, y.scores, strict=True) if d == e]
        record = meta["two_stage"]
        print(json.dumps({"C": c, "queries": len(queries), "task": args.task,
                          "top10_equal": float(np.mean([a.doc_ids == b.doc_ids for a, b in
                                                        zip(exact, two, strict=True)])),
                          "recall_at_10": recall_at_k(two, exact, 10),
                          "max_score_difference": max(shared),
                          "rows_re_encoded": record["rows_read"],
                          "second_stage_s": round(record["second_stage_s"], 2),
                          "ms_per_re_encoded_row": round(1e3 * record["second_stage_s"]
                                                         / record["rows_read"], 2),
                          "first_stage_s": round(record["first_stage_s"], 3)}), flush=True)
    shutil.rmtree(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("store")
    s.add_argument("--index", required=True)
    s.add_argument("--queries", required=True)
    s.add_argument("--task", default=None)
    s.add_argument("--max-queries", type=int, default=1000)
    k = sub.add_parser("compact")
    k.add_argument("--index", required=True)
    k.add_argument("--queries", required=True)
    k.add_argument("--task", default=None)
    k.add_argument("--max-queries", type=int, default=1000)
    k.add_argument("--tmp", default=None)
    y = sub.add_parser("synthetic")
    y.add_argument("--rows", type=int, default=1_000_000)
    y.add_argument("--dim", type=int, default=1024)
    y.add_argument("--shard-rows", type=int, default=65536)
    y.add_argument("--queries", type=int, default=20)
    y.add_argument("--tmp", default=None)
    for p in (s, y, k):
        p.add_argument("--spec", default=None)
        p.add_argument("--candidates", type=int, nargs="+", default=[50, 100, 200])
    args = parser.parse_args()
    {"store": store_mode, "synthetic": synthetic_mode, "compact": compact_mode}[args.mode](args)


if __name__ == "__main__":
    main()
