"""The explorer's JSON API, through Starlette's TestClient (no browser)."""

import json
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from factrace.serve import ServeConfig, load_explorer
from factrace.serve.app import STATIC, create_app
from factrace.serve.data import load_sets

LOCAL = "http://127.0.0.1"  # a Host the app answers (the one it listens on)


@pytest.fixture(scope="module")
def client(explorer):
    return TestClient(create_app(explorer), base_url=LOCAL)


def _rankings(path):
    return {r["query_id"]: r for r in map(json.loads, open(path))}


def _get(client, url):
    response = client.get(url)
    assert response.status_code == 200, response.text
    return response.json()


def test_info_lists_the_sets_and_the_one_that_did_not_load(client):
    info = _get(client, "/api/info")
    sets = {s["name"]: s for s in info["sets"]}
    assert list(sets) == ["trackstar", "bm25", "ghost", "broken"]
    assert sets["trackstar"]["method"] == "trackstar" and sets["trackstar"]["queries"] == 6
    assert sets["bm25"]["method"] == "bm25" and sets["bm25"]["error"] is None
    assert sets["broken"]["error"].startswith(sets["broken"]["path"] + ":2: not valid JSON")
    assert info["has_qrels"] and info["can_ask"]
    assert info["default_set"] == "trackstar" and info["default_k"] == 10


def test_queries_are_searched_and_filtered(client, explorer, serve_inputs):
    every = _get(client, "/api/sets/trackstar/queries")
    assert [q["id"] for q in every["queries"]] == [f"q{i}" for i in range(6)]
    assert every["filters"] == {"relation": ["birthplace", "hometown"]}
    assert every["queries"][0]["prompt"] == "Alba was born in"
    assert every["queries"][0]["fields"] == {"relation": "birthplace"}

    found = _get(client, "/api/sets/trackstar/queries?search=ALBA")
    assert [q["id"] for q in found["queries"]] == ["q0"] and found["total"] == 6
    hometown = _get(client, "/api/sets/trackstar/queries?field.relation=hometown")
    assert [q["id"] for q in hometown["queries"]] == ["q1", "q3", "q5"]

    ranked = _rankings(serve_inputs["trackstar"])
    right = sorted(q for q, r in ranked.items() if explorer.qrels[q] & set(r["doc_ids"]))
    assert 0 < len(right) < 6
    yes = _get(client, "/api/sets/trackstar/queries?correct=yes")
    no = _get(client, "/api/sets/trackstar/queries?correct=no")
    assert [q["id"] for q in yes["queries"]] == right
    assert all(q["correct"] for q in yes["queries"])
    assert sorted(q["id"] for q in no["queries"]) == sorted(set(ranked) - set(right))
    # top 1 only: fewer (or as many) are correct
    top1 = _get(client, "/api/sets/trackstar/queries?correct=yes&k=1")
    assert set(q["id"] for q in top1["queries"]) <= set(right)


def test_a_query_shows_its_proponents_and_opponents_with_texts_and_gold(client, explorer,
                                                                        serve_inputs):
    ranked = _rankings(serve_inputs["trackstar"])
    texts = serve_inputs["texts"]
    for qid, row in ranked.items():
        d = _get(client, f"/api/sets/trackstar/queries/{qid}")
        assert [p["id"] for p in d["proponents"]] == row["doc_ids"]
        assert [p["score"] for p in d["proponents"]] == pytest.approx(row["scores"])
        assert [p["id"] for p in d["opponents"]] == row["opponent_ids"]
        assert d["query"]["target"] and d["ranked"] == len(row["doc_ids"])
        # every gold passage with its text and its rank in this ranking (None: not in it)
        assert [g["id"] for g in d["gold"]] == sorted(explorer.qrels[qid])
        for g in d["gold"]:
            ranks = [n for n, doc in enumerate(row["doc_ids"], 1) if doc.split("#")[0] == g["id"]]
            assert g["rank"] == (ranks[0] if ranks else None)
            assert g["text"] == texts[g["id"]] and not g["missing"]
        for p in d["proponents"] + d["opponents"]:
            doc = p["id"].split("#")[0]
            assert p["text"] == texts[doc] and not p["missing"]
            assert p["gold"] == (doc in explorer.qrels[qid])
            assert (p["window"] is None) == ("#" not in p["id"])
    assert any(p["gold"] for p in _get(client, "/api/sets/trackstar/queries/q2")["proponents"])


