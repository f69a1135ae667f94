"""The explorer under hostile input: the access token off loopback, the Host check, JSON-only
POSTs, no directory in /api/info, no request value naming a file, hostile JSON and the limits,
the bounded queue of model calls, short error messages; and a property test over the JSON API
(random values for every field: never a server error)."""

import json
import sys
import threading
import time
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from factrace.errors import FactraceError
from factrace.serve.app import ASK_FIELDS, EXPLAIN_FIELDS, RETRY_AFTER, Explorer, create_app
from factrace.serve.guard import COOKIE, LOOPBACK_HOSTS, accepted_hosts, host_of
from factrace.serve.limits import MAX_BODY, MAX_K, MAX_PROMPT, SHOWN, shown
from factrace.serve.model import MAX_NEW_TOKENS

LOCAL = "http://127.0.0.1"
REMOTE = "192.0.2.7"  # an address off loopback (TEST-NET-1)
TOKEN = "s3cret-Token_1"
SECRET = "the secret text of a file the explorer never serves"


@pytest.fixture(scope="module")
def client(explorer):
    return TestClient(create_app(explorer), base_url=LOCAL)


@pytest.fixture(scope="module")
def remote_app(explorer):
    """The app as ``factrace serve --host 192.0.2.7`` makes it: a token needed."""
    return create_app(explorer, hosts=accepted_hosts(REMOTE), token=TOKEN)


def _remote(app, **kw) -> TestClient:
    return TestClient(app, base_url=f"http://{REMOTE}:8765", **kw)


def _post(client, url, body):
    """``body`` as JSON with every non-ASCII character escaped (so that a lone surrogate is
    sent as a hostile client would: ``\\udcff``)."""
    return client.post(url, content=json.dumps(body).encode(),
                       headers={"Content-Type": "application/json"})


