"""Passage look-ups through a store's location table, against corpus size.

Writes a JSONL corpus of N synthetic passages (ids ``doc-<i>``, ~600 characters of text each),
builds its location table (one pass, as ``index build`` does at its end), saves and reloads it
as a store does, then reads R random passages by id. Prints, per N: build seconds, table bytes
per passage, look-up latency (median and p95, ms), and the process's peak resident memory.

    python benchmarks/locations.py --sizes 10000 100000 1000000 --reads 200
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

from factrace.store.locations import Locations, load_arrays, save_arrays

WORDS = ("alba bruno corin dela ember fiora gant hollis ivo juno kestrel lumen mira nolan orla "
         "pim quill rhea sable tamsin ulric vela wren").split()


def write_corpus(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(100))
            f.write(json.dumps({"id": f"doc-{i}", "text": text}) + "\n")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--dir", default=None, help="where to write the corpora (default: tmp)")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="factrace-locations-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"{'passages':>10} {'corpus MiB':>10} {'build s':>8} {'B/passage':>9} "
          f"{'read ms p50':>11} {'p95':>6} {'peak RSS MiB':>12}")
    for n in args.sizes:
        corpus = root / f"corpus-{n}.jsonl"
        if not corpus.exists():
            write_corpus(corpus, n)
        start = time.perf_counter()
        table = Locations.build(str(corpus))
        build = time.perf_counter() - start
        saved = root / f"locations-{n}.npz"
        saved.write_bytes(save_arrays(table.arrays()))
        table = Locations.from_saved(table.entry(), load_arrays(saved))
        rng = random.Random(1)
        times = []
        for _ in range(args.reads):
            i = rng.randrange(n)
            start = time.perf_counter()
            passage = table.find(f"doc-{i}")
            times.append((time.perf_counter() - start) * 1e3)
            assert passage is not None and passage.id == f"doc-{i}"
        times.sort()
        print(f"{n:>10} {corpus.stat().st_size / 2**20:>10.0f} {build:>8.1f} "
              f"{saved.stat().st_size / n:>9.1f} {statistics.median(times):>11.3f} "
              f"{times[int(0.95 * len(times)) - 1]:>6.3f} {peak_rss_mib():>12.0f}")


if __name__ == "__main__":
    main()