def test_ids_the_store_lacks_are_marked_missing(client):
    d = _get(client, "/api/sets/ghost/queries/q0")
    first, *rest = d["proponents"]
    assert first["id"] == "ghost-1" and first["missing"] and first["text"] is None
    assert not any(p["missing"] for p in rest)
    # the passage endpoint: an id neither the store nor a corpus has is not found
    response = client.get("/api/passages/ghost-1")
    assert response.status_code == 404 and response.json() == {"error": "no passage 'ghost-1'"}


def test_compare_marks_the_passages_both_methods_rank(client, serve_inputs):
    a, b = _rankings(serve_inputs["trackstar"]), _rankings(serve_inputs["bm25"])
    overlapping = [q for q in a if set(a[q]["doc_ids"]) & set(b[q]["doc_ids"])]
    assert overlapping, "the fixture should have a query the two methods share passages for"
    for qid in a:
        d = _get(client, f"/api/compare?a=trackstar&b=bm25&q={qid}")
        both = set(a[qid]["doc_ids"]) & set(b[qid]["doc_ids"])
        assert set(d["shared"]) == both
        assert [p["id"] for p in d["a"]["proponents"]] == a[qid]["doc_ids"]
        assert [p["id"] for p in d["b"]["proponents"]] == b[qid]["doc_ids"]
        for side in (d["a"], d["b"]):
            assert {p["id"] for p in side["proponents"] if p["shared"]} == both
    first = _get(client, "/api/compare?a=trackstar&b=bm25")
    assert first["query"]["id"] == "q0" and [q["id"] for q in first["common"]] == list(a)
    queries = {q["id"]: q for q in map(json.loads, open(serve_inputs["queries"]))}
    assert first["common"][2] == {"id": "q2", "prompt": queries["q2"]["prompt"],
                                  "target": queries["q2"]["target"], "completion": None}


@pytest.mark.parametrize("url, message", [
    ("/api/sets/nope/queries", "no rankings set 'nope'"),
    ("/api/sets/broken/queries", "did not load: "),
    ("/api/sets/trackstar/queries/q99", "has no query 'q99'"),
    ("/api/sets/trackstar/queries?k=ten", "k must be an integer"),
    ("/api/sets/trackstar/queries?correct=maybe", "correct must be yes, no or empty"),
    ("/api/compare?a=trackstar&b=nope", "no rankings set 'nope'"),
])
def test_bad_requests_get_one_error_message(client, url, message):
    response = client.get(url)
    assert response.status_code == 400
    assert list(response.json()) == ["error"] and message in response.json()["error"]


def test_ask_traces_a_span_and_the_tracer_is_opened_once(client, explorer):
    session = explorer.session
    whole = client.post("/api/ask", json={"prompt": "Alba was born in", "max_new_tokens": 4,
                                          "top_k": 3}).json()
    assert whole["completion"] and len(whole["proponents"]) == 3
    assert all(t["traced"] for t in whole["tokens"])
    assert "".join(t["token"] for t in whole["tokens"]) == whole["completion"]
    explained = [p for p in whole["proponents"] if "tokens" in p]
    assert len(explained) == 3 and all(p["tokens"] for p in explained)
    last = whole["tokens"][-1]
    span = f"{last['start']}:{last['end']}"
    part = client.post("/api/ask", json={"prompt": "Alba was born in", "max_new_tokens": 4,
                                         "top_k": 3, "span": span}).json()
    assert part["completion"] == whole["completion"] and part["span"] == [last["start"],
                                                                          last["end"]]
    assert [t["traced"] for t in part["tokens"]] == [False] * (len(part["tokens"]) - 1) + [True]
    calls = session.calls
    again = client.post("/api/ask", json={"prompt": "Alba was born in", "max_new_tokens": 4,
                                          "top_k": 3, "span": span}).json()
    assert again == part and session.calls == calls  # answered from the kept answers
    assert session.opened == 1


