"""``factrace serve`` on the command line: where it listens, and one-line errors."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from factrace.cli import main
from factrace.serve.guard import COOKIE

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_a_port_in_use_is_a_one_line_error(serve_inputs, capsys):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        code = main(["serve", "--index", serve_inputs["index"], "--rankings",
                     serve_inputs["trackstar"], "--port", str(port)])
    finally:
        taken.close()
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (f"factrace: error: cannot listen on 127.0.0.1:{port}: the port is in use "
                   "(choose another with --port)")


@pytest.mark.parametrize("argv, message", [
    ([], "give --index STORE, --rankings FILE, or both"),
    (["--rankings", "RANKINGS"], "give --corpus FILE (or --index STORE)"),
    (["--index", "NOWHERE"], "no encoding store at"),
    (["--rankings", "RANKINGS", "--corpus", "CORPUS", "--qrels", "RANKINGS"], "query_id"),
    (["--rankings", "RANKINGS", "--corpus", "CORPUS", "--port", "70000"], "--port must be"),
    (["--rankings", "RANKINGS", "--corpus", "CORPUS", "--token", "a b"], "--token must be 1 to "),
    (["--rankings", "RANKINGS", "--corpus", "CORPUS", "--token", ""], "--token must be 1 to "),
    (["--rankings", "RANKINGS", "--corpus", "CORPUS", "--max-queue", "-1"],
     "--max-queue must be 0 or more, got -1"),
    (["--rankings", "EMPTYDIR", "--corpus", "CORPUS"], "without rankings"),
])
def test_bad_inputs_are_one_line_errors(serve_inputs, world, tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    names = {"RANKINGS": serve_inputs["bm25"], "CORPUS": world["corpus"],
             "NOWHERE": str(tmp_path / "nowhere"), "EMPTYDIR": str(tmp_path / "empty")}
    code = main(["serve", *[names.get(a, a) for a in argv], "--port", "0"]
                if "--port" not in argv else ["serve", *[names.get(a, a) for a in argv]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("factrace: error:"), err
    assert message in err, err


def _served_app(monkeypatch, capsys, inputs, *argv):
    """``factrace serve ARGV`` up to running the server: the app it would serve, and what it
    said on stderr."""
    import uvicorn

    apps = []
    monkeypatch.setattr(uvicorn.Server, "run",
                        lambda server, sockets=None: apps.append(server.config.app))
    assert main(["serve", "--rankings", inputs["bm25"], "--qrels", inputs["qrels"],
                 "--corpus", inputs["corpus"], "--port", "0", *argv]) == 0
    (app,) = apps
    return app, capsys.readouterr().err


def test_off_loopback_a_token_is_generated_and_printed_once(monkeypatch, capsys, serve_inputs,
                                                            world):
    inputs = {**serve_inputs, "corpus": world["corpus"]}
    app, err = _served_app(monkeypatch, capsys, inputs, "--host", "0.0.0.0")
    listening, opening = err.strip().splitlines()
    assert listening.startswith("factrace serve: listening on http://0.0.0.0:")
    url = listening.split("listening on ")[1].split()[0]
    assert opening.startswith(f"factrace serve: open {url}?token=")
    token = opening.split("?token=")[1].split()[0]
    assert len(token) >= 32 and err.count(token) == 1
    # any name of the machine (an unspecified address): the token is the guard
    client = TestClient(app, base_url="http://explorer.lan:8765", follow_redirects=False)
    assert client.get("/api/info").status_code == 401
    assert client.get("/").status_code == 401
    assert client.get("/api/info", headers={"Authorization": f"Bearer {token}"}).json()["sets"]
    opened = client.get(f"/?token={token}")
    assert opened.status_code == 303 and opened.headers["set-cookie"].startswith(
        f"{COOKIE}={token};")
    assert client.get("/api/info").status_code == 200  # the cookie
    again, err = _served_app(monkeypatch, capsys, inputs, "--host", "0.0.0.0")
    assert token not in err  # a new one each time


def test_on_loopback_no_token_unless_given(monkeypatch, capsys, serve_inputs, world):
    inputs = {**serve_inputs, "corpus": world["corpus"]}
    app, err = _served_app(monkeypatch, capsys, inputs, "--max-queue", "1")
    assert "token" not in err and len(err.strip().splitlines()) == 1
    assert app.state.queue.max_waiting == 1
    client = TestClient(app, base_url="http://127.0.0.1:8765")
    assert client.get("/api/info").status_code == 200
    assert client.get("/api/info", headers={"Host": "evil.example:8765"}).status_code == 400
    app, err = _served_app(monkeypatch, capsys, inputs, "--token", "my.own-token")
    assert "my.own-token" not in err and "token" not in err
    client = TestClient(app, base_url="http://localhost:8765")
    assert client.get("/api/info").status_code == 401
    assert client.get("/api/info",
                      headers={"Authorization": "Bearer my.own-token"}).status_code == 200


@pytest.mark.slow
def test_serve_says_where_it_listens_and_warns_once_of_a_malformed_file(serve_inputs):
    """The real command in a process: one warning line for the malformed file, the address,
    and the API answering there."""
    argv = [sys.executable, "-m", "factrace.cli", "serve", "--index", serve_inputs["index"],
            "--rankings", serve_inputs["trackstar"], "--rankings", serve_inputs["broken"],
            "--qrels", serve_inputs["qrels"], "--port", "0"]
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while not any("listening on" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, lines
            lines.append(proc.stderr.readline())
        warning, listening = lines[-2:]
        assert warning.startswith(f"factrace: warning: {serve_inputs['broken']}:2: not valid "
                                  "JSON")
        assert len([line for line in lines if "broken.jsonl" in line]) == 1
        assert listening.startswith("factrace serve: listening on http://127.0.0.1:")
        url = listening.split("listening on ")[1].split()[0]
        with urllib.request.urlopen(url + "api/info", timeout=10) as response:
            info = json.load(response)
        assert [s["name"] for s in info["sets"]] == ["trackstar", "broken"]
        assert info["sets"][1]["error"]
    finally:
        proc.terminate()
        proc.wait(20)
