"""A compact store at scale: bytes, build, open and one question's first stage, 10^4 ... 10^6 rows.

The store is a real compact store (``StoreWriter`` + ``Codec``, what ``index build --compact``
writes) whose rows are synthetic: no model is run. Rows are unit vectors with a decaying
spectrum (coordinate i has variance ∝ exp(-4 i/d), as rotated TrackStar rows have most energy
in their first coordinates); the codec (default ``PQ<d/2>x4fs``) is trained on 10,000 of them,
and each shard's codes are codes of rows drawn from a pool of 10,000 coded rows (the scan costs
the same whatever the codes say). Each question is a stored row plus noise, searched as
``trace``/``ask`` search a compact store: every row scored in one grouped fast scan, the best
and worst C rows per query, and their ids. Re-encoding the candidates (the second stage) is not
timed here: its cost per candidate is the model's (``benchmarks/README.md``, "scale").

    python benchmarks/scale.py --dim 16384 --rows 10000 100000 1000000 --out results.json

Prints one JSON object per size: code bytes per passage (and of a float16 row), seconds to code
and write the shards (per 10^6 rows), seconds to open the store (manifest, ids, codes into the
index), resident memory after opening and after the questions (VmRSS), and one question's first
stage (median of ``--questions``) at each C.
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


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synthetic_rows(rng, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x *= np.exp(-2.0 * np.arange(dim) / dim).astype(np.float32)  # variance exp(-4 i/d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def build(path: Path, rows: int, dim: int, spec: str | None, shard_rows: int,
          pool_rows: int = 10_000) -> dict:
    from factrace.search.approx import CODEC_FILE, Codec, default_spec
    from factrace.store import manifest as mf
    from factrace.store.encodings import StoreWriter

    rng = np.random.default_rng(0)
    pool = synthetic_rows(rng, pool_rows, dim)
    t = time.perf_counter()
    codec = Codec.train(pool, spec or default_spec(dim))
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    pool_codes = codec.encode(pool)
    encode_s_per_row = (time.perf_counter() - t) / pool_rows
    writer = StoreWriter.create_or_resume(path, {"model": "synthetic"}, dim)
    sha = mf.write_bytes_atomic(path / CODEC_FILE, codec.to_bytes())
    writer.set("compact", {"requested": codec.spec, **codec.entry(), "file": CODEC_FILE,
                           "sha256": sha})
    t = time.perf_counter()
    for index, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        codes = pool_codes[rng.integers(0, pool_rows, size=n)]
        writer.write_code_shard(index, [f"p{i:09d}" for i in range(start, start + n)], codes)
    writer.finish()
    write_s = time.perf_counter() - t
    return {"spec": codec.spec, "train_s": round(train_s, 1), "train_rows": pool_rows,
            "code_s_per_million": round(encode_s_per_row * 1e6, 1),
            "write_s": round(write_s, 1), "pool": pool[:64]}


def question_times(store, approx, pool: np.ndarray, candidates, questions: int) -> dict:
    from factrace.search.twostage import candidates as first_stage

    rng = np.random.default_rng(1)
    out = {}
    ids = store.ids
    for c in candidates:
        times = []
        for i in range(questions):
            u = pool[i % len(pool)] + 0.5 * synthetic_rows(rng, 1, pool.shape[1])[0]
            t = time.perf_counter()
            top, bottom = first_stage(approx, np.ascontiguousarray(u[None, :]), c)
            found = [ids[j] for j in np.concatenate([top[0], bottom[0]])]
            times.append(time.perf_counter() - t)
            assert len(found) == 2 * min(c, store.n_rows)
        out[str(c)] = round(statistics.median(times), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=16384)
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--spec", default=None, help="codes (default PQ<d/2>x4fs)")
    ap.add_argument("--shard-rows", type=int, default=16384)
    ap.add_argument("--candidates", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--questions", type=int, default=5)
    ap.add_argument("--tmp", default=None, help="folder for the stores (default: the system's)")
    ap.add_argument("--out", default=None, help="also write the results here (JSON)")
    args = ap.parse_args()
    import faiss

    from factrace.search.approx import ApproxIndex
    from factrace.store.encodings import EncodingStore

    results = []
    for rows in args.rows:
        work = Path(tempfile.mkdtemp(prefix="scale_", dir=args.tmp))
        try:
            built = build(work / "store", rows, args.dim, args.spec, args.shard_rows)
            pool = built.pop("pool")
            before = rss_mib()
            t = time.perf_counter()
            store = EncodingStore.open(work / "store", verify=False)
            _ = store.ids
            approx = ApproxIndex.load(store)
            open_s = time.perf_counter() - t
            opened = rss_mib()
            times = question_times(store, approx, pool, args.candidates, args.questions)
            codes = sum((work / "store" / e["codes"]).stat().st_size
                        for e in store.manifest["shards"])
            ids = sum((work / "store" / e["ids"]).stat().st_size
                      for e in store.manifest["shards"])
            result = {"rows": rows, "dim": args.dim, **built,
                      "code_bytes_per_passage": round(codes / rows, 1),
                      "id_bytes_per_passage": round(ids / rows, 1),
                      "float16_row_bytes": 2 * args.dim,
                      "write_s_per_million": round(built["write_s"] / rows * 1e6, 1),
                      "open_s": round(open_s, 2), "rss_before_open_mib": round(before),
                      "rss_open_mib": round(opened), "rss_after_mib": round(rss_mib()),
                      "question_first_stage_s": times, "faiss_threads": faiss.omp_get_max_threads()}
            print(json.dumps(result), flush=True)
            results.append(result)
            del approx, store
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
