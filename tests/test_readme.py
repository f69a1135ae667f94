"""The README's own commands, verbatim, in order, at the defaults, on a small world of the files
they name (``ckpt/``, ``corpus.parquet``, ``queries.jsonl``, …), so the README cannot rot.

Every ``bash`` block of README.md is split into commands (continuation lines joined) and each is
run by bash in the world's directory with this environment's ``factrace`` first on PATH; it must
exit 0 and write every ``--out`` it names. A block preceded by ``<!-- README test: skip: WHY -->``
is skipped, with WHY as the reason. ``factrace serve`` is started with a free ``--port`` added
(the one thing the test adds), asked for its page and ``/api/info``, and stopped. The ``python``
blocks run as scripts in the same directory after the commands.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hfdir import PLACES, WORDS, make_model_dir

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP = re.compile(r"<!--\s*README test:\s*skip:\s*(.*?)\s*-->", re.S)
BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.S)
#: seconds any one command may take (a command that hangs fails the test instead of the suite)
TIMEOUT = 600

pytestmark = pytest.mark.slow


def readme_blocks(text: str) -> list[tuple[str, str, str | None]]:
    """``(language, body, skip reason or None)`` of each bash/python block, in order."""
    blocks = []
    for match in BLOCK.finditer(text):
        before = text[:match.start()].rstrip()
        skip = SKIP.search(before[-400:]) if before.endswith("-->") else None
        blocks.append((match.group(1), match.group(2),
                       " ".join(skip.group(1).split()) if skip else None))
    return blocks


def commands(body: str) -> list[str]:
    """A bash block's commands: comment lines dropped, continuation lines joined."""
    out, current = [], ""
    for line in body.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line
        if current.endswith("\\"):
            current = current[:-1]
            continue
        out.append(" ".join(current.split()))
        current = ""
    return out


def test_the_readme_is_parsed_into_the_commands_it_shows():
    blocks = readme_blocks(README.read_text())
    bash = [c for lang, body, skip in blocks if lang == "bash" and skip is None
            for c in commands(body)]
    assert any(c.startswith("factrace index build ") and "--dim" not in c for c in bash)
    skipped = [skip for lang, body, skip in blocks if skip]
    assert any("Ray cluster" in s for s in skipped)
    sample = "a \\\n  b # c\n# comment\n\nd"
    assert commands(sample) == ["a b # c", "d"]


# the world ---------------------------------------------------------------------------------------
def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _world(root: Path) -> None:
    """The files the README's commands name, for a tiny Llama trained on its corpus."""
    people = [w.title() for w in WORDS]
    rows = []
    for i in range(60):
        who, where = people[i % len(people)], PLACES[i % len(PLACES)]
        filler = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(2 + i % 9))
        rows.append({"id": f"d{1200 + i}", "text": f"{who} was born in {where}. {filler}."})
    _jsonl(root / "corpus.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), root / "corpus.parquet")
    (root / "corpus").mkdir()
    _jsonl(root / "corpus" / "part-0.jsonl", rows[:30])
    _jsonl(root / "corpus" / "part-1.jsonl", rows[30:])
    _jsonl(root / "new_passages.jsonl",
           [{"id": f"n{i}", "text": f"{people[i]} moved to {PLACES[-1 - i]} in spring."}
            for i in range(6)])
    queries = [{"id": f"q{i}", "prompt": f"{people[i]} was born in",
                "target": f" {PLACES[i % len(PLACES)]}", "subject": people[i],
                "relation": "born_in"} for i in range(10)]
    _jsonl(root / "queries.jsonl", queries)
    _jsonl(root / "new_queries.jsonl", queries[5:])
    _jsonl(root / "facts.jsonl", queries[:8])
    _jsonl(root / "one_question.jsonl", queries[3:4])
    _jsonl(root / "q.jsonl", queries[:4])
    _jsonl(root / "qrels.jsonl", [{"query_id": q["id"], "doc_id": r["id"]} for q in queries
                                  for r in rows if r["text"].startswith(q["prompt"] + q["target"])])
    (root / "prompts.txt").write_text("Alba was born in\n\nThe capital of Veland is\n")
    model = make_model_dir(root, rows)
    model.rename(root / "ckpt")
    # the scaling study's checkpoints: an earlier one of the same run, a smaller model
    (root / "ckpt" / "trainer_state.json").write_text(json.dumps({"global_step": 8}))
    shutil.copytree(root / "ckpt", root / "ckpt_early")
    (root / "ckpt_early" / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    make_model_dir(root / "small", rows, width=16).rename(root / "ckpt_small")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outputs(command: str) -> list[str]:
    words = shlex.split(command, comments=True)
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--out"]


def _serve(command: str, cwd: Path, env: dict) -> None:
    port = _free_port()
    proc = subprocess.Popen(["bash", "-c", f"exec {command.split('#')[0]} --port {port}"],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        seen = []
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "listening on" in line:
                break
        assert "listening on" in "".join(seen), "".join(seen)
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(base + "/", timeout=60) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        with urllib.request.urlopen(base + "/api/info", timeout=60) as info:
            assert info.status == 200 and json.loads(info.read())
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_every_readme_command_runs_verbatim(tmp_path):
    _world(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    assert shutil.which("factrace", path=env["PATH"]), "factrace is not installed in this env"
    ran, skipped = [], []
    blocks = readme_blocks(README.read_text())
    for lang, body, skip in blocks:
        if lang != "bash":
            continue
        for command in commands(body):
            if skip is not None:
                skipped.append((command, skip))
                continue
            if command.startswith("factrace serve "):
                _serve(command, tmp_path, env)
                ran.append(command)
                continue
            done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, text=True,
                                  capture_output=True, timeout=TIMEOUT)
            assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            for out in _outputs(command):
                path = tmp_path / out
                assert path.exists() and (path.is_dir() or path.stat().st_size > 0), \
                    f"{command}: wrote no {out}"
            ran.append(command)
    for lang, body, skip in blocks:
        if lang == "python" and skip is None:
            script = tmp_path / "readme_example.py"
            script.write_text(body)
            done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, text=True,
                                  capture_output=True, timeout=TIMEOUT)
            assert done.returncode == 0, f"{body}\n{done.stderr[-3000:]}"
    # what the commands say they write, beyond their --out files
    assert (tmp_path / "store" / "manifest.json").exists()
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["complete"] and manifest.get("default_task") == "facts"
    assert [a for a in manifest.get("additions", []) if "new_passages" in json.dumps(a)]
    assert "--dim" not in " ".join(ran)
    assert len(ran) >= 15 and {c.split()[0] for c, _ in skipped} >= {"make"}