def test_explain_a_ranked_pair_and_a_proponent_of_an_answer(client, serve_inputs):
    row = _rankings(serve_inputs["trackstar"])["q2"]
    doc, score = row["doc_ids"][1], row["scores"][1]
    e = client.post("/api/explain", json={"set": "trackstar", "query_id": "q2",
                                          "doc_id": doc}).json()
    assert e["score"] == pytest.approx(score, rel=1e-4)  # with the queries it was traced with
    assert sum(t["contribution"] for t in e["passage_tokens"]) == pytest.approx(score, rel=1e-3)
    assert e["query"]["id"] == "q2" and e["passage"]["id"] == doc
    assert e["method"] == "trackstar"
    assert e["listed"] == {"set": "trackstar", "method": "trackstar", "list": "proponents",
                           "rank": 2, "score": score}

    answer = client.post("/api/ask", json={"prompt": "Corin was born in", "max_new_tokens": 3,
                                           "top_k": 2}).json()
    best = answer["proponents"][0]
    e = client.post("/api/explain", json={"prompt": "Corin was born in", "max_new_tokens": 3,
                                          "top_k": 2, "doc_id": best["id"]}).json()
    assert e["score"] == pytest.approx(best["score"], rel=1e-4)
    assert e["query"]["completion"] == answer["completion"]
    assert e["listed"] == {"set": None, "method": "ask (trackstar)", "list": "proponents",
                           "rank": 1, "score": best["score"]}


def test_explain_names_the_method_whose_score_it_splits(client, explorer, serve_inputs):
    """A BM25 row's listed score is BM25's; the split one is the store's TrackStar score."""
    row = _rankings(serve_inputs["bm25"])["q2"]
    n = next(i for i, d in enumerate(row["doc_ids"]) if not explorer.passages.get(d)["missing"])
    e = client.post("/api/explain", json={"set": "bm25", "query_id": "q2",
                                          "doc_id": row["doc_ids"][n]}).json()
    assert e["method"] == "trackstar"
    assert e["listed"] == {"set": "bm25", "method": "bm25", "list": "proponents", "rank": n + 1,
                           "score": row["scores"][n]}
    assert e["score"] != pytest.approx(row["scores"][n], rel=1e-2)
    assert sum(t["contribution"] for t in e["passage_tokens"]) == pytest.approx(e["score"],
                                                                                rel=1e-3)
    # a passage the set does not list for the query: no listed rank or score
    other = next(d for d in explorer.passages.store.ids if d not in row["doc_ids"]
                 and d not in row.get("opponent_ids", []))
    e = client.post("/api/explain", json={"set": "bm25", "query_id": "q2",
                                          "doc_id": other}).json()
    assert e["listed"] == {"set": "bm25", "method": "bm25", "list": None, "rank": None,
                           "score": None}


@pytest.mark.parametrize("body, message", [
    ({"prompt": "  "}, "the prompt is empty"),
    ({"prompt": "Alba was born in", "max_new_tokens": "many"}, "max_new_tokens must be"),
    ({"prompt": "Alba was born in", "max_new_tokens": 0}, "max_new_tokens must be 1 to"),
    ({"prompt": "Alba was born in", "span": "9"}, "expected START:END"),
])
def test_bad_questions_get_one_error_message(client, body, message):
    response = client.post("/api/ask", json=body)
    assert response.status_code == 400 and message in response.json()["error"]


@pytest.mark.parametrize("body, message", [
    ({"set": "trackstar", "query_id": "q2", "doc_id": "nope"}, "has no row 'nope'"),
    ({"set": "trackstar", "query_id": "q9", "doc_id": "d1"}, "has no query 'q9'"),
    ({"set": "trackstar", "query_id": "q2"}, "explain needs a doc_id"),
])
def test_bad_explanations_get_one_error_message(client, body, message):
    response = client.post("/api/explain", json=body)
    assert response.status_code == 400 and message in response.json()["error"]


def test_without_a_store_browsing_works_and_asking_says_why_not(serve_inputs, world):
    explorer = load_explorer(ServeConfig(rankings=[serve_inputs["bm25"]],
                                         corpus=[world["corpus"]]))
    client = TestClient(create_app(explorer), base_url=LOCAL)
    assert not _get(client, "/api/info")["can_ask"]
    d = _get(client, "/api/sets/bm25/queries/q0")
    assert d["query"]["id"] == "q0" and d["query"]["prompt"] is None  # no metadata, no --queries
    assert all(p["text"] and not p["missing"] for p in d["proponents"])
    response = client.post("/api/ask", json={"prompt": "Alba was born in"})
    assert response.status_code == 400 and "--index STORE" in response.json()["error"]


