"""The command line: bad input gets one line naming file and line, exit code 2, no output left."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from factrace.cli import main

FAST = ["--dim", "64", "--train-examples", "16", "-q"]


def _scan(world, tmp_path, corpus=None, queries=None, extra=()):
    out = tmp_path / "rankings.jsonl"
    argv = ["scan", "--model", world["model"], "--optimizer-state", world["optimizer"],
            "--corpus", str(corpus or world["corpus"]), "--queries", str(queries or world["queries"]),
            "--out", str(out), *FAST, *extra]
    return main(argv), out


def _write(path, lines):
    path.write_bytes(b"".join(line if isinstance(line, bytes) else line.encode() + b"\n"
                              for line in lines))
    return path


GOOD = json.dumps({"id": "a", "text": "Alba was born in Tesk."})
CASES = {
    "malformed": ([GOOD, "{not json"], "corpus.jsonl:2"),
    "missing_id": ([GOOD, json.dumps({"text": "x y z"})], "corpus.jsonl:2"),
    "missing_text": ([GOOD, GOOD.replace('"a"', '"b"'), json.dumps({"id": "c"})], "corpus.jsonl:3"),
    "duplicate": ([GOOD, GOOD], "corpus.jsonl:2"),
    "empty": ([], "empty"),
    "non_utf8": ([GOOD, b'{"id": "b", "text": "caf\xe9"}\n'], "corpus.jsonl:2"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_corpus(world, tmp_path, capsys, case):
    lines, where = CASES[case]
    corpus = _write(tmp_path / "corpus.jsonl", lines)
    code, out = _scan(world, tmp_path, corpus=corpus)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("factrace: error:")
    assert where in err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("*rankings*"))


def test_empty_target(world, tmp_path, capsys):
    queries = _write(tmp_path / "queries.jsonl",
                     [json.dumps({"id": "q", "prompt": "Alba was born in", "target": ""})])
    code, out = _scan(world, tmp_path, queries=queries)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "queries.jsonl:1" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_unknown_variant_and_bad_dim(world, tmp_path, capsys):
    code, _ = _scan(world, tmp_path, extra=["--variant", "nope"])
    assert code == 2 and "unknown variant" in capsys.readouterr().err
    code, _ = _scan(world, tmp_path, extra=["--dim", "1001", "--variant", "grad-cos"])
    assert code == 2 and "divisible" in capsys.readouterr().err


def test_scan_writes_rankings(world, tmp_path):
    code, out = _scan(world, tmp_path, extra=["--top-k", "3", "--variant", "trackstar-train"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(len(r["doc_ids"]) == 3 == len(r["scores"]) for r in rows)
    meta = json.loads((tmp_path / "rankings.jsonl.meta.json").read_text())
    assert meta["encoder"]["config"]["variant"] == "trackstar-train"
    assert meta["encoder"]["dim"] == 64


@pytest.fixture(scope="module")
def large_store(world, tmp_path_factory):
    """A store of 240 passages, enough training rows for 4 real IVF lists (FAISS wants 39 per
    list), built through the API without R to stay quick."""
    from factrace.config import variant_config
    from factrace.run.index import IndexConfig, build_index
    from hfdir import write_corpus

    root = tmp_path_factory.mktemp("large")
    write_corpus(root / "corpus.jsonl", n=240, seed=1)
    build_index(IndexConfig(model=world["model"], optimizer_state=world["optimizer"],
                            corpus=str(root / "corpus.jsonl"), out=str(root / "store"),
                            encoder=variant_config("grad-cos+opt", dim=64), progress=False))
    return root / "store"


def _exact_top10(store_path, queries) -> list[set[str]]:
    """Brute force over the stored encodings, with the store's own query encoder."""
    import numpy as np

    from factrace.data.io import read_queries
    from factrace.run.index import open_encoder_for
    from factrace.store.encodings import EncodingStore

    store = EncodingStore.open(store_path)
    _, psi_q = open_encoder_for(store, None, None).encode_queries(read_queries(queries))
    ids, rows = [], []
    for shard_ids, encodings in store.iter_shards():
        ids.extend(shard_ids)
        rows.append(np.asarray(encodings, dtype=np.float32))
    scores = psi_q.numpy().astype(np.float32) @ np.concatenate(rows).T
    return [{ids[j] for j in np.argsort(-s, kind="stable")[:10]} for s in scores]


