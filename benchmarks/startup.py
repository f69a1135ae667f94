"""Whole ``factrace`` processes timed: start-up (``--help``) and ``ask`` / ``explain`` on the
demo store, for one or more source trees side by side.

    python benchmarks/ask.py --dir /tmp/ask-bench --prompts 1     # builds the demo store once
    python benchmarks/startup.py --dir /tmp/ask-bench --repeat 5 \\
        --tree before=/tmp/factrace-before/src --tree after=src

Each repetition runs every (command, tree) pair once, in turn, so that the trees see the same
load on a shared machine; stdout goes to /dev/null (not a terminal: ``ask`` and ``explain``
print plain text). Prints each run's wall and CPU time and the load average before it, then the
min and median per pair. ``--env NAME=VALUE`` sets a variable for every run (e.g.
``OPENBLAS_NUM_THREADS=1``); ``--extra ARG`` is added to ``ask`` and ``explain``, and
``--extra-for NAME=ARG`` to those of tree NAME only (one tree twice, with and without an option:
``--tree default=src --tree one=src --extra-for one=--threads --extra-for one=1``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# the factrace command as a script, so that trees without ``python -m factrace`` run too
ENTRY = "import sys; from factrace.cli import main; sys.exit(main())"


def commands(root: Path, extra: list[str]) -> dict[str, list[str]]:
    """The commands timed, on the demo store under ``root`` (see benchmarks/ask.py)."""
    store = next(root.glob("store-d*"))
    queries = [json.loads(line) for line in open(root / "world" / "queries.jsonl")]
    q = queries[1]  # "The official language of Veland is"
    return {
        "--help": ["--help"],
        "ask": ["ask", "--index", str(store), q["prompt"], *extra],
        "explain": ["explain", "--index", str(store), "--queries",
                    str(root / "world" / "queries.jsonl"), "--query-id", q["id"],
                    "--doc-id", "p0000002", *extra],
    }


def run(tree: str, argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one whole process; compiled modules are kept
    (PYTHONDONTWRITEBYTECODE left out), as an installed package has them."""
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", ENTRY, *argv], check=True, stdout=subprocess.DEVNULL,
                   env={**base, **env, "PYTHONPATH": tree})
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/factrace-ask-bench")
    ap.add_argument("--tree", action="append", required=True, help="NAME=SRC_DIR")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", action="append", help="--help | ask | explain (default: all)")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for every run")
    ap.add_argument("--extra", action="append", default=[], help="argument for ask and explain")
    ap.add_argument("--extra-for", action="append", default=[],
                    help="NAME=ARG: argument for ask and explain of tree NAME")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    env = dict(e.split("=", 1) for e in args.env)
    own: dict[str, list[str]] = {}
    for item in args.extra_for:
        name, arg = item.split("=", 1)
        own.setdefault(name, []).append(arg)
    todo = {name: {k: v + (own.get(name, []) if k != "--help" else [])
                   for k, v in commands(Path(args.dir), args.extra).items()
                   if not args.only or k in args.only} for name in trees}
    for tree in trees.values():  # compile each tree once, outside the timings
        subprocess.run([sys.executable, "-m", "compileall", "-q", tree], check=True)
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for n in range(args.repeat):
        for command in todo[next(iter(trees))]:
            for name, tree in trees.items():
                load = os.getloadavg()[0]
                wall, cpu = run(tree, todo[name][command], env)
                times.setdefault((command, name), []).append((wall, cpu))
                print(f"{n + 1}  {command:8} {name:8} {wall:7.2f} s wall {cpu:7.2f} s CPU  "
                      f"(load {load:.1f})", flush=True)
    print(f"\n{os.cpu_count()} CPUs; env {env or 'default'}; extra {args.extra or 'none'}; "
          f"per tree {own or 'none'}")
    for (command, name), ts in times.items():
        walls, cpus = zip(*ts, strict=True)
        print(f"{command:8} {name:8} wall min {min(walls):6.2f} s median "
              f"{statistics.median(walls):6.2f} s; CPU min {min(cpus):6.2f} s median "
              f"{statistics.median(cpus):6.2f} s ({len(ts)} runs)")


if __name__ == "__main__":
    main()