def test_a_compare_directory_gives_one_set_per_method_and_facts_become_fields(tmp_path,
                                                                            serve_inputs):
    out = tmp_path / "compare" / "rankings"
    out.mkdir(parents=True)
    for name in ("bm25", "trackstar"):
        (out / f"{name}.jsonl").write_text(open(serve_inputs[name]).read())
    queries = tmp_path / "queries.jsonl"
    queries.write_text(open(serve_inputs["queries"]).read())
    (tmp_path / "facts.jsonl").write_text("".join(
        json.dumps({"query_id": f"q{i}", "subject": f"s{i % 2}", "n_gold": 1}) + "\n"
        for i in range(6)))
    sets = load_sets([str(tmp_path / "compare")], str(queries))
    assert [(s.name, s.method) for s in sets] == [("bm25", "bm25"), ("trackstar", "trackstar")]
    assert sets[0].queries["q1"].fields == {"relation": "hometown", "subject": "s1", "n_gold": 1}


def test_the_page_loads_only_local_assets(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(r.startswith(("/static/", "#")) for r in refs), refs
    for name in ("app.js", "app.css"):
        assert client.get(f"/static/{name}").status_code == 200
        text = (STATIC / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_an_ask_rankings_file_is_browsed_with_its_prompts_and_explained(store, world,
                                                                        tmp_path):
    from factrace.cli import main

    asked = tmp_path / "asked.jsonl"
    assert main(["ask", "--index", store.out, "Alba was born in", "--max-new-tokens", "3",
                 "--top-k", "3", "--out", str(asked), "-q"]) == 0
    (row,) = map(json.loads, open(asked))
    explorer = load_explorer(ServeConfig(index=store.out, rankings=[str(asked)]))
    client = TestClient(create_app(explorer), base_url=LOCAL)
    (summary,) = _get(client, "/api/info")["sets"]
    assert summary["method"] == "ask (trackstar)" and summary["command"] == "ask"
    (q,) = _get(client, "/api/sets/asked/queries?search=alba")["queries"]
    assert q["prompt"] == "Alba was born in" and q["completion"] == row["completion"]
    d = _get(client, "/api/sets/asked/queries/ask-1")
    assert row["traced"] == "answer" and d["query"]["span"] == row["span"] is not None
    assert [p["top_tokens"] for p in d["proponents"]] == row["proponent_tokens"]
    e = client.post("/api/explain", json={"set": "asked", "query_id": "ask-1",
                                          "doc_id": row["doc_ids"][0]}).json()
    assert e["query"]["completion"] == row["completion"] and e["passage_tokens"]


def test_a_compare_output_directory_opens_on_its_own(compare_out, serve_inputs, world):
    """No --queries, --qrels or --corpus: compare's rankings name their queries (with the
    facts.jsonl beside them), qrels and corpus."""
    metas = sorted((compare_out / "rankings").glob("*.jsonl.meta.json"))
    assert {m.name.removesuffix(".jsonl.meta.json") for m in metas} >= {"trackstar", "bm25",
                                                                      "bm25+target"}
    explorer = load_explorer(ServeConfig(rankings=[str(compare_out)]))
    client = TestClient(create_app(explorer), base_url=LOCAL)
    info = _get(client, "/api/info")
    sets = {s["name"]: s for s in info["sets"]}
    assert sets["bm25+target"]["method"] == "bm25+target"
    assert sets["trackstar"]["method"] == "trackstar"
    assert sets["trackstar-paper"]["method"] == "trackstar-paper"
    assert info["has_qrels"] and info["qrels"] == Path(serve_inputs["qrels"]).name
    # TrackStar's rankings open first, although the files' order puts them last
    assert [s["name"] for s in info["sets"]] == ["bm25+target", "bm25", "trackstar-paper",
                                                  "trackstar"]
    assert info["default_set"] == "trackstar"
    assert info["corpora"] == [Path(world["corpus"]).name]
    for name in ("bm25", "trackstar"):
        listed = _get(client, f"/api/sets/{name}/queries")
        assert [q["prompt"] for q in listed["queries"]] == [
            json.loads(line)["prompt"] for line in open(world["queries"])]
        assert listed["filters"] == {"n_gold": [1, 2], "relation": ["born_in", "lives_in"],
                                     "subject": sorted(q["prompt"].split()[0] for q in
                                                       listed["queries"])}
        assert all(q["correct"] is not None for q in listed["queries"])
    born = _get(client, "/api/sets/bm25/queries?field.relation=lives_in")
    assert [q["id"] for q in born["queries"]] == ["q4", "q5"]
    d = _get(client, "/api/sets/bm25/queries/q0")
    assert d["query"]["target"] and all(p["text"] for p in d["proponents"])


def test_the_default_set_is_trackstar_else_the_first_loaded():
    from factrace.serve.data import RankingSet
    from factrace.serve.views import default_set

    broken = RankingSet("broken", "b.jsonl", "trackstar", error="not JSON")
    assert default_set([broken, RankingSet("bm25", "x", "bm25"),
                        RankingSet("run", "y", "trackstar")]) == "run"
    assert default_set([RankingSet("other", "x", "trackstar"),
                        RankingSet("trackstar", "y", "grad-cos")]) == "trackstar"
    assert default_set([broken, RankingSet("bm25", "x", "bm25"),
                        RankingSet("dense", "y", "dense")]) == "bm25"
    assert default_set([broken]) is None


def test_the_icon_is_served(client):
    for url in ("/favicon.ico", "/static/favicon.svg"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.headers["content-type"].startswith("image/svg+xml")
        assert response.text.startswith("<svg")
    assert '<link rel="icon" href="/static/favicon.svg"' in client.get("/").text


def test_a_traced_span_of_an_ask_row_reaches_the_page(store, tmp_path):
    from factrace.cli import main

    asked = tmp_path / "asked.jsonl"
    assert main(["ask", "--index", store.out, "Alba was born in", "--max-new-tokens", "3",
                 "--span", "0:2", "--top-k", "2", "--out", str(asked), "-q"]) == 0
    explorer = load_explorer(ServeConfig(index=store.out, rankings=[str(asked)]))
    client = TestClient(create_app(explorer), base_url=LOCAL)
    d = _get(client, "/api/sets/asked/queries/ask-1")
    assert d["query"]["span"] == [0, 2] == d["span"]
    e = client.post("/api/explain", json={"set": "asked", "query_id": "ask-1",
                                          "doc_id": d["proponents"][0]["id"]}).json()
    assert e["query"]["span"] == [0, 2]


def test_proponents_carry_their_kind_and_filter_by_it(compare_out, serve_inputs, world):
    """compare's queries carry their fact (facts.jsonl: subject, relation; the target is the
    object): every proponent has its kind, and ?kind= keeps the proponents of one."""
    client = TestClient(create_app(load_explorer(ServeConfig(rankings=[str(compare_out)]))),
                        base_url=LOCAL)
    d = _get(client, "/api/sets/bm25/queries/q0")
    subject, obj = d["query"]["fields"]["subject"].lower(), d["query"]["target"].strip().lower()
    assert d["kinds"] == ["entails", "object", "subject", "relation", "other"]
    counts = {}
    for p in d["proponents"]:
        words = p["text"].lower().replace(".", " ").split()
        if p["gold"] or (subject in words and obj in words):
            assert p["kind"] == "entails"
        elif subject not in words and obj not in words:
            assert p["kind"] == "relation"  # every world passage says "was born in"
        counts[p["kind"]] = counts.get(p["kind"], 0) + 1
    for kind in d["kinds"]:
        only = _get(client, f"/api/sets/bm25/queries/q0?kind={kind}")
        assert [p["kind"] for p in only["proponents"]] == [kind] * counts.get(kind, 0)
    response = client.get("/api/sets/bm25/queries/q0?kind=nope")
    assert response.status_code == 400 and "kind must be one of" in response.json()["error"]
    # queries without their fact: no kinds
    plain = load_explorer(ServeConfig(rankings=[serve_inputs["bm25"]],
                                      queries=serve_inputs["queries"], qrels=serve_inputs["qrels"],
                                      corpus=[world["corpus"]]))
    d = _get(TestClient(create_app(plain), base_url=LOCAL), "/api/sets/bm25/queries/q0")
    assert d["kinds"] == [] and all("kind" not in p for p in d["proponents"])