def test_trace_with_faiss_reports_the_measured_recall(world, large_store, tmp_path, capsys):
    from factrace.store.encodings import EncodingStore

    n_rows = EncodingStore.open(large_store).n_rows
    assert n_rows >= 4 * 39
    out = tmp_path / "traced.jsonl"
    code = main(["trace", "--index", str(large_store), "--queries", world["queries"], "--out",
                 str(out), "--top-k", "10", "--faiss", "IVF4,Flat", "--nprobe", "1",
                 "--report-recall", "-q"])
    captured = capsys.readouterr()
    assert code == 0
    # really approximate: one list of four searched per query
    assert captured.err.strip() == (f"approximate search: FAISS IVF4,Flat over {n_rows} rows, "
                                    "1 of 4 lists probed per query")
    printed = captured.out.strip()
    assert printed.startswith("recall@10 of IVF4,Flat against exact search: ")
    recall = float(printed.split()[-1])
    meta = json.loads((tmp_path / "traced.jsonl.meta.json").read_text())
    assert meta["recall_at_10"] == pytest.approx(recall, abs=5e-5)
    # the recall of the rankings written, against exact search done here
    approx = [json.loads(line)["doc_ids"] for line in out.read_text().splitlines()]
    exact = _exact_top10(large_store, world["queries"])
    assert len(approx) == len(exact) == 6 and all(len(a) == 10 for a in approx)
    measured = sum(len(set(a) & e) / 10 for a, e in zip(approx, exact, strict=True)) / 6
    assert recall == pytest.approx(measured, abs=5e-5)
    assert 0.3 <= recall <= 1.0  # one list in four still finds most of the nearest rows


def _rankings(path, query_ids):
    return _write(path, [json.dumps({"query_id": q, "doc_ids": ["d0", "d1"], "scores": [2.0, 1.0]})
                         for q in query_ids])


