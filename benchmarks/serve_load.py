"""``factrace serve`` under load: browsing clients and askers at once, for a fixed time.

    python benchmarks/serve_load.py --index STORE [--rankings FILE ...] [--seconds 60]

Starts ``factrace serve`` as its own process on a free loopback port, makes every request once
alone (the expected answers), then runs ``--clients`` browsing clients (the info, each set's
query list, query details, a comparison, passages) and ``--askers`` askers (``/api/ask``, a few
prompts with a few ``max_new_tokens`` and ``top_k``, greedy decoding) for ``--seconds``.
Prints p50/p95 latency of browse requests and of asks, the count of each status code, the
server process's resident memory (VmRSS) at start, middle and end, and every problem seen: a
5xx, a browse answer that is not 200 or differs from the one made alone, an ask that is neither
200 nor 503 with ``Retry-After``, or a 200 ask whose answer (completion, proponents, opponents)
differs from the one made alone.

The prompts are those of the first set's queries (``--prompt`` gives them instead); a store
alone (no rankings) needs ``--prompt``. :func:`run_load` is the driver the test
``tests/serve/test_serve_load.py`` runs against an in-process server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

ENTRY = "import sys; from factrace.cli import main; sys.exit(main())"
#: Problems kept (their count is still counted).
KEPT_PROBLEMS = 20


def rss_of(pid: int | str = "self") -> int:
    """Resident memory of process ``pid`` in bytes (``VmRSS`` of ``/proc/PID/status``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Client:
    """One keep-alive HTTP connection to ``url``: :meth:`request` returns ``(status, headers,
    body)`` and reconnects once when the server closed the connection."""

    def __init__(self, url: str, timeout: float = 120):
        parts = urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self.conn = None

    def request(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port,
                                                       timeout=self.timeout)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                return response.status, dict(response.getheaders()), response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def answer_key(answer: dict) -> dict:
    """What must not differ between an answer made alone and the same one made under load."""
    return {"prompt": answer["prompt"], "completion": answer["completion"],
            "proponents": [p["id"] for p in answer["proponents"]],
            "opponents": [p["id"] for p in answer["opponents"]]}


def browse_paths(url: str, per_set: int = 3, passages: int = 10) -> list[str]:
    """The requests a browsing client makes: the info, each loaded set's query list and its
    first ``per_set`` queries, a comparison of the first two sets, and up to ``passages``
    passages the details rank."""
    client = Client(url)
    try:
        info = json.loads(client.request("GET", "/api/info")[2])
        paths, doc_ids = ["/api/info"], []
        loaded = [s["name"] for s in info["sets"] if not s.get("error")]
        for name in loaded:
            base = f"/api/sets/{quote(name, safe='')}/queries"
            paths.append(base)
            listed = json.loads(client.request("GET", base)[2])["queries"]
            for q in listed[:per_set]:
                path = f"{base}/{quote(q['id'], safe='')}"
                paths.append(path)
                detail = json.loads(client.request("GET", path)[2])
                doc_ids += [p["id"] for p in detail["proponents"] if not p["missing"]]
        if len(loaded) >= 2:
            paths.append(f"/api/compare?a={quote(loaded[0])}&b={quote(loaded[1])}")
        for doc_id in list(dict.fromkeys(doc_ids))[:passages]:
            paths.append(f"/api/passages/{quote(doc_id, safe='')}")
        return paths
    finally:
        client.close()


def first_prompts(url: str, count: int) -> list[str]:
    """The prompts of the first loaded set's first ``count`` queries that have one."""
    client = Client(url)
    try:
        info = json.loads(client.request("GET", "/api/info")[2])
        loaded = [s["name"] for s in info["sets"] if not s.get("error")]
        if not loaded:
            return []
        listed = json.loads(client.request(
            "GET", f"/api/sets/{quote(loaded[0], safe='')}/queries")[2])["queries"]
        return [q["prompt"] for q in listed if q.get("prompt")][:count]
    finally:
        client.close()


def expected(url: str, paths: list[str], asks: list[dict]):
    """Every browse request and every ask made once, alone: ``({path: json}, [answer key])``.
    Raises when one of them is not 200 (or an answer is not to its own prompt)."""
    client = Client(url)
    try:
        browse = {}
        for path in paths:
            status, _, body = client.request("GET", path)
            if status != 200:
                raise RuntimeError(f"GET {path} alone: {status} {body[:200]!r}")
            browse[path] = json.loads(body)
        answers = []
        for ask in asks:
            status, _, body = client.request("POST", "/api/ask", ask)
            if status != 200:
                raise RuntimeError(f"ask {ask} alone: {status} {body[:200]!r}")
            key = answer_key(json.loads(body))
            if key["prompt"] != ask["prompt"]:
                raise RuntimeError(f"ask {ask} alone answered prompt {key['prompt']!r}")
            answers.append(key)
        return browse, answers
    finally:
        client.close()


@dataclass
class Load:
    """What a run saw."""

    seconds: float = 0.0
    browse_s: list[float] = field(default_factory=list)
    ask_s: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    """``(kind, status)``: ``kind`` is ``browse`` or ``ask``."""
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    rss: dict[str, int] = field(default_factory=dict)
    """Resident bytes at ``start``, ``middle`` and ``end``."""

    def problem(self, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < KEPT_PROBLEMS:
            self.problems.append(message)

    def summary(self) -> dict:
        def pct(xs, p):
            return round(statistics.quantiles(xs, n=100)[p - 1] * 1000, 1) if len(xs) > 1 \
                else None
        return {
            "seconds": round(self.seconds, 1),
            "browse": {"count": len(self.browse_s), "p50_ms": pct(self.browse_s, 50),
                       "p95_ms": pct(self.browse_s, 95)},
            "ask": {"count": len(self.ask_s), "p50_ms": pct(self.ask_s, 50),
                    "p95_ms": pct(self.ask_s, 95)},
            "statuses": {f"{k} {s}": n for (k, s), n in sorted(self.statuses.items())},
            "rss_mib": {k: round(v / 2**20, 1) for k, v in self.rss.items()},
            "problems": self.problem_count,
        }


def run_load(url: str, browse: dict[str, object], asks: list[dict], answers: list[dict],
             seconds: float, *, clients: int = 50, askers: int = 4, rss=None,
             seed: int = 0) -> Load:
    """``clients`` browsing threads (each its own keep-alive connection, GETs of ``browse``'s
    paths in a random order, each answer checked against ``browse[path]``) and ``askers``
    asking threads (``asks[i]`` checked against ``answers[i]``) for ``seconds``. ``rss()``:
    the server's resident bytes, read at the start, the middle and the end."""
    load, lock = Load(), threading.Lock()
    paths = list(browse)
    stop = threading.Event()
    start = threading.Barrier(clients + askers + 1)

    def note(kind: str, status: int, took: float):
        with lock:
            load.statuses[kind, status] += 1
            (load.browse_s if kind == "browse" else load.ask_s).append(took)

    def problem(message: str):
        with lock:
            load.problem(message)

    def browser(n: int):
        rng, client = random.Random(seed * 1000 + n), Client(url)
        start.wait()
        try:
            while not stop.is_set():
                path = rng.choice(paths)
                t = time.perf_counter()
                try:
                    status, _, body = client.request("GET", path)
                except OSError as e:
                    problem(f"GET {path}: {type(e).__name__}: {e}")
                    client.close()
                    continue
                note("browse", status, time.perf_counter() - t)
                if status != 200:
                    problem(f"GET {path}: {status} {body[:200]!r}")
                elif json.loads(body) != browse[path]:
                    problem(f"GET {path}: the answer differs from the one made alone")
        finally:
            client.close()

    def asker(n: int):
        rng, client = random.Random(seed * 1000 + 500 + n), Client(url)
        start.wait()
        try:
            while not stop.is_set():
                i = rng.randrange(len(asks))
                t = time.perf_counter()
                try:
                    status, headers, body = client.request("POST", "/api/ask", asks[i])
                except OSError as e:
                    problem(f"ask {asks[i]}: {type(e).__name__}: {e}")
                    client.close()
                    continue
                note("ask", status, time.perf_counter() - t)
                if status == 200:
                    got = answer_key(json.loads(body))
                    if got != answers[i]:
                        problem(f"ask {asks[i]}: answered {got}, alone {answers[i]}")
                elif status == 503:
                    if not headers.get("retry-after", headers.get("Retry-After")):
                        problem(f"ask {asks[i]}: 503 without Retry-After")
                    stop.wait(rng.uniform(0.05, 0.3))  # shorter than Retry-After: keep it busy
                else:
                    problem(f"ask {asks[i]}: {status} {body[:200]!r}")
        finally:
            client.close()

    threads = [threading.Thread(target=browser, args=(n,), daemon=True) for n in range(clients)]
    threads += [threading.Thread(target=asker, args=(n,), daemon=True) for n in range(askers)]
    for t in threads:
        t.start()
    if rss is not None:
        load.rss["start"] = rss()
    start.wait()
    began = time.monotonic()
    stop.wait(seconds / 2)
    if rss is not None:
        load.rss["middle"] = rss()
    stop.wait(max(0.0, began + seconds - time.monotonic()))
    if rss is not None:
        load.rss["end"] = rss()
    stop.set()
    for t in threads:
        t.join(180)
        if t.is_alive():
            load.problem(f"{t.name} did not stop")
    load.seconds = time.monotonic() - began
    return load


def ask_mix(prompts: list[str], new_tokens=(2, 4, 8, 16), top_ks=(5, 10, 20)) -> list[dict]:
    """Asks over ``prompts`` with several ``max_new_tokens`` and ``top_k``: more distinct asks
    than the server keeps answers for, so that most asks run the model."""
    return [{"prompt": p, "max_new_tokens": m, "top_k": k}
            for p in prompts for m in new_tokens for k in top_ks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", help="store (for Ask; without it only browsing runs)")
    parser.add_argument("--rankings", nargs="*", default=[])
    parser.add_argument("--qrels")
    parser.add_argument("--queries", help="the queries of every rankings file")
    parser.add_argument("--prompt", action="append", default=[],
                        help="a prompt to ask (repeatable; default: the first set's)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts taken from the set")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--askers", type=int, default=4)
    parser.add_argument("--max-queue", type=int, default=None)
    parser.add_argument("--extra", action="append", default=[],
                        help="another argument of factrace serve (repeatable)")
    args = parser.parse_args()

    argv = [sys.executable, "-c", ENTRY, "serve", "--port", "0"]
    if args.index:
        argv += ["--index", args.index]
    for rankings in args.rankings:
        argv += ["--rankings", rankings]
    for name in ("qrels", "queries"):
        if getattr(args, name):
            argv += [f"--{name}", getattr(args, name)]
    if args.max_queue is not None:
        argv += ["--max-queue", str(args.max_queue)]
    server = subprocess.Popen(argv + args.extra, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in server.stderr:
            sys.stderr.write(line)
            found = re.search(r"listening on (http://\S+/)", line)
            if found:
                url = found.group(1)
                break
        if url is None:
            sys.exit(f"factrace serve did not start (exit {server.wait()})")
        threading.Thread(target=lambda: [sys.stderr.write(x) for x in server.stderr],
                         daemon=True).start()
        paths = browse_paths(url)
        asks = []
        if args.index:
            prompts = args.prompt or first_prompts(url, args.prompts)
            if not prompts:
                sys.exit("give --prompt TEXT (no rankings set to take prompts from)")
            asks = ask_mix(prompts)
        t = time.perf_counter()
        browse, answers = expected(url, paths, asks)
        print(f"{len(paths)} browse requests and {len(asks)} asks made alone in "
              f"{time.perf_counter() - t:.1f} s; load average {os.getloadavg()[0]:.2f}",
              flush=True)
        load = run_load(url, browse, asks, answers, args.seconds, clients=args.clients,
                        askers=args.askers if asks else 0, rss=lambda: rss_of(server.pid))
        summary = load.summary()
        summary["load_average_after"] = round(os.getloadavg()[0], 2)
        print(json.dumps(summary, indent=1))
        for p in load.problems:
            print("problem:", p)
        if load.problem_count:
            sys.exit(1)
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
