"""Inputs of ``factrace serve`` made once from the shared tiny world and store: a TrackStar
rankings file (``trace``), a BM25 one (``baseline``), qrels, queries with a metadata field, a
rankings file naming passages the store lacks, and a malformed one; and a ``compare`` output
directory."""

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from factrace.cli import main
from factrace.evaluate.compare import CompareConfig, compare

TOP_K = 5


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _write(path, rows):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="session")
def serve_inputs(world, store, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    queries = _write(root / "queries.jsonl", [
        {**q, "relation": "birthplace" if n % 2 == 0 else "hometown"}
        for n, q in enumerate(_rows(world["queries"]))])
    trackstar = root / "trackstar.jsonl"
    assert main(["trace", "--index", store.out, "--queries", queries, "--out", str(trackstar),
                 "--top-k", str(TOP_K), "-q"]) == 0
    bm25 = root / "bm25.jsonl"
    assert main(["baseline", "--method", "bm25", "--corpus", world["corpus"], "--queries",
                 queries, "--out", str(bm25), "--top-k", str(TOP_K), "-q"]) == 0
    # gold: the passages stating the query's fact (prompt + target), else its BM25 top passage
    texts = {r["id"]: r["text"] for r in world["rows"]}
    top_bm25 = {r["query_id"]: r["doc_ids"][0] for r in _rows(bm25)}
    qrels = []
    for q in _rows(queries):
        gold = [d for d, t in texts.items() if t.startswith(q["prompt"] + q["target"])]
        qrels += [{"query_id": q["id"], "doc_id": d} for d in gold or [top_bm25[q["id"]]]]
    qrels_path = _write(root / "qrels.jsonl", qrels)
    ghost_rows = _rows(trackstar)
    ghost_rows[0]["doc_ids"][0] = "ghost-1"
    ghost = _write(root / "ghost.jsonl", ghost_rows)
    (root / "ghost.jsonl.meta.json").write_text((root / "trackstar.jsonl.meta.json").read_text())
    broken = root / "broken.jsonl"
    broken.write_text(json.dumps(ghost_rows[1]) + "\n{not json\n")
    return {"root": root, "queries": queries, "trackstar": str(trackstar), "bm25": str(bm25),
            "qrels": qrels_path, "ghost": ghost, "broken": str(broken), "index": store.out,
            "texts": texts}


@pytest.fixture(scope="session")
def compare_out(world, serve_inputs, tmp_path_factory):
    """A real ``compare`` output directory over the world (as ``demo`` writes one; two rungs
    and two baselines, to be quick): its queries sit in a fact world's folder, beside a
    ``facts.jsonl`` (the per-query record)."""
    root = tmp_path_factory.mktemp("compared")
    facts_dir = root / "world"
    facts_dir.mkdir()
    queries = facts_dir / "queries.jsonl"
    queries.write_text(Path(world["queries"]).read_text())
    _write(facts_dir / "facts.jsonl", [
        {"query_id": q["id"], "relation": "born_in" if n < 4 else "lives_in",
         "subject": q["prompt"].split()[0], "n_gold": 1 + n % 2}
        for n, q in enumerate(_rows(queries))])
    out = root / "compare_out"
    compare(CompareConfig(world["model"], world["optimizer"], world["corpus"], str(queries),
                          serve_inputs["qrels"], str(out), top_k=TOP_K,
                          variants=("trackstar", "trackstar-paper"),
                          baselines=("bm25", "bm25+target"), tail_patch=False, progress=False,
                          encoder_options={"dim": 64, "train_examples": 16}))
    return out


@pytest.fixture(scope="session")
def explorer(serve_inputs):
    """The explorer of every input (the broken file's warning caught here)."""
    from factrace.errors import FactraceWarning
    from factrace.serve import ServeConfig, load_explorer

    i = serve_inputs
    with pytest.warns(FactraceWarning, match="broken.jsonl:2"):
        return load_explorer(ServeConfig(
            index=i["index"], rankings=[i["trackstar"], i["bm25"], i["ghost"], i["broken"]],
            qrels=i["qrels"], queries=i["queries"]))


@pytest.fixture(scope="session")
def compare_explorer(compare_out, serve_inputs):
    """The explorer of the ``compare`` output directory alone (and the store, to explain)."""
    from factrace.serve import ServeConfig, load_explorer

    return load_explorer(ServeConfig(index=serve_inputs["index"], rankings=[str(compare_out)]))


@contextmanager
def _served(explorer, **app_options):
    """The app on a free loopback port, served by uvicorn in a thread: its URL
    (``app_options``: those of :func:`~factrace.serve.app.create_app`)."""
    import uvicorn

    from factrace.serve import bind, url_of
    from factrace.serve.app import create_app

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(explorer, **app_options),
                                                  log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield url_of(sock)
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="session")
def live_server(explorer):
    with _served(explorer) as url:
        yield url


@pytest.fixture(scope="session")
def compare_server(compare_explorer):
    with _served(compare_explorer) as url:
        yield url


@pytest.fixture(scope="session")
def served():
    """:func:`_served`, for a test that serves an explorer of its own."""
    return _served