def _error(response, status: int) -> str:
    """The one error message of a refused API request."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert list(body) == ["error"] and body["error"], body
    assert len(body["error"]) < 400, body["error"]
    return body["error"]


# the access token -------------------------------------------------------------------------------
GUARDED = ["/", "/api/info", "/api/sets/trackstar/queries", "/api/sets/trackstar/queries/q0",
           "/api/compare?a=trackstar&b=bm25", "/api/passages/d1", "/static/app.js",
           "/favicon.ico"]


@pytest.mark.parametrize("url", GUARDED)
def test_off_loopback_every_request_needs_the_token(remote_app, url):
    anonymous = _remote(remote_app)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": "Bearer " + TOKEN[:-1]},
                    {"Authorization": ("Bearer é" + TOKEN).encode("latin-1")},
                    {"Cookie": f"{COOKIE}=nope"}):
        refused = anonymous.get(url, headers=headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "trackstar" not in refused.text and "Alba" not in refused.text  # no data
        assert "needs its access token" in refused.text
        if url.startswith("/api/"):
            assert list(refused.json()) == ["error"]
    answered = anonymous.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answered.status_code == 200, answered.text


def test_off_loopback_a_question_needs_the_token_before_anything_is_read(remote_app, explorer):
    calls = explorer.session.calls
    refused = _remote(remote_app).post("/api/ask", json={"prompt": "Alba was born in"})
    assert _error(refused, 401).startswith("this explorer needs its access token")
    assert explorer.session.calls == calls


def test_the_page_opened_with_the_token_sets_a_cookie_for_its_own_api_calls(remote_app):
    browser = _remote(remote_app, follow_redirects=False)
    opened = browser.get(f"/?token={TOKEN}")
    assert opened.status_code == 303 and opened.headers["location"] == "/"  # token out of the URL
    cookie = opened.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert browser.get("/").status_code == 200  # the cookie, kept by the client
    assert browser.get("/api/info").json()["sets"]
    assert browser.post("/api/ask", json={"prompt": ""}).json() == {"error": "the prompt is empty"}
    # a wrong token in the address sets nothing; the API takes no token in its query
    stranger = _remote(remote_app, follow_redirects=False)
    assert stranger.get("/?token=wrong").status_code == 401
    assert "set-cookie" not in stranger.get("/?token=wrong").headers
    assert stranger.get(f"/api/info?token={TOKEN}").status_code == 401


def test_on_loopback_no_token_is_needed_unless_one_is_given(client, explorer):
    assert client.get("/api/info").status_code == 200
    guarded = TestClient(create_app(explorer, token=TOKEN), base_url=LOCAL)
    assert guarded.get("/api/info").status_code == 401
    assert guarded.get("/api/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code \
        == 200


# the Host header --------------------------------------------------------------------------------
@pytest.mark.parametrize("host, answered", [
    ("127.0.0.1", True), ("127.0.0.1:8765", True), ("localhost", True), ("LocalHost:80", True),
    ("[::1]", True), ("[::1]:8765", True), ("localhost.", True),
    ("evil.example", False), ("evil.example:8765", False), ("127.0.0.1.evil.example", False),
    ("localhost:8765:1", False), ("localhost:http", False), ("[::1]x", False), ("", False),
    (REMOTE, False), ("[::2]:80", False),
])
def test_on_loopback_only_a_loopback_host_is_answered(client, host, answered):
    response = client.get("/api/info", headers={"Host": host})
    if answered:
        assert response.status_code == 200
    else:
        assert _error(response, 400).startswith("this server does not answer for host")
        page = client.get("/", headers={"Host": host})
        assert page.status_code == 400 and "<html" not in page.text


def test_off_loopback_the_host_is_the_address_listened_on(remote_app):
    browser = _remote(remote_app)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert browser.get("/api/info", headers=bearer).status_code == 200
    for host in ("localhost", "127.0.0.1:8765", "evil.example"):
        assert browser.get("/api/info", headers={**bearer, "Host": host}).status_code == 400


def test_the_hosts_accepted_for_an_address():
    assert accepted_hosts("127.0.0.1") == LOOPBACK_HOSTS
    assert accepted_hosts("localhost", "::1") == LOOPBACK_HOSTS
    assert accepted_hosts("explorer.lan", "10.1.2.3") == {"explorer.lan", "10.1.2.3"}
    assert accepted_hosts("::ffff:10.0.0.1") == {"[::ffff:a00:1]"}
    assert accepted_hosts("0.0.0.0") is None and accepted_hosts("::") is None  # any: the token
    assert host_of("[::1]:80") == "[::1]" and host_of("Example.ORG.:8080") == "example.org"
    assert host_of("a:b") == "" and host_of("[::1") == ""


# POST bodies ------------------------------------------------------------------------------------
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonp",
                                          "text/json"])
@pytest.mark.parametrize("url", ["/api/ask", "/api/explain"])
def test_a_post_body_must_be_sent_as_json(client, explorer, url, content_type):
    calls = explorer.session.calls
    body = json.dumps({"prompt": "Alba was born in", "doc_id": "d1"})
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = client.post(url, content=body, headers=headers)
    assert _error(response, 415) == ("a POST body must be JSON, sent with Content-Type: "
                                     "application/json")
    assert explorer.session.calls == calls
    sent = client.post(url, content=json.dumps({"prompt": ""}),
                       headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert sent.status_code == 400 and "415" not in sent.text


# no directory of the server's -------------------------------------------------------------------
def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_info_names_files_without_their_directories(client, serve_inputs):
    info = client.get("/api/info")
    root = str(serve_inputs["root"])
    assert root not in info.text and "/tmp" not in info.text
    assert not [s for s in _strings(info.json()) if "/" in s]
    sets = {s["name"]: s for s in info.json()["sets"]}
    assert sets["trackstar"]["path"] == "trackstar.jsonl"
    assert sets["trackstar"]["queries_path"] == "queries.jsonl"
    assert sets["broken"]["error"].startswith("broken.jsonl:2: not valid JSON")
    assert info.json()["qrels"] == "qrels.jsonl" and info.json()["index"]
    for url in ("/api/sets/trackstar/queries", "/api/sets/trackstar/queries/q0",
                "/api/sets/broken/queries"):
        assert root not in client.get(url).text, url


def test_an_error_naming_a_file_names_it_without_its_directory(client):
    from factrace.serve.data import RankingSet, without_directories

    s = RankingSet("x", "/srv/private/x.jsonl", error="/srv/private/x.jsonl:2: not valid JSON "
                   "(see /srv/other/y.meta.json, or ./z.jsonl)")
    assert s.summary()["path"] == "x.jsonl"
    assert s.summary()["error"] == "x.jsonl:2: not valid JSON (see y.meta.json, or ./z.jsonl)"
    assert without_directories("/a/b/store has no row 'd1': START:END") == (
        "store has no row 'd1': START:END")
    e = client.post("/api/explain", json={"prompt": "Alba was born in", "doc_id": "nope"})
    assert _error(e, 400) == "the store has no row 'nope'"
    assert "/" not in _error(client.get("/api/sets/broken/queries"), 400)


# no request value names a file ------------------------------------------------------------------
class Opened:
    """The files the process opens while recording (an audit hook: every thread)."""

    def __init__(self):
        self.recording, self.paths = False, []
        sys.addaudithook(self._hook)

    def _hook(self, event, args):
        if self.recording and event == "open" and isinstance(args[0], str | bytes):
            self.paths.append(str(args[0]))

    def __enter__(self):
        self.paths, self.recording = [], True
        return self

    def __exit__(self, *exc):
        self.recording = False


@pytest.fixture(scope="module")
def opened():
    return Opened()


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    path = tmp_path_factory.mktemp("private") / "secret.jsonl"
    path.write_text(json.dumps({"id": "d1", "text": SECRET}) + "\n")
    return path


HOSTILE = ["../../../../../../etc/passwd", "/etc/passwd", "SECRET", "../SECRET", "..%2F..%2Fx",
           "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "....//....//etc/passwd", "a\x00b", "\x00",
           "%00", "\udcff\udcfe", "\ufffd\ufffe", "x" * 5000, "file:///etc/passwd",
           "C:\\Windows\\win.ini", "~/.ssh/id_rsa"]


def _hostile(value, secret):
    return value.replace("SECRET", str(secret))


def _get_urls(v):
    q = quote(v, safe="", errors="surrogatepass")
    return [f"/api/sets/{q}/queries", f"/api/sets/trackstar/queries/{q}", f"/api/passages/{q}",
            f"/api/compare?a={q}&b=bm25", f"/api/compare?a=trackstar&b=bm25&q={q}",
            f"/api/sets/trackstar/queries?k={q}", f"/api/sets/trackstar/queries?correct={q}",
            f"/static/{q}", f"/api/sets/trackstar/queries/q0?k={q}"]


def _search_urls(v):
    """A search and a filter: matched against the loaded queries (none matches)."""
    q = quote(v, safe="", errors="surrogatepass")
    return [f"/api/sets/trackstar/queries?search={q}",
            f"/api/sets/trackstar/queries?field.{q}={q}",
            f"/api/sets/trackstar/queries?field.relation={q}"]


def _post_bodies(v):
    return [("/api/explain", {"set": v, "query_id": "q0", "doc_id": "d1"}),
            ("/api/explain", {"set": "trackstar", "query_id": v, "doc_id": "d1"}),
            ("/api/explain", {"set": "trackstar", "query_id": "q0", "doc_id": v}),
            ("/api/explain", {"prompt": "Alba was born in", "doc_id": v}),
            ("/api/ask", {"prompt": "Alba was born in", "span": v})]


@pytest.mark.parametrize("value", HOSTILE)
def test_no_request_value_becomes_a_file_path(client, explorer, opened, secret, value):
    value = _hostile(value, secret)
    client.get("/api/passages/d1")  # the store's ids, read once before recording
    calls = explorer.session.calls
    with opened:
        responses = [client.get(url) for url in _get_urls(value)]
        responses += [_post(client, url, body) for url, body in _post_bodies(value)]
        searches = [client.get(url) for url in _search_urls(value)]
    for response in searches:
        assert response.status_code in (200, 400), response.text[:200]
        assert response.status_code == 400 or response.json()["queries"] == []
    for response in responses:
        assert 400 <= response.status_code < 500, (response.request.url, response.text[:200])
        assert SECRET not in response.text and "root:" not in response.text
        assert len(response.text) < 500, response.text  # a short message, not a page of data
    assert opened.paths == [], opened.paths  # not one file read (no static file matched)
    assert explorer.session.calls == calls
    with opened:  # (what the hook sees: the page's script, read to be served)
        assert client.get("/static/app.js").status_code == 200
    assert [p for p in opened.paths if p.endswith("app.js")], opened.paths


def test_a_non_utf8_body_or_path_is_refused(client):
    raw = b'{"prompt": "Alba \xff was born in"}'
    response = client.post("/api/ask", content=raw, headers={"Content-Type": "application/json"})
    assert _error(response, 400) == "the request body is not UTF-8"
    assert _error(client.get("/api/passages/%FF%FE"), 404) == "no passage '\ufffd\ufffd'"
    assert _error(client.get("/api/sets/%C0%AE%C0%AE/queries"), 400).startswith(
        "no rankings set '\ufffd")


# hostile JSON and the limits --------------------------------------------------------------------
ASK = {"prompt": "Alba was born in", "max_new_tokens": 2, "top_k": 2}
DIGITS = "9" * 5000


@pytest.mark.parametrize("change, message", [
    ({"span": 5}, "span must be a string, got 5"),
    ({"span": [0, 2]}, "span must be a string, got a list"),
    ({"span": {"start": 0}}, "span must be a string, got an object"),
    ({"span": True}, "span must be a string, got true"),
    ({"span": "0:" + DIGITS}, "span is too long (5002 characters; at most 24)"),
    ({"span": "x" * 20}, "--span 'xxxxxxxxxxxxxxxxxxxx': expected START:END"),
    ({"top_k": True}, "top_k must be an integer, got true"),
    ({"top_k": 2.9}, "top_k must be an integer, got 2.9"),
    ({"top_k": 2.0}, "top_k must be an integer, got 2.0"),
    ({"top_k": "5"}, "top_k must be an integer, got '5'"),
    ({"top_k": 0}, f"top_k must be 1 to {MAX_K}, got 0"),
    ({"top_k": -1}, f"top_k must be 1 to {MAX_K}, got -1"),
    ({"top_k": MAX_K + 1}, f"top_k must be 1 to {MAX_K}, got {MAX_K + 1}"),
    ({"top_k": 10 ** 40}, f"top_k must be 1 to {MAX_K}, got a very large integer"),
    ({"top_k": [1]}, "top_k must be an integer, got a list"),
    ({"max_new_tokens": 2.9}, "max_new_tokens must be an integer, got 2.9"),
    ({"max_new_tokens": True}, "max_new_tokens must be an integer, got true"),
    ({"max_new_tokens": 0}, f"max_new_tokens must be 1 to {MAX_NEW_TOKENS}, got 0"),
    ({"max_new_tokens": MAX_NEW_TOKENS + 1},
     f"max_new_tokens must be 1 to {MAX_NEW_TOKENS}, got {MAX_NEW_TOKENS + 1}"),
    ({"max_new_tokens": {"n": 2}}, "max_new_tokens must be an integer, got an object"),
    ({"prompt": "a" * (MAX_PROMPT + 1)},
     f"prompt is too long ({MAX_PROMPT + 1} characters; at most {MAX_PROMPT})"),
    ({"prompt": None}, "prompt must be a string, got null"),
    ({"prompt": ["Alba"] * 1000}, "prompt must be a string, got a list"),
    ({"prompt": " \n\t"}, "the prompt is empty"),
    ({"prompt": "Alba\x00 was born in"}, "prompt must not contain a NUL character"),
    ({"prompt": "Alba \udcff was born in"}, "prompt is not valid UTF-8 text"),
    ({"temperature": 2}, "unknown field 'temperature' (fields: max_new_tokens, prompt, span, "
                         "top_k)"),
])
def test_hostile_fields_of_a_question_are_refused(client, explorer, change, message):
    calls = explorer.session.calls
    error = _error(_post(client, "/api/ask", {**ASK, **change}), 400)
    assert error.startswith(message), error
    assert explorer.session.calls == calls


@pytest.mark.parametrize("raw, message", [
    ('{"prompt": "Alba", "max_new_tokens": Infinity}', "Infinity is not a JSON number"),
    ('{"prompt": "Alba", "max_new_tokens": -Infinity}', "-Infinity is not a JSON number"),
    ('{"prompt": "Alba", "top_k": NaN}', "NaN is not a JSON number"),
    ('{"prompt": "Alba", "top_k": 1e999}', "'1e999' is too large a number"),
    ('{"prompt": "Alba", "top_k": 1' + DIGITS + "}", "Exceeds the limit"),
    ('{"prompt": "Alba", "top_k": ' + "[" * 30_000 + "]" * 30_000 + "}",
     "the request body is nested too deeply"),
    ("[" * 30_000 + "]" * 30_000, "the request body is nested too deeply"),
    ('{"prompt": "Alba"', "the request body is not JSON"),
    ("", "the request body is not JSON"),
    ('["Alba was born in"]', "the request body must be a JSON object"),
    ('"Alba was born in"', "the request body must be a JSON object"),
    ("null", "the request body must be a JSON object"),
])
@pytest.mark.parametrize("url", ["/api/ask", "/api/explain"])
def test_hostile_json_is_a_400_not_a_server_error(client, raw, message, url):
    response = client.post(url, content=raw.encode(),
                           headers={"Content-Type": "application/json"})
    assert message in _error(response, 400)


def test_a_body_over_the_limit_is_refused_unread(client):
    deep = "[" * 100_000 + "]" * 100_000
    for raw in (deep, json.dumps({"prompt": "a" * MAX_BODY})):
        response = client.post("/api/ask", content=raw.encode(),
                               headers={"Content-Type": "application/json"})
        assert _error(response, 413) == (f"the request body is too large (at most {MAX_BODY} "
                                         "bytes)")


@pytest.mark.parametrize("body, message", [
    ({"doc_id": 5, "set": "trackstar", "query_id": "q0"}, "doc_id must be a string, got 5"),
    ({"set": "trackstar", "query_id": "q0"}, "explain needs a doc_id"),
    ({"set": ["trackstar"], "query_id": "q0", "doc_id": "d1"}, "set must be a string"),
    ({"set": "trackstar", "query_id": 0, "doc_id": "d1"}, "query_id must be a string, got 0"),
    ({"set": "trackstar", "query_id": "q0", "doc_id": "d" * 513}, "doc_id is too long"),
    ({"prompt": "Alba was born in", "doc_id": "d1", "top_k": 1.5}, "top_k must be an integer"),
    ({"set": "trackstar", "query_id": "q0", "doc_id": "d1", "k": 3}, "unknown field 'k'"),
])
def test_hostile_fields_of_an_explanation_are_refused(client, explorer, body, message):
    calls = explorer.session.calls
    assert _error(client.post("/api/explain", json=body), 400).startswith(message)
    assert explorer.session.calls == calls


@pytest.mark.parametrize("query, message", [
    ("k=-1", f"k must be 1 to {MAX_K}, got -1"), ("k=0", f"k must be 1 to {MAX_K}, got 0"),
    (f"k={MAX_K + 1}", f"k must be 1 to {MAX_K}, got {MAX_K + 1}"),
    ("k=1.5", "k must be an integer, got '1.5'"), ("k=true", "k must be an integer, got 'true'"),
    ("k=" + DIGITS, "k must be an integer, got '99999"),
    ("search=" + "a" * 1001, "search is too long (1001 characters; at most 1000)"),
    ("&".join(f"field.f{n}=v" for n in range(21)), "at most 20 field filters, got 21"),
])
def test_query_parameters_out_of_their_limits_are_refused(client, query, message):
    urls = ["/api/sets/trackstar/queries"]
    if query.startswith("k="):
        urls += ["/api/sets/trackstar/queries/q0", "/api/compare?a=trackstar&b=bm25"]
    for url in urls:
        assert _error(client.get(f"{url}&{query}" if "?" in url else f"{url}?{query}"),
                      400).startswith(message)


def test_values_at_the_limits_are_answered(client):
    assert client.get(f"/api/sets/trackstar/queries?k={MAX_K}").status_code == 200
    assert client.get("/api/sets/trackstar/queries?k=1").status_code == 200
    at = client.post("/api/ask", json={**ASK, "top_k": MAX_K, "max_new_tokens": 1})
    assert at.status_code == 200 and at.json()["proponents"]
    # the prompt's length is within the limit; the model's context is the next refusal
    long = client.post("/api/ask", json={**ASK, "prompt": "a " * (MAX_PROMPT // 2)})
    assert "the context is" in _error(long, 400)


# short messages ---------------------------------------------------------------------------------
def test_an_error_shows_at_most_a_hundred_characters_of_the_input(client):
    assert shown("ab") == "'ab'" and shown("a" * 500) == repr("a" * SHOWN) + "…"
    assert shown(10 ** 400) == "a very large integer" and shown([[1]]) == "a list"
    long = "z" * 3000
    for response in (client.get(f"/api/sets/{long}/queries"),
                     client.get(f"/api/sets/trackstar/queries/{long[:500]}"),
                     client.get(f"/api/sets/trackstar/queries?correct={long}"),
                     client.get(f"/api/compare?a=trackstar&b={long[:500]}"),
                     client.post("/api/ask", json={"prompt": "Alba", long: 1}),
                     client.post("/api/ask", json={"prompt": "Alba", "span": long[:20]}),
                     client.post("/api/explain", json={"set": long[:500], "query_id": "q0",
                                                       "doc_id": "d1"})):
        error = response.json()["error"]
        assert "z" * (SHOWN + 1) not in error and len(error) < 300, error


# the queue of model calls -----------------------------------------------------------------------
class Blocking:
    """A model session whose calls wait until ``release`` is set."""

    method = "blocking"

    def __init__(self):
        self.release = threading.Event()

    def ask(self, *args, **kwargs):
        assert self.release.wait(30)
        raise FactraceError("released")

    def explain(self, *args, **kwargs):
        return self.ask()


def test_a_full_queue_answers_503_with_retry_after(explorer):
    session = Blocking()
    app = create_app(Explorer(sets=explorer.sets, qrels={}, passages=explorer.passages,
                              session=session), max_queue=2)
    client = TestClient(app, base_url=LOCAL)
    queue = app.state.queue
    answers = []

    def ask(n):
        answers.append(client.post("/api/ask", json={"prompt": f"question {n}"}))

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(3)]  # 1 runs, 2 wait
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while queue.admitted_now < 3:
        assert time.monotonic() < deadline, queue.admitted_now
        time.sleep(0.01)
    try:
        for url, body in (("/api/ask", {"prompt": "one more"}),
                          ("/api/explain", {"set": "trackstar", "query_id": "q0",
                                            "doc_id": "d1"})):
            busy = client.post(url, json=body)
            assert _error(busy, 503) == ("the model is busy (2 questions waiting); try again "
                                         "shortly")
            assert busy.headers["retry-after"] == str(RETRY_AFTER)
        # what needs no model is answered meanwhile, and a bad question is refused as such
        assert client.get("/api/info").status_code == 200
        assert _error(client.post("/api/ask", json={"prompt": ""}), 400) == "the prompt is empty"
    finally:
        session.release.set()
        for t in threads:
            t.join(30)
    assert [a.json() for a in answers] == [{"error": "released"}] * 3
    assert queue.admitted_now == 0
    assert _error(client.post("/api/ask", json={"prompt": "again"}), 400) == "released"


# random JSON: never a server error --------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20) | st.sampled_from(["\udcff", "a\x00b", "\ud800x", "../x"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6)


ids = st.sampled_from(["", "q0", "q3", "q9", "d1", "ghost-1", "trackstar", "../bm25"])
question = {"span": st.from_regex(r"\d{0,2}:\d{0,2}", fullmatch=True)
            | st.sampled_from(["answer", "whole", "", None]),
            "max_new_tokens": st.integers(1, 3) | st.sampled_from([-1, 0, MAX_NEW_TOKENS + 1]),
            "top_k": st.integers(1, 3) | st.sampled_from([-1, 0, MAX_K, MAX_K + 1])}
asked = st.fixed_dictionaries({"prompt": st.sampled_from(["Alba was born in", "Corin was born in",
                                                          " "]) | st.text(min_size=1, max_size=20)},
                              optional=question)
doc_id = (st.integers(0, 60).map(lambda n: f"d{n}")
          | st.tuples(st.integers(0, 60), st.integers(0, 2)).map(lambda t: f"d{t[0]}#{t[1]}")
          | ids)
explained = (st.tuples(asked, doc_id).map(lambda t: {**t[0], "doc_id": t[1]})
             | st.fixed_dictionaries({"set": st.sampled_from(["trackstar", "bm25", "ghost",
                                                              "broken"]) | ids,
                                      "query_id": st.sampled_from(["q0", "q2", "q5"]) | ids,
                                      "doc_id": doc_id}))


def one_hostile(bodies, fields):
    """A body of ``bodies`` with one of ``fields`` set to any JSON value."""
    return st.tuples(bodies, st.sampled_from(sorted(fields)), json_values).map(
        lambda t: {**t[0], t[1]: t[2]})


anything = st.dictionaries(st.sampled_from(sorted(EXPLAIN_FIELDS)) | st.text(max_size=8),
                           json_values, max_size=4) | json_values
requests = st.one_of(
    st.tuples(st.just("/api/ask"), asked | one_hostile(asked, ASK_FIELDS)),
    st.tuples(st.just("/api/explain"), explained | one_hostile(explained, EXPLAIN_FIELDS)),
    st.tuples(st.sampled_from(["/api/ask", "/api/explain"]), anything))
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(request=requests)
def test_random_json_bodies_never_give_a_server_error(client, request):
    """A question or explanation, each field valid, or one of them (or all) any JSON value."""
    url, body = request
    response = _post(client, url, body)
    assert response.status_code < 500, (body, response.text[:300])
    assert response.status_code == 200 or len(response.json()["error"]) < 400


@FUZZ
@given(name=ids | st.text(max_size=20), qid=ids | st.text(max_size=20),
       k=st.text(max_size=6) | st.integers(-5, 2000).map(str),
       search=st.text(max_size=20), correct=st.sampled_from(["yes", "no", ""]) | st.text())
def test_random_query_parameters_never_give_a_server_error(client, name, qid, k, search, correct):
    n, q = quote(name, safe=""), quote(qid, safe="")
    params = f"k={quote(k)}&search={quote(search)}&correct={quote(correct)}"
    for url in (f"/api/sets/{n}/queries?{params}", f"/api/sets/{n}/queries/{q}?{params}",
                f"/api/compare?a={n}&b=bm25&q={q}&{params}", f"/api/passages/{q}"):
        response = client.get(url)
        assert response.status_code < 500, (url, response.text[:300])
