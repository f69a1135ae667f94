"""How long ``ask`` takes on the demo store: the model load once, then each question.

    python benchmarks/ask.py --dir /tmp/ask-bench --prompts 8 --threads 2

The demo's fact world (3,000 passages, 300 queries, seed 0) and its pretrained tiny Llama
(cached by ``factrace demo``, or trained here once), a TrackStar store of it at the demo's
d = 2^14 with the world's queries as its default task (built once into ``--dir``). Then, in a
fresh process: importing factrace, ``Tracer.open`` (the model load, the store's checks and its
encoder state), a first ``ask`` (which also reads the store's ids and fits the default task's
R⁻¹, once per session), and ``--prompts`` more, each a fact-world prompt: greedy completion of
``--max-new-tokens``, the trace against every row, and the per-token contributions of the
``--explain-top`` best proponents.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def demo_store(root: Path, dim: int) -> Path:
    """The demo world, its model (cached as the demo caches it) and a store of it."""
    from factrace.config import variant_config
    from factrace.factworld.generate import generate_world
    from factrace.factworld.pretrain import PretrainConfig, fingerprint, pretrain
    from factrace.factworld.world import WorldConfig
    from factrace.run.demo import DemoConfig, cache_dir
    from factrace.run.index import IndexConfig, build_index

    files = generate_world(root / "world", WorldConfig(n_passages=3000, n_queries=300, seed=0))
    pre = PretrainConfig(seed=0)
    model = cache_dir(DemoConfig()) / fingerprint(files.corpus, files.queries, pre)
    pretrain(files.corpus, files.queries, model, pre, progress=True)
    store = root / f"store-d{dim}"
    build_index(IndexConfig(model=str(model), corpus=str(files.corpus), out=str(store),
                            queries=str(files.queries), optimizer_state=str(model / "optimizer.pt"),
                            encoder=variant_config("trackstar", dim=dim, train_examples=2048,
                                                   seed=0),
                            progress=True))
    return store


def measure(args) -> None:
    """In a fresh process: import, ``Tracer.open``, then the questions."""
    t = time.perf_counter()
    import torch

    from factrace.run.process import tune_process
    from factrace.run.tracer import Tracer

    import_s = time.perf_counter() - t
    tune_process()  # as the factrace command does
    torch.set_num_threads(args.threads)
    root = Path(args.dir)
    queries = [json.loads(line) for line in open(root / "world" / "queries.jsonl")]
    prompts = [q["prompt"] for q in queries[:args.prompts + 1]]
    load_avg = os.getloadavg()[0]
    t = time.perf_counter()
    tracer = Tracer.open(str(root / f"store-d{args.dim}"))
    open_s = time.perf_counter() - t
    runs = []
    for n, prompt in enumerate(prompts):
        t = time.perf_counter()
        answer = tracer.ask(prompt, max_new_tokens=args.max_new_tokens, top_k=args.top_k,
                            explain_top=args.explain_top)
        total = time.perf_counter() - t
        runs.append({"total_s": total, **answer.metadata["timings"]})
        print(f"{'first' if n == 0 else n:>5}  {total:6.2f} s  "
              + "  ".join(f"{k} {v:.2f}" for k, v in answer.metadata["timings"].items())
              + f"  {prompt!r} →{answer.completion!r}", flush=True)
    later = runs[1:]
    parts = ("generate_s", "trace_s", "explain_s")
    print(json.dumps({
        "rows": tracer.store.n_rows, "dim": tracer.store.dim, "threads": args.threads,
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "load_average_1min_before": load_avg, "import_s": import_s, "open_s": open_s,
        "first_ask_s": runs[0]["total_s"],
        "first_parts_s": {k: runs[0][k] for k in parts},
        "ask_median_s": statistics.median(r["total_s"] for r in later),
        "ask_max_s": max(r["total_s"] for r in later),
        "median_parts_s": {k: statistics.median(r[k] for r in later) for k in parts},
        "whitening": answer.metadata["whitening"].get("r_eval"),
    }, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/factrace-ask-bench")
    ap.add_argument("--dim", type=int, default=1 << 14)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--explain-top", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        measure(args)
        return
    from factrace.run.process import tune_process

    tune_process()
    demo_store(Path(args.dir), args.dim)
    # the measurements in a fresh process: the model load includes importing its classes
    subprocess.run([sys.executable, __file__, "--measure", *sys.argv[1:]], check=True)


if __name__ == "__main__":
    main()
