"""What a compact store's second stage costs: seconds to re-encode one candidate row.

Builds a compact store of the first ``--passages`` passages of a corpus with ``index build
--compact`` at the defaults (``--second-moment estimate`` when no optimizer state is given), then
re-encodes rows the way a two-stage ``trace`` does for its candidates (``Tracer.rows``: each
row's passage read where the store recorded it, tokenized, its gradient taken, corrected,
projected and rotated), in batches of ``--batch`` random rows, after one warm-up batch.

    python benchmarks/reencode.py --model smol.gguf --corpus corpus.jsonl --passages 64

Prints one JSON object: the store's d and code bytes per passage, and milliseconds per
re-encoded row (median over batches), with torch's thread count.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--optimizer-state", default=None)
    ap.add_argument("--passages", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--dim", default=None, help="projection dimension (default: the default d)")
    args = ap.parse_args()
    import torch

    from factrace.run.tracer import Tracer

    work = Path(tempfile.mkdtemp(prefix="reencode_"))
    try:
        corpus = work / "corpus.jsonl"
        with open(args.corpus, encoding="utf-8") as src, open(corpus, "w") as out:
            for n, line in enumerate(src):
                if n == args.passages:
                    break
                out.write(line)
        command = [sys.executable, "-m", "factrace", "index", "build", "--model", args.model,
                   "--corpus", str(corpus), "--out", str(work / "store"), "--compact", "-q"]
        command += (["--optimizer-state", args.optimizer_state] if args.optimizer_state
                    else ["--second-moment", "estimate"])
        command += ["--dim", args.dim] if args.dim else []
        t = time.perf_counter()
        subprocess.run(command, check=True)
        build_s = time.perf_counter() - t
        tracer = Tracer.open(str(work / "store"))
        rng = np.random.default_rng(0)
        n = tracer.store.n_rows
        tracer.rows(rng.choice(n, size=min(args.batch, n), replace=False))  # warm-up
        per_row = []
        for _ in range(args.batches):
            positions = rng.choice(n, size=min(args.batch, n), replace=False)
            t = time.perf_counter()
            tracer.rows(positions)
            per_row.append((time.perf_counter() - t) / len(positions))
        manifest = tracer.store.manifest
        print(json.dumps({"model": Path(args.model).name, "dim": tracer.store.dim,
                          "rows": n, "spec": manifest["compact"]["spec"],
                          "code_bytes_per_passage": manifest["compact"]["code_bytes"],
                          "build_s": round(build_s, 1),
                          "ms_per_re_encoded_row": round(1e3 * statistics.median(per_row), 1),
                          "torch_threads": torch.get_num_threads()}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