def test_eval_refuses_qrels_that_match_no_ranked_query(tmp_path, capsys):
    rankings = _rankings(tmp_path / "r.jsonl", ["q0", "q1"])
    qrels = _write(tmp_path / "qrels.jsonl", [json.dumps({"query_id": "x", "doc_id": "d0"})])
    code = main(["eval", "--rankings", str(rankings), "--qrels", str(qrels)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and "none of its 1 queries" in captured.err
    assert "MRR" not in captured.out


def test_eval_warns_when_qrels_match_some_ranked_queries(tmp_path, capsys):
    rankings = _rankings(tmp_path / "r.jsonl", ["q0", "q1", "q2"])
    qrels = _write(tmp_path / "qrels.jsonl", [json.dumps({"query_id": "q0", "doc_id": "d1"}),
                                              json.dumps({"query_id": "q9", "doc_id": "d1"})])
    out = tmp_path / "metrics.json"
    code = main(["eval", "--rankings", str(rankings), "--qrels", str(qrels), "--out", str(out)])
    err = capsys.readouterr().err.splitlines()
    assert code == 0
    assert any(line.startswith("factrace: warning:") and "2 of the 3 queries" in line
               for line in err)
    assert any("1 of the 2 queries" in line and "score 0" in line for line in err)
    assert json.loads(out.read_text())["mrr"] == 0.25  # q0: 1/2, q9: 0


# start-up: a command imports what it needs when it runs ---------------------------------------
HEAVY = ("torch", "transformers", "ray", "faiss", "bm25s", "sentence_transformers", "starlette",
         "matplotlib", "pyarrow", "datasets")


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter that imports this factrace (the one under test)."""
    import factrace

    src = str(Path(factrace.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_the_command_line_starts_without_the_heavy_libraries():
    """``import factrace.cli`` and ``factrace --help`` (the `python -m factrace` entry too) load
    none of PyTorch, transformers, Ray, FAISS, ...: a command imports them when it runs."""
    shown = _python(f"import sys, factrace.cli; print([m for m in {HEAVY!r} if m in sys.modules])")
    assert shown.returncode == 0 and shown.stdout.strip() == "[]", shown.stderr
    shown = _python("import runpy, sys; sys.argv = ['factrace', '--help']; "
                    "runpy.run_module('factrace', run_name='__main__')")
    assert shown.returncode == 0, shown.stderr
    assert all(c in shown.stdout for c in ("scan", "index", "trace", "ask", "explain", "eval"))
    shown = _python("import sys, factrace; "
                    f"print([m for m in {HEAVY!r} if m in sys.modules], factrace.Index.__name__)")
    assert shown.stdout.split() == ["[]", "EncodingStore"], shown.stderr
    import factrace

    assert set(factrace.__all__) <= set(dir(factrace))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        factrace.nope  # noqa: B018


def test_threads_set_numpy_blas_threads_too():
    """--threads N also gives numpy's BLAS N threads (small eigenvalue problems with two
    OpenBLAS threads on busy cores took seconds instead of milliseconds)."""
    pytest.importorskip("threadpoolctl")
    code = ("import os; from factrace.cli import set_threads; set_threads(1); import numpy, "
            "threadpoolctl; print([p['num_threads'] for p in threadpoolctl.threadpool_info() "
            "if p['user_api'] == 'blas'])")
    saved = {k: os.environ.pop(k) for k in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
             if k in os.environ}
    try:
        shown = _python(code)
    finally:
        os.environ.update(saved)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "[1]"


def test_commands_without_a_model_load_no_heavy_library(store, tmp_path):
    """eval (no tail-patch), baseline random and index verify run without PyTorch or
    transformers."""
    rankings = _rankings(tmp_path / "r.jsonl", ["q0", "q1"])
    qrels = _write(tmp_path / "qrels.jsonl", [json.dumps({"query_id": "q0", "doc_id": "d1"})])
    code = (
        "import sys; from factrace.cli import main\n"
        "assert main(['eval', '--rankings', sys.argv[1], '--qrels', sys.argv[2]]) == 0\n"
        "assert main(['baseline', '--method', 'random', '--corpus', sys.argv[3], '--queries',"
        " sys.argv[4], '--out', sys.argv[5], '-q']) == 0\n"
        "assert main(['index', 'verify', '--index', sys.argv[6]]) == 0\n"
        f"print('loaded:', [m for m in {HEAVY!r} if m in sys.modules])\n")
    shown = _python(code, str(rankings), str(qrels), store.corpus, store.queries,
                    str(tmp_path / "random.jsonl"), store.out)
    assert shown.returncode == 0, shown.stderr
    assert "MRR" in shown.stdout and "rows verified" in shown.stdout
    assert shown.stdout.strip().endswith("loaded: []"), shown.stdout


def test_query_target_without_space_is_repaired_with_a_warning(world, tmp_path, capsys):
    queries = _write(tmp_path / "queries.jsonl",
                     [json.dumps({"id": "q", "prompt": "Alba was born in", "target": "Tesk"})])
    out = tmp_path / "bm25.jsonl"
    code = main(["baseline", "--method", "bm25+target", "--corpus", world["corpus"],
                 "--queries", str(queries), "--out", str(out), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 0
    assert err.startswith("factrace: warning:") and len(err.splitlines()) == 1
    assert f"{queries}:1: 1 of 1 targets had no leading space" in err


def _commands(world, tmp_path, out):
    """Each command that writes, with valid inputs but a model and store that do not exist: an
    error about anything else proves it came before loading them."""
    absent = str(tmp_path / "no-model")
    encoding = ["--model", absent, "--corpus", world["corpus"], "--queries", world["queries"],
                "--out", out]
    rankings = _rankings(tmp_path / "given.jsonl", ["q0"])
    qrels = _write(tmp_path / "qrels.jsonl", [json.dumps({"query_id": "q0", "doc_id": "d0"})])
    return {
        "scan": ["scan", *encoding],
        "index": ["index", "build", *encoding],
        "trace": ["trace", "--index", absent, "--queries", world["queries"], "--out", out],
        "eval": ["eval", "--rankings", str(rankings), "--qrels", str(qrels), "--out", out],
        "baseline": ["baseline", "--method", "random", "--corpus", world["corpus"], "--queries",
                     world["queries"], "--out", out],
        "compare": ["compare", "--model", absent, "--optimizer-state", absent, "--corpus",
                    world["corpus"], "--queries", world["queries"], "--qrels", str(qrels),
                    "--out", out],
        "demo": ["demo", "--out", out],
    }


BAD_OPTIONS = [
    ("scan", ["--top-k", "0"], "--top-k must be at least 1, got 0"),
    ("scan", ["--top-k", "-1"], "--top-k must be at least 1, got -1"),
    ("scan", ["--train-examples", "0"], "--train-examples must be at least 1"),
    ("scan", ["--shard-rows", "0"], "--shard-rows must be at least 1"),
    ("index", ["--workers", "0"], "--workers must be at least 1"),
    ("trace", ["--top-k", "0"], "--top-k must be at least 1"),
    ("trace", ["--nprobe", "0"], "--nprobe must be at least 1"),
    ("eval", ["--tail-patch-k", "0"], "--tail-patch-k must be at least 1"),
    ("baseline", ["--top-k", "-3"], "--top-k must be at least 1"),
    ("compare", ["--tail-patch-queries", "0"], "--tail-patch-queries must be at least 1"),
    ("demo", ["--passages", "0"], "--passages must be at least 1"),
]


@pytest.mark.parametrize(("command", "extra", "message"), BAD_OPTIONS)
def test_bad_options_are_refused_before_any_work(world, tmp_path, capsys, command, extra,
                                                  message):
    out = tmp_path / "out"
    code = main(_commands(world, tmp_path, str(out))[command] + extra)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"factrace: error: {message}") and "\n" not in err
    assert not out.exists()


OUTPUT_COMMANDS = ["scan", "index", "trace", "eval", "baseline", "compare", "demo"]


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_unwritable_outputs_are_refused_before_any_work(world, tmp_path, capsys, monkeypatch,
                                                         command):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = main(_commands(world, tmp_path, str(blocker / "out"))[command])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("factrace: error:") and len(err.splitlines()) == 1
    assert f"{blocker} is not a directory" in err

    # a read-only directory (simulated: the tests may run as root, who can write anywhere)
    import factrace.data.outputs as outputs

    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: Path(path) != locked)
    code = main(_commands(world, tmp_path, str(locked / "out"))[command])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"directory {locked} is not writable" in err
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("command", ["scan", "trace", "eval", "baseline"])
def test_out_naming_a_directory_is_refused_before_any_work(world, tmp_path, capsys, command):
    out = tmp_path / "existing"
    out.mkdir()
    code = main(_commands(world, tmp_path, str(out))[command])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"factrace: error: {out}: is a directory; --out names the file to write"


@pytest.mark.parametrize("command", ["index", "compare", "demo"])
def test_out_naming_a_file_where_a_directory_is_written(world, tmp_path, capsys, command):
    out = tmp_path / "a-file"
    out.write_text("x")
    code = main(_commands(world, tmp_path, str(out))[command])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "exists and is not a directory" in err
    assert out.read_text() == "x"


@pytest.mark.parametrize(("command", "existing"), [
    ("scan", "out"), ("scan", "out.meta.json"), ("trace", "out"), ("trace", "out.meta.json"),
    ("eval", "out"), ("baseline", "out"), ("compare", "out/results.json"),
    ("compare", "out/rankings"), ("demo", "out/report.html"),
])
def test_existing_outputs_are_refused_without_overwrite(world, tmp_path, capsys, command,
                                                        existing):
    old = tmp_path / existing
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text("earlier results")
    code = main(_commands(world, tmp_path, str(tmp_path / "out"))[command])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "pass --overwrite to replace it" in err and old.name in err
    assert old.read_text() == "earlier results"


def test_overwrite_replaces_an_existing_output(world, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("earlier results")
    code = main(_commands(world, tmp_path, str(out))["baseline"] + ["--overwrite"])
    assert code == 0
    assert len(out.read_text().splitlines()) == 6


@pytest.mark.slow  # builds stores through the CLI
def test_index_build_overwrite_replaces_the_store(world, tmp_path):
    store = tmp_path / "store"
    argv = ["index", "build", "--model", world["model"], "--optimizer-state", world["optimizer"],
            "--corpus", world["corpus"], "--queries", world["queries"], "--out", str(store), *FAST]
    assert main(argv) == 0
    assert main(argv + ["--dim", "128"]) == 2  # another encoder: refused, not mixed in
    assert main(argv + ["--dim", "128", "--overwrite"]) == 0
    assert json.loads((store / "manifest.json").read_text())["dim"] == 128


@pytest.mark.slow  # builds stores through the CLI
def test_store_records_absolute_paths_and_trace_accepts_model_elsewhere(world, tmp_path, capsys,
                                                                       monkeypatch):
    import shutil

    model = tmp_path / "ckpt"
    shutil.copytree(world["model"], model)
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    assert main(["index", "build", "--model", "ckpt", "--optimizer-state", "ckpt/optimizer.pt",
                 "--corpus", world["corpus"], "--queries", world["queries"], "--out", "store",
                 *FAST]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    trace = ["trace", "--index", str(store), "--queries", world["queries"], "-q"]
    assert main([*trace, "--out", "a.jsonl"]) == 0  # the recorded paths do not depend on the cwd

    model.rename(tmp_path / "moved")
    capsys.readouterr()
    assert main([*trace, "--out", "b.jsonl"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(store) in err and str(model) in err and "--model" in err
    assert len(err.splitlines()) == 1
    moved = str(tmp_path / "moved")
    assert main([*trace, "--out", "c.jsonl", "--model", moved, "--optimizer-state",
                 moved + "/optimizer.pt"]) == 0
    assert (elsewhere / "c.jsonl").read_text() == (elsewhere / "a.jsonl").read_text()


def _help(capsys, monkeypatch, *command):
    monkeypatch.setenv("COLUMNS", "300")
    assert main([*command, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_texts_keep_their_defaults_and_describe_every_option(capsys, monkeypatch):
    scan_help = _help(capsys, monkeypatch, "scan")
    assert "Padded tokens per batch (default: 8192 on CPU; on CUDA grown to fill the device)" \
        in scan_help
    assert "(default: 256 MiB of float32 encodings, 256-8192 rows)" in scan_help
    assert re.search(r"--top-k \S+ Top passages kept per query", scan_help)
    eval_help = _help(capsys, monkeypatch, "eval")
    assert re.search(r"--tail-patch-k \S+ Top passages of each ranking tail-patched", eval_help)
    assert re.search(r"--tail-patch-queries \S+ Tail-patch the first N queries only", eval_help)
    demo_help = _help(capsys, monkeypatch, "demo")
    assert re.search(r"--n-queries \S+ Queries in the fact world", demo_help)
    assert "--queries" not in demo_help


def test_scan_exact_projection_ranks_by_the_gradient_cosine(world, tmp_path):
    """`--projection exact` through the whole scan pipeline equals the Encoder's exact cosines."""
    import numpy as np

    from factrace.config import EncoderConfig
    from factrace.data.corpus import iter_corpus
    from factrace.data.io import read_queries
    from factrace.encode.encoder import Encoder

    out = tmp_path / "rankings.jsonl"
    code = main(["scan", "--model", world["model"], "--optimizer-state", world["optimizer"],
                 "--corpus", world["corpus"], "--queries", world["queries"], "--out", str(out),
                 "--variant", "grad-cos+opt", "--projection", "exact", "--top-k", "4", "-q"])
    assert code == 0
    meta = json.loads((tmp_path / "rankings.jsonl.meta.json").read_text())
    enc = Encoder.load(world["model"], world["optimizer"],
                       EncoderConfig(projection="exact", hessian="none"))
    assert meta["encoder"]["dim"] == enc.dim == sum(t.d_out * t.d_in for t in enc.tracked)
    ids, psi = enc.encode_passages(list(iter_corpus(world["corpus"])))
    _, psi_q = enc.encode_queries(read_queries(world["queries"]))
    scores = (psi_q @ psi.T).numpy()
    for row, s in zip((json.loads(line) for line in out.read_text().splitlines()), scores,
                      strict=True):
        best = np.sort(s)[::-1][:4]
        assert np.allclose(row["scores"], best, atol=2e-3)  # store-free: float16 passages
        assert [ids.index(d) for d in row["doc_ids"]][:1] == [int(np.argmax(s))]


def test_exact_projection_with_r_is_refused_before_any_work(world, tmp_path, capsys):
    code, out = _scan(world, tmp_path, extra=["--projection", "exact", "--dim", "64"])
    assert code == 2 and "--projection exact" in capsys.readouterr().err
    assert not out.exists()


def test_index_commands_build_without_queries_add_tasks_grow_and_verify(world, tmp_path, capsys):
    rows = [json.loads(line) for line in open(world["corpus"])]
    first = _write(tmp_path / "a.jsonl", [json.dumps(r) for r in rows[:40]])
    second = _write(tmp_path / "b.jsonl", [json.dumps(r) for r in rows[40:]])
    store = str(tmp_path / "store")
    assert main(["index", "build", "--model", world["model"], "--optimizer-state",
                 world["optimizer"], "--corpus", str(first), "--out", store, *FAST]) == 0
    assert main(["index", "task", "add", "--index", store, "--queries", world["queries"],
                 "--name", "facts", "-q"]) == 0
    assert main(["index", "add", "--index", store, "--corpus", str(second), "-q"]) == 0
    assert main(["index", "verify", "--index", store]) == 0
    assert "rows verified" in capsys.readouterr().out
    out = tmp_path / "t.jsonl"
    assert main(["trace", "--index", store, "--queries", world["queries"], "--out", str(out),
                 "--task", "facts", "-q"]) == 0
    meta = json.loads(Path(str(out) + ".meta.json").read_text())
    assert meta["whitening"]["r_eval"] == "task facts"
    traced = {i.split("#")[0] for line in open(out) for i in json.loads(line)["doc_ids"]}
    assert traced <= {r["id"] for r in rows}
    # bad input: a task that does not exist; a second addition of the same passages
    capsys.readouterr()
    assert main(["trace", "--index", store, "--queries", world["queries"], "--out",
                 str(tmp_path / "u.jsonl"), "--task", "nope", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no task 'nope'" in err
    assert not (tmp_path / "u.jsonl").exists()
    assert main(["index", "add", "--index", store, "--corpus", str(second), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already in the store" in err


def test_a_second_writer_of_a_store_exits_2_at_once(world, tmp_path, capsys):
    from factrace.store.lock import write_lock

    store = tmp_path / "store"
    with write_lock(store):
        code = main(["index", "build", "--model", world["model"], "--optimizer-state",
                     world["optimizer"], "--corpus", world["corpus"], "--out", str(store), *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "being written by process" in err
    assert [p.name for p in store.iterdir()] == [".write.lock"]


def test_every_encoder_option_reaches_the_configuration(world, tmp_path, capsys):
    from factrace.cli import ENCODER_OPTIONS
    from factrace.config import EncoderConfig

    # every field that changes ψ (the fingerprinted ones) has an option, declared once
    fields = set(EncoderConfig.__dataclass_fields__) - {"extra", "normalize", "overflow",
                                                        "compile", "variant"}
    named = {name.rstrip("_") if name != "lambda_" else name for name in ENCODER_OPTIONS}
    assert fields <= named | {"include", "exclude"}, fields - named
    code, out = _scan(world, tmp_path, extra=["--lambda", "auto", "--lambda-k", "3",
                                              "--estimate-examples", "7",
                                              "--epsilon", "1e-6", "--aspect", "2",
                                              "--loss-reduction", "mean", "--threads", "1"])
    assert code == 0
    config = json.loads(Path(str(out) + ".meta.json").read_text())["encoder"]["config"]
    assert (config["lambda_"], config["lambda_k"], config["estimate_examples"], config["epsilon"],
            config["aspect"], config["loss_reduction"]) == ("auto", 3, 7, 1e-6, 2.0, "mean")


#: EncoderConfig fields that are no command's option, and why.
NOT_OPTIONS = {
    "normalize": "set by the variant alone (grad-dot is grad-cos without the unit norm)",
    "extra": "free-form notes a library caller records, not a setting of the encoder",
}
#: Fields whose option is not --<field>.
FLAGS = {"lambda_": "--lambda", "overflow": "--truncate", "compile": "--compile"}
ENCODING_COMMANDS = [("scan",), ("index", "build"), ("compare",)]


@pytest.mark.parametrize("command", ENCODING_COMMANDS, ids=" ".join)
def test_every_encoding_command_takes_every_encoder_option(command):
    import typer

    from factrace.cli import app
    from factrace.config import EncoderConfig

    cmd = typer.main.get_command(app)
    for name in command:
        cmd = cmd.commands[name]
    flags = {flag for param in cmd.params for flag in param.opts}
    fields = set(EncoderConfig.__dataclass_fields__) - set(NOT_OPTIONS)
    if command == ("compare",):
        fields.remove("variant")  # compare runs every variant; its options apply to each
    missing = sorted(f for f in fields if FLAGS.get(f, "--" + f.replace("_", "-")) not in flags)
    assert not missing, f"{' '.join(command)} lacks the options of {missing}"
    assert "--threads" in flags


def test_compare_passes_every_encoder_option_to_every_variant(world, tmp_path, monkeypatch):
    import dataclasses

    import factrace.evaluate.compare as compare

    original = compare.compare

    def quicker(cfg):  # two rungs and one baseline: the options' path, not the whole ladder
        return original(dataclasses.replace(cfg, variants=("grad-dot", "trackstar-paper"),
                                            baselines=("bm25",)))

    monkeypatch.setattr(compare, "compare", quicker)
    qrels = _write(tmp_path / "qrels.jsonl",
                   [json.dumps({"query_id": q["id"], "doc_id": world["rows"][0]["id"]})
                    for q in map(json.loads, Path(world["queries"]).read_text().splitlines())])
    out = tmp_path / "compared"
    assert main(["compare", "--model", world["model"], "--optimizer-state", world["optimizer"],
                 "--corpus", world["corpus"], "--queries", world["queries"], "--qrels",
                 str(qrels), "--out", str(out), "--no-tail-patch", "--hessian-structure",
                 "block", "--max-length", "24", "--include", "lm_head", "--damping", "3",
                 "--threads", "1", "--dim", "80", "--train-examples", "16", "-q"]) == 0
    configs = {m: json.loads((out / "rankings" / f"{m}.jsonl.meta.json").read_text())
               ["encoder"]["config"] for m in ("grad-dot", "trackstar-paper")}
    for config in configs.values():
        assert (config["hessian_structure"], config["max_length"], config["include"],
                config["damping"], config["dim"]) == ("block", 24, ["lm_head"], 3.0, 80)
    # each variant keeps the defaults no option overrides
    assert (configs["grad-dot"]["second_moment"], configs["grad-dot"]["normalize"]) == \
        ("none", False)
    assert configs["trackstar-paper"]["hessian"] == "mixed"
    results = json.loads((out / "results.json").read_text())
    assert results["metadata"]["encoder_options"]["max_length"] == 24


def test_damping_auto_sets_each_blocks_eta_from_r_train(world, tmp_path, capsys):
    """``--damping auto`` end to end: the scan records "auto" and, per block, the η its R_train
    gives (:meth:`TrainBasis.shrinkage`); a value that is neither a number nor auto is refused
    in one line before any work."""
    code, out = _scan(world, tmp_path, extra=["--damping", "auto", "--hessian-structure",
                                              "block"])
    assert code == 0
    meta = json.loads(Path(f"{out}.meta.json").read_text())["encoder"]
    assert meta["config"]["damping"] == "auto"
    etas = meta["whitening"]["block_dampings"]
    assert len(etas) == len(meta["blocks"]) and all(e > 0 for e in etas)
    assert len(set(etas)) == len(etas)  # one η per block, each from its own R_train
    code, bad = _scan(world, tmp_path / "bad", extra=["--damping", "strong"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == ("factrace: error: --damping must be a number >= 0 or auto, "
                                 "got 'strong'")
    assert not bad.exists()


def test_threads_below_one_is_a_one_line_error(world, tmp_path, capsys):
    code, out = _scan(world, tmp_path, extra=["--threads", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "factrace: error: --threads must be at least 1, got 0"
    assert not out.exists()

# ask and explain ---------------------------------------------------------------------------------
@pytest.fixture
def two_threads():
    """PyTorch at two threads, and back to what it was after the test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_ask_prints_the_answer_and_writes_rankings_with_the_completion(store, world, tmp_path,
                                                                       capsys, monkeypatch,
                                                                       two_threads):
    import torch

    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "asked.jsonl"
    assert main(["ask", "--index", store.out, "Alba was born in", "--max-new-tokens", "4",
                 "--top-k", "3", "--out", str(out), "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    (row,) = [json.loads(line) for line in open(out)]
    assert list(row) == ["query_id", "doc_ids", "scores", "opponent_ids", "opponent_scores",
                         "prompt", "completion", "completion_ids", "span", "traced",
                         "proponent_tokens"]
    assert row["traced"] == "answer"
    assert row["query_id"] == "ask-1" and row["prompt"] == "Alba was born in"
    assert len(row["doc_ids"]) == 3 and row["completion"].strip()
    # the three best proponents are explained (explain-top 3), each with its top tokens
    assert all(1 <= len(t) <= 5 and {"token", "contribution"} == set(t[0])
               for t in row["proponent_tokens"])
    meta = json.loads(Path(str(out) + ".meta.json").read_text())
    assert meta["command"] == "ask" and meta["whitening"]["r_eval"] == "task default"
    printed = capsys.readouterr().out
    a, b = row["span"]
    assert f"traced: the answer, characters {a}:{b} {row['completion'][a:b]!r}" in printed
    # not a terminal: the traced span and the best proponent's best tokens marked in the text
    assert f"[[{row['completion'][a:b]}]]" in printed
    (line,) = [line for line in printed.splitlines() if f" {row['doc_ids'][0]} " in line]
    best = row["proponent_tokens"][0][0]["token"].strip()  # (adjacent marks run together)
    assert any(best in group for group in re.findall(r"\[\+([^\]]*)\]", line)), line
    texts = {r["id"]: r["text"] for r in world["rows"]}
    (line,) = [line for line in printed.splitlines() if f" {row['opponent_ids'][0]} " in line]
    assert texts[row["opponent_ids"][0].split("#")[0]][:20] in line  # a snippet of its text
    assert "proponents" in printed and "opponents" in printed
    assert all(d in printed for d in row["doc_ids"] + row["opponent_ids"])
    best = row["proponent_tokens"][0][0]
    assert f"{best['token']!r} {best['contribution']:+.3f}" in printed


def test_ask_reads_prompts_files(store, tmp_path):
    jsonl = _write(tmp_path / "p.jsonl", [json.dumps({"id": "a", "prompt": "Alba was born in"}),
                                          json.dumps({"prompt": "Corin was born in"})])
    text = _write(tmp_path / "p.txt", ["Alba was born in", "", "Corin was born in"])
    for prompts, ids in ((jsonl, ["a", "ask-2"]), (text, ["ask-1", "ask-3"])):
        out = tmp_path / f"{prompts.suffix[1:]}.jsonl"
        assert main(["ask", "--index", store.out, "--prompts", str(prompts), "--max-new-tokens",
                     "3", "--top-k", "2", "--explain-top", "0", "--out", str(out), "-q",
                     "--span", "whole"]) == 0
        rows = [json.loads(line) for line in open(out)]
        assert all(r["traced"] == "whole" and r["span"] == [0, len(r["completion"])]
                   for r in rows)
        assert [r["query_id"] for r in rows] == ids
        assert [r["prompt"] for r in rows] == ["Alba was born in", "Corin was born in"]
        assert all(r["proponent_tokens"] == [None, None] for r in rows)


def test_explain_prints_the_shaded_passage_and_writes_json(store, world, tmp_path, capsys,
                                                           two_threads):
    import torch

    out = tmp_path / "e.json"
    assert main(["explain", "--index", store.out, "--queries", world["queries"], "--query-id",
                 "q2", "--doc-id", "d5", "--out", str(out), "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    e = json.loads(out.read_text())
    assert {"score", "passage_tokens", "query_tokens", "remainder"} <= set(e)
    for key in ("passage_tokens", "query_tokens"):
        assert sum(t["contribution"] for t in e[key]) == pytest.approx(e["score"], rel=1e-4)
    text = {r["id"]: r["text"] for r in world["rows"]}["d5"]
    assert "".join(t["token"] for t in e["passage_tokens"]) == text
    printed = capsys.readouterr().out
    assert f"score {e['score']:+.4f}" in printed
    # not a terminal: the strongest tokens marked in the text ([+...] raises, [-...] lowers)
    assert re.search(r"\[\+[^\]]+\]", printed)
    assert text[:20] in re.sub(r"\[[+-]([^\]]*)\]", r"\1", printed)


def test_explain_reads_the_answers_of_ask_and_gives_the_scores_they_list(store, tmp_path,
                                                                          capsys):
    """explain --queries takes an ask --out file: the answers traced together, each as it was
    traced (its completion's token ids, the answer's span), so a proponent's and an
    opponent's scores are the ones the row lists; older rows without the ids also work."""
    prompts = _write(tmp_path / "p.jsonl", [json.dumps({"id": "a", "prompt": "Alba was born in"}),
                                            json.dumps({"id": "b", "prompt": "Corin was born in"})])
    asked = tmp_path / "asked.jsonl"
    assert main(["ask", "--index", store.out, "--prompts", str(prompts), "--max-new-tokens", "8",
                 "--top-k", "2", "--explain-top", "0", "--out", str(asked), "-q"]) == 0
    rows = {r["query_id"]: r for r in map(json.loads, open(asked))}
    assert rows["b"]["traced"] == "answer"
    old = _write(tmp_path / "old.jsonl", [json.dumps({k: v for k, v in r.items()
                                                      if k != "completion_ids"})
                                          for r in rows.values()])
    for answers, doc, score in ((asked, rows["b"]["doc_ids"][1], rows["b"]["scores"][1]),
                                (asked, rows["b"]["opponent_ids"][0],
                                 rows["b"]["opponent_scores"][0]),
                                (old, rows["b"]["doc_ids"][0], rows["b"]["scores"][0])):
        out = tmp_path / f"e-{answers.stem}-{doc}.json"
        assert main(["explain", "--index", store.out, "--queries", str(answers), "--query-id",
                     "b", "--doc-id", doc, "--out", str(out), "-q"]) == 0
        e = json.loads(out.read_text())
        assert e["score"] == pytest.approx(score, rel=1e-5)
        # the query's tokens are the answer's: they rebuild the traced characters
        a, b = rows["b"]["span"]
        assert "".join(t["token"] for t in e["query_tokens"]).strip() == \
            rows["b"]["completion"][a:b].strip()
    bad = _write(tmp_path / "bad.jsonl", [json.dumps({**rows["a"], "completion_ids": "x"})])
    assert main(["explain", "--index", store.out, "--queries", str(bad), "--query-id", "a",
                 "--doc-id", "d1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.jsonl:1" in err and "completion_ids" in err


@pytest.mark.parametrize("argv, message", [
    (["ask", ""], "prompt 'ask-1' is empty"),
    (["ask", "   "], "prompt 'ask-1' is empty"),
    (["ask"], "give one prompt, or --prompts FILE"),
    (["ask", "Alba was born in", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["ask", "Alba was born in", "--span", "3"], "expected START:END"),
    (["ask", "alba " * 40], "tokens; the context is 48 tokens"),
    (["ask", "Alba was born in", "--span", "2:1000"], "is outside the completion"),
    (["ask", "Alba was born in", "--model", "EOS"], "ended its completion at once"),
    (["explain", "--query-id", "nope", "--doc-id", "d1"], "has no query 'nope'"),
    (["explain", "--query-id", "q0", "--doc-id", "nope"], "has no row 'nope'"),
    (["ask", "Alba was born in", "--threads", "0"], "--threads must be at least 1, got 0"),
    (["explain", "--query-id", "q0", "--doc-id", "d1", "--threads", "0"],
     "--threads must be at least 1, got 0"),
])
def test_ask_and_explain_refuse_bad_input_with_one_line(store, world, eos_model, tmp_path,
                                                        capsys, argv, message):
    command, *rest = argv
    rest = [eos_model if a == "EOS" else a for a in rest]
    out = tmp_path / ("out.jsonl" if command == "ask" else "out.json")
    extra = ["--queries", world["queries"]] if command == "explain" else []
    assert main([command, "--index", store.out, *extra, *rest, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []

def test_gguf_model_through_build_and_trace_with_coverage_stated(world, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from ggufdir import write_llama_gguf

    gguf = write_llama_gguf(world["model"], tmp_path / "tiny.gguf")
    n_parameters = AutoModelForCausalLM.from_pretrained(world["model"]).num_parameters()
    store = str(tmp_path / "store")
    estimate = ["--second-moment", "estimate", "--estimate-examples", "16", "--dim", "64",
                "--train-examples", "16"]
    assert main(["index", "build", "--model", str(gguf), "--corpus", world["corpus"],
                 "--queries", world["queries"], "--out", store, *estimate]) == 0
    out = tmp_path / "t.jsonl"
    assert main(["trace", "--index", store, "--queries", world["queries"], "--out",
                 str(out)]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("coverage: ")]
    assert len(lines) == 2  # one per command that encodes
    assert f"{n_parameters / 1e3:.3g}k parameters in 2 blocks" in lines[0]
    manifest = json.loads((Path(store) / "manifest.json").read_text())
    assert manifest["config"]["model"] == str(gguf)
    assert manifest["config"]["encoder"]["coverage"]["parameters"] == n_parameters
    meta = json.loads(Path(str(out) + ".meta.json").read_text())
    assert meta["encoder"]["coverage"]["kinds"]["tracked"]["tensors"] == 14
    # quiet: no line
    assert main(["scan", "--model", str(gguf), "--corpus", world["corpus"], "--queries",
                 world["queries"], "--out", str(tmp_path / "s.jsonl"), *estimate, "-q"]) == 0
    assert "coverage: " not in capsys.readouterr().err


@pytest.mark.parametrize("with_state", [True, False])
def test_eval_tail_patch_states_the_step_it_took(world, tmp_path, capsys, with_state):
    rankings = _rankings(tmp_path / "r.jsonl", ["q0", "q1"])
    qrels = _write(tmp_path / "qrels.jsonl", [json.dumps({"query_id": "q0", "doc_id": "d1"}),
                                              json.dumps({"query_id": "q1", "doc_id": "d0"})])
    out = tmp_path / "metrics.json"
    step = ["--optimizer-state", world["optimizer"]] if with_state else ["--lr", "0.01"]
    assert main(["eval", "--rankings", str(rankings), "--qrels", str(qrels), "--tail-patch",
                 "--model", world["model"], "--corpus", world["corpus"], "--queries",
                 world["queries"], "--tail-patch-k", "1", "--tail-patch-queries", "2", "--out",
                 str(out), "-q", *step]) == 0
    written = json.loads(out.read_text())["tail_patch_step"]
    if with_state:
        assert written.startswith("one AdamW step, learning rate ")
        assert written.endswith("(the saved optimizer state)")
    else:
        assert written == "one SGD step, learning rate 0.01 (no optimizer state)"
    assert f"tail-patch: {written}" in capsys.readouterr().out
