"""Peak RSS growth of reading a corpus, against its size, in each form a corpus is kept.

Writes the same synthetic passages (about 100 words each, columns ``doc_id`` and ``body``) as a
dataset saved with ``datasets``' ``save_to_disk`` (4 Arrow files), a directory of Parquet files
and JSON Lines, at each size; then, in a fresh interpreter per (form, size), reads the corpus as
``index build`` does before encoding (``validate_corpus``: every row, ids kept as 8-byte
digests) and once more in full (``iter_corpus``), and prints the peak RSS growth over the
interpreter's RSS after its imports (``VmHWM`` of ``/proc/self/status``: ``getrusage``'s
``ru_maxrss`` would include the parent's, which wrote the data). ``arrow, memory-mapped`` reads the
saved dataset's Arrow files through a memory map, as factrace did before: for comparison.

    python benchmarks/corpus_memory.py --sizes 20000 200000
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READ = r"""
import re, sys, time
import pyarrow
from factrace.data.io import Source, iter_corpus, validate_corpus
from factrace.data.shards import _mapped_stream_batches, corpus_shards

def rss_mib():  # the peak RSS of this interpreter (VmHWM: getrusage's keeps the parent's)
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) / 1024

form, path = sys.argv[1], sys.argv[2]
source = Source(path, {"id": "doc_id", "text": "body"})
base, t = rss_mib(), time.perf_counter()
if form == "arrow, memory-mapped":
    n = 0
    for shard in corpus_shards(source):
        for batch in _mapped_stream_batches(shard.path):
            ids, texts = batch.column("doc_id").to_pylist(), batch.column("body").to_pylist()
            n += len(ids)
else:
    n = validate_corpus(source).n_rows
    assert sum(1 for _ in iter_corpus(source)) == n
print(n, base, rss_mib() - base, time.perf_counter() - t)
"""

WORDS = ("the of a capital river was born in city north south old new great small king queen "
         "built founded moved wrote first last year people language spoken").split()


def write_forms(root: Path, n: int) -> dict[str, Path]:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(n)
    texts = [" ".join(rng.choices(WORDS, k=100)) + f" {i}" for i in range(n)]
    table = pa.table({"doc_id": [f"doc-{i}" for i in range(n)], "body": texts})
    saved = root / f"saved-{n}"
    datasets.Dataset(table).save_to_disk(str(saved), num_shards=4)
    parquet = root / f"parquet-{n}"
    parquet.mkdir()
    step = -(-n // 4)
    for k in range(4):
        pq.write_table(table.slice(k * step, step), parquet / f"part-{k}.parquet",
                       row_group_size=10_000)
    jsonl = root / f"corpus-{n}.jsonl"
    with jsonl.open("w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"doc_id": f"doc-{i}", "body": text}) + "\n")
    return {"saved dataset (Arrow)": saved, "arrow, memory-mapped": saved,
            "Parquet directory": parquet, "JSON Lines": jsonl}


def size_mib(path: Path) -> float:
    files = [path] if path.is_file() else list(path.rglob("*"))
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for n in args.sizes:
            t = time.perf_counter()
            forms = write_forms(Path(tmp), n)
            print(f"wrote {n} passages in {time.perf_counter() - t:.0f}s", file=sys.stderr)
            for form, path in forms.items():
                out = subprocess.run([sys.executable, "-c", READ, form, str(path)],
                                     capture_output=True, text=True, check=True).stdout.split()
                rows, base, growth, seconds = int(out[0]), *map(float, out[1:])
                assert rows == n, (rows, n)
                results[form, n] = growth
                print(f"| {form} | {n:,} | {size_mib(path):.0f} MiB | {base:.0f} MiB | "
                      f"{growth:.1f} MiB | {seconds:.1f} s |", flush=True)
        smallest = min(args.sizes)
        for form in dict.fromkeys(f for f, _ in results):
            ratios = ", ".join(f"{n:,}: {results[form, n] / max(results[form, smallest], 0.1):.2f}"
                               for n in args.sizes)
            print(f"{form}: growth relative to {smallest:,} passages: {ratios}")


if __name__ == "__main__":
    main()
