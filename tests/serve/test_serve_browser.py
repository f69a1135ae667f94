"""The explorer in a real headless Chromium (Debian's chromium and chromedriver, driven by
Selenium), against the app served by uvicorn on a loopback port: browse and filter, open a
query, compare two methods, ask and trace a span, explain a proponent, deep links, errors.
Each test saves screenshots under its tmp_path."""

import json
import os
import shutil
from urllib.parse import parse_qs, urlparse

import pytest

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT = 90  # seconds: the first question loads the model

LOCAL = "http://127.0.0.1"  # a Host the app answers (the one it listens on)


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed (.ci/run installs them)")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-proxy-server"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, live_server, tmp_path):
    """Open ``#/route`` and wait until the view has rendered; ``page.shot(name)`` saves a
    screenshot."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    class Page:
        driver = browser
        url = live_server

        def open(self, route, at=None):
            """``at``: the server's URL (default: the explorer of every input)."""
            browser.get("about:blank")
            browser.get((at or live_server) + route)
            self.until(lambda d: d.execute_script(
                "return document.getElementById('view').dataset.ready === '1'"))

        def until(self, condition, timeout=WAIT):
            # an element replaced while the condition reads it: read again
            return WebDriverWait(browser, timeout, ignored_exceptions=[
                StaleElementReferenceException]).until(condition)

        def css(self, selector):
            return browser.find_elements("css selector", selector)

        def texts(self, selector):
            return [e.text for e in self.css(selector)]

        def route(self):
            fragment = urlparse(browser.current_url).fragment
            name, _, query = fragment.partition("?")
            return name, {k: v[0] for k, v in parse_qs(query).items()}

        def shot(self, name):
            """Save a screenshot, after checking the page shows no JavaScript null."""
            shown = browser.find_element("id", "view").text
            assert not {"null", "undefined"} & set(shown.split()), shown
            assert browser.save_screenshot(str(tmp_path / f"{name}.png"))

    return Page()


def _rows(path):
    return {r["query_id"]: r for r in map(json.loads, open(path))}


def _ids(page, selector):
    return [e.get_attribute("data-id") or e.get_attribute("data-doc") for e in page.css(selector)]


def test_browse_filter_and_open_a_query(page, serve_inputs, explorer):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    page.open("#/browse?set=trackstar")
    assert _ids(page, "li.query") == [f"q{i}" for i in range(6)]
    assert page.texts("#count") == ["6 of 6 queries"]
    # the malformed file: one message, naming the file and line
    (banner,) = page.css(".load-error")
    assert "broken.jsonl:2: not valid JSON" in banner.text
    assert not page.css("#error:not([hidden])")

    page.css("#search")[0].send_keys("alba")
    page.until(lambda d: _ids(page, "li.query") == ["q0"])
    assert page.route()[1]["search"] == "alba"
    page.css("#search")[0].send_keys(Keys.CONTROL, "a")
    page.css("#search")[0].send_keys(Keys.BACKSPACE)
    page.until(lambda d: len(page.css("li.query")) == 6)

    ranked = _rows(serve_inputs["trackstar"])
    wrong = [q for q, r in ranked.items() if not explorer.qrels[q] & set(r["doc_ids"])]
    assert [o.text for o in Select(page.css("#correct")[0]).options] == [
        "any gold rank", "gold in top 10", "no gold in top 10"]
    Select(page.css("#correct")[0]).select_by_value("no")
    page.until(lambda d: _ids(page, "li.query") == wrong)
    assert all(b.text == "no gold in top 10" for b in page.css("li.query .badge"))
    Select(page.css("#correct")[0]).select_by_value("")
    Select(page.css("#filter-relation")[0]).select_by_value("hometown")
    page.until(lambda d: _ids(page, "li.query") == ["q1", "q3", "q5"])
    assert page.route() == ("/browse", {"set": "trackstar", "f.relation": "hometown"})
    Select(page.css("#filter-relation")[0]).select_by_value("birthplace")
    page.until(lambda d: _ids(page, "li.query") == ["q0", "q2", "q4"])
    page.shot("filtered")

    page.css("li.query[data-id='q4']")[0].click()
    page.until(lambda d: len(page.css("#proponents li")) == len(ranked["q4"]["doc_ids"]))
    assert _ids(page, "#proponents li") == ranked["q4"]["doc_ids"]
    assert _ids(page, "#opponents li") == ranked["q4"]["opponent_ids"]
    gold = [e.get_attribute("data-doc") for e in page.css("#proponents li.gold")]
    assert gold and set(gold) <= explorer.qrels["q4"]
    assert all(e.find_elements("css selector", ".badge.gold") for e in page.css("li.gold"))
    target = "Ysolde"  # q4's target, highlighted wherever a passage says it
    marks = page.texts("#detail mark.target")
    assert marks and all(m.lower() == target.lower() for m in marks)
    texts = serve_inputs["texts"]
    first = page.css("#proponents li .text")[0].text
    assert first == texts[ranked["q4"]["doc_ids"][0].split("#")[0]]
    name, params = page.route()
    assert params["q"] == "q4" and params["f.relation"] == "birthplace"
    page.shot("query")

    # the URL reopens the view: the same filters and the same query
    url = page.driver.current_url
    page.open("#/compare")
    page.driver.get(url)
    page.until(lambda d: _ids(page, "#proponents li") == ranked["q4"]["doc_ids"])
    assert _ids(page, "li.query") == ["q0", "q2", "q4"]
    assert page.css("li.query.selected")[0].get_attribute("data-id") == "q4"


def test_passages_the_store_lacks_are_marked_missing(page, serve_inputs):
    page.open("#/browse?set=ghost&q=q0")
    page.until(lambda d: page.css("#proponents li"))
    first, *rest = page.css("#proponents li")
    assert first.get_attribute("data-doc") == "ghost-1"
    assert "missing" in first.get_attribute("class").split()
    assert "not in the store or its corpus" in first.text
    assert not any("missing" in e.get_attribute("class").split() for e in rest)
    assert not page.css("#error:not([hidden])")
    page.shot("missing")


def test_compare_two_methods_marks_the_overlap(page, serve_inputs):
    from selenium.webdriver.common.keys import Keys

    a, b = _rows(serve_inputs["trackstar"]), _rows(serve_inputs["bm25"])
    qid = next(q for q in a if set(a[q]["doc_ids"]) & set(b[q]["doc_ids"]))
    page.open(f"#/compare?a=trackstar&b=bm25&q={qid}")
    both = set(a[qid]["doc_ids"]) & set(b[qid]["doc_ids"])
    assert _ids(page, "#side-a li") == a[qid]["doc_ids"]
    assert _ids(page, "#side-b li") == b[qid]["doc_ids"]
    for side in ("#side-a", "#side-b"):
        assert set(_ids(page, f"{side} li.shared")) == both
        assert len(page.css(f"{side} li.shared .badge.shared")) == len(both)
    assert page.texts("#overlap") == [f"{len(both)} passages in both top lists (marked \"both\")"]
    page.shot("compare")

    # the query is found by its text: a name of its prompt, then a place of its target
    other = next(q for q in a if q != qid)
    queries = {q["id"]: q for q in map(json.loads, open(serve_inputs["queries"]))}
    assert not page.css("#compare-matches li") or not page.css("#compare-matches")[0].is_displayed()
    search = page.css("#compare-search")[0]
    search.send_keys(queries[other]["prompt"].split()[0].upper())
    page.until(lambda d: _ids(page, "#compare-matches li") == [other])
    assert page.texts("#compare-matches li .query-text") == [
        queries[other]["prompt"] + queries[other]["target"]]
    page.shot("compare-search")
    search.clear()
    search.send_keys("born in" + queries[other]["target"])
    page.until(lambda d: other in _ids(page, "#compare-matches li"))
    search.clear()
    search.send_keys("no such text")
    page.until(lambda d: page.texts("#compare-matches li") == ["no query matches"])
    search.clear()
    search.send_keys(queries[other]["prompt"])
    page.until(lambda d: _ids(page, "#compare-matches li") == [other])
    page.css(f"#compare-matches li[data-id='{other}'] a")[0].click()
    page.until(lambda d: _ids(page, "#side-a li") == a[other]["doc_ids"])
    assert page.route() == ("/compare", {"a": "trackstar", "b": "bm25", "q": other})
    assert set(_ids(page, "#side-b li.shared")) == set(a[other]["doc_ids"]) & \
        set(b[other]["doc_ids"])
    # Enter opens the first match; previous and next step through the queries
    search = page.css("#compare-search")[0]
    search.send_keys("q5", Keys.ENTER)
    page.until(lambda d: page.route()[1].get("q") == "q5")
    page.until(lambda d: _ids(page, "#side-a li") == a["q5"]["doc_ids"])
    assert page.texts(".steps") == ["‹ previous query 6 of 6"]
    page.css("#compare-prev")[0].click()
    page.until(lambda d: _ids(page, "#side-a li") == a["q4"]["doc_ids"])


def test_ask_trace_a_span_and_explain_a_proponent(page):
    page.open("#/ask")
    page.css("#prompt")[0].send_keys("Alba was born in")
    n = page.css("#max-new-tokens")[0]
    n.clear()
    n.send_keys("4")
    page.css("#ask-go")[0].click()
    page.until(lambda d: page.css("#completion .tok"))
    tokens = page.css("#completion .tok")
    assert all("traced" in t.get_attribute("class").split() for t in tokens)
    assert page.texts("#traced")[0].startswith("traced: the whole completion")
    shaded = page.css("#proponents li .tokens .tok")
    assert shaded and any("rgba" in (t.get_attribute("style") or "") for t in shaded)
    page.shot("answer")

    # choose the last token that is not blank and trace it alone
    words = [t.get_attribute("textContent") for t in tokens]
    chosen = max(i for i, w in enumerate(words) if w.strip())
    tokens[chosen].click()
    page.css("#trace-span")[0].click()
    # one read per try: the element may be re-rendered between two reads
    page.until(lambda d: any("characters" in t for t in page.texts("#traced")))
    name, params = page.route()
    assert name == "/ask" and params["prompt"] == "Alba was born in" and ":" in params["span"]
    traced = ["traced" in t.get_attribute("class").split() for t in page.css("#completion .tok")]
    assert [i for i, t in enumerate(traced) if t] == [chosen]
    score = page.texts("#proponents li .score")[0]
    doc = page.css("#proponents li")[0].get_attribute("data-doc")
    completion = "".join(words)
    page.shot("span")

    page.css("#proponents li")[0].click()
    page.until(lambda d: page.css("#passage-tokens .tok"))
    assert page.texts("#explain-score") == [score] == page.texts("#listed-score")
    assert page.texts("#explain-listed th") == ["listed by ask (trackstar) · proponent 1"]
    assert page.route()[1]["doc"] == doc and page.route()[1]["span"] == params["span"]
    kinds = {t.get_attribute("class") for t in page.css("#passage-tokens .tok")}
    assert kinds <= {"tok pos", "tok neg"} and "tok pos" in kinds
    assert page.css("#query-tokens .tok")
    # only the traced span of the completion is bold
    (line,) = page.css("#explain-head .completion-text")
    assert line.get_attribute("textContent") == completion
    assert [b.get_attribute("textContent") for b in page.css("#explain-head .completion-text "
                                                             "strong")] == [words[chosen]]
    assert words[chosen] != completion
    page.shot("explain-answer")


def test_explain_a_ranked_passage_from_browse(page, serve_inputs):
    ranked = _rows(serve_inputs["trackstar"])
    row = ranked["q2"]
    n = next(i for i, d in enumerate(row["doc_ids"]) if "#" not in d)
    page.open("#/browse?set=trackstar&q=q2")
    page.css("#proponents li")[n].click()
    page.until(lambda d: page.css("#passage-tokens .tok"))
    assert page.route() == ("/explain", {"set": "trackstar", "q": "q2", "doc": row["doc_ids"][n]})
    text = "".join(t.get_attribute("textContent") for t in page.css("#passage-tokens .tok"))
    assert text == serve_inputs["texts"][row["doc_ids"][n]]
    assert page.texts("#explain-score") == [f"{row['scores'][n]:+.4f}"]
    assert page.texts("#listed-score") == [f"{row['scores'][n]:+.4f}"]
    page.shot("explain")
    page.css("#back")[0].click()
    page.until(lambda d: _ids(page, "#proponents li") == row["doc_ids"])


def test_explain_from_a_bm25_row_shows_both_scores_and_whose_they_are(page, serve_inputs,
                                                                      explorer):
    from starlette.testclient import TestClient

    from factrace.serve.app import create_app

    row = _rows(serve_inputs["bm25"])["q2"]
    n = next(i for i, d in enumerate(row["doc_ids"]) if not explorer.passages.get(d)["missing"])
    doc = row["doc_ids"][n]
    split = TestClient(create_app(explorer), base_url=LOCAL).post("/api/explain", json={
        "set": "bm25", "query_id": "q2", "doc_id": doc}).json()["score"]
    page.open("#/browse?set=bm25&q=q2")
    page.css("#proponents li")[n].click()
    page.until(lambda d: page.css("#passage-tokens .tok"))
    assert page.texts("#explain-listed th") == [f"listed by bm25 · proponent {n + 1}"]
    assert page.texts("#listed-score") == [f"{row['scores'][n]:+.4f}"]
    assert page.texts("#explain-split th") == ["split below: the store's trackstar score"]
    assert page.texts("#explain-score") == [f"{split:+.4f}"]
    page.shot("explain-bm25")


@pytest.mark.parametrize("route, message", [
    ("#/browse?set=broken", "did not load: "),
    ("#/explain?set=trackstar&q=q2&doc=nope", "has no row 'nope'"),
    ("#/ask?prompt=%20%20", "the prompt is empty"),
])
def test_errors_show_as_one_message_in_the_page(page, route, message):
    page.open(route)
    page.until(lambda d: page.css("#error:not([hidden])"))
    (box,) = page.css("#error")
    assert message in box.text and len(box.text.splitlines()) == 1


def test_query_rows_and_passages_are_links(page, serve_inputs):
    """Real links: a new tab, a copied link or a middle click opens the same view."""
    page.open("#/browse?set=trackstar&f.relation=birthplace")
    rows = page.css("li.query > a.row-link")
    assert [r.find_element("css selector", ".qid").text for r in rows] == ["q0", "q2", "q4"]
    assert not page.css("li[onclick], li.query[onclick]")
    href = rows[1].get_attribute("href")
    assert urlparse(href).fragment.partition("?")[0] == "/browse"
    assert parse_qs(urlparse(href).fragment.partition("?")[2]) == {
        "set": ["trackstar"], "q": ["q2"], "f.relation": ["birthplace"]}

    ranked = _rows(serve_inputs["trackstar"])["q2"]
    first = page.driver.current_window_handle
    page.driver.switch_to.new_window("tab")
    try:
        page.driver.get(href)
        page.until(lambda d: _ids(page, "#proponents li") == ranked["doc_ids"])
        assert page.css("li.query.selected")[0].get_attribute("data-id") == "q2"
        links = [a.get_attribute("href") for a in page.css("#proponents li > a.row-link")]
        assert len(links) == len(ranked["doc_ids"])
        assert [parse_qs(urlparse(h).fragment.partition("?")[2]) for h in links] == [
            {"set": ["trackstar"], "q": ["q2"], "doc": [d]} for d in ranked["doc_ids"]]
        assert all(urlparse(h).fragment.startswith("/explain?") for h in links)
        page.shot("links")
    finally:
        page.driver.close()
        page.driver.switch_to.window(first)


def test_a_compare_directory_opens_on_trackstar_with_texts_and_filters(page, compare_server,
                                                                     compare_out):
    """``serve --rankings COMPARE_OUT`` alone: query texts, the facts' filters, gold marks, and
    TrackStar's rankings first, each method named once."""
    from selenium.webdriver.support.ui import Select

    page.open("#/browse", at=compare_server)
    select = Select(page.css("#set")[0])
    assert select.first_selected_option.get_attribute("value") == "trackstar"
    # the files' order; TrackStar chosen although it comes last
    assert [o.text for o in select.options] == ["bm25+target", "bm25", "trackstar-paper",
                                                "trackstar"]
    assert "(text unknown)" not in page.css("#queries")[0].text
    assert page.texts("li.query .query-text")[0] == "Alba was born in Orvane"
    assert {f.get_attribute("data-field") for f in page.css("#filters select")} == {
        "n_gold", "relation", "subject"}
    assert len(page.css("li.query .badge")) == 6
    Select(page.css("#filter-relation")[0]).select_by_value("lives_in")
    page.until(lambda d: _ids(page, "li.query") == ["q4", "q5"])
    page.shot("compare-dir-browse")
    page.css("li.query[data-id='q4']")[0].click()
    page.until(lambda d: page.css("#proponents li"))
    assert page.texts("#query-head .muted")[0].startswith("method trackstar · ")

    page.open("#/compare", at=compare_server)
    assert page.texts("#side-a h3") == ["trackstar", "proponents (5)"]
    assert page.texts("#side-b h3") == ["bm25+target", "proponents (5)"]
    assert page.texts("#compare-head .query-text") == ["Alba was born in Orvane"]
    assert page.texts(".steps") == ["query 1 of 6 next ›"]
    page.shot("compare-dir-compare")


def test_gold_passages_outside_the_list_show_text_and_rank(page, serve_inputs, explorer):
    ranked = _rows(serve_inputs["trackstar"])
    qid = next(q for q, r in ranked.items()
               if explorer.qrels[q] - {d.split("#")[0] for d in r["doc_ids"]})
    outside = sorted(explorer.qrels[qid] - {d.split("#")[0] for d in ranked[qid]["doc_ids"]})
    page.open(f"#/browse?set=trackstar&q={qid}")
    page.until(lambda d: page.css("#gold-outside li"))
    assert page.texts("#gold-outside h3") == [f"gold passages not in the top 5 ({len(outside)})"]
    assert _ids(page, "#gold-outside li") == outside
    texts = serve_inputs["texts"]
    assert page.texts("#gold-outside li .text") == [texts[d] for d in outside]
    for item, doc in zip(page.css("#gold-outside li"), outside, strict=True):
        note = item.find_element("css selector", ".note").text
        assert note.startswith("not in the top 5")
        if doc in ranked[qid]["opponent_ids"]:
            assert note.endswith(f"opponent {ranked[qid]['opponent_ids'].index(doc) + 1}")
        assert item.find_element("css selector", "a").get_attribute("href").endswith(
            f"doc={doc}")
    (line,) = page.texts("#gold-ranks")
    assert all(f"{d} (not in the top 5" in line for d in outside)
    page.shot("gold-outside")

    # a query whose gold is listed: its rank, and no card
    hit, rank = next((q, n + 1) for q, r in ranked.items()
                     for n, d in enumerate(r["doc_ids"]) if d.split("#")[0] in explorer.qrels[q])
    page.open(f"#/browse?set=trackstar&q={hit}")
    assert f"(rank {rank}" in page.texts("#gold-ranks")[0]
    assert page.texts("#query-head h2 .badge") == ["gold in top 10"]


def test_ask_with_an_empty_prompt_says_why(page):
    page.open("#/ask")
    page.css("#ask-go")[0].click()
    page.until(lambda d: page.css("#error:not([hidden])"))
    assert page.texts("#error") == ["Type a prompt first: the model completes it, and the "
                                    "completion is traced."]
    assert page.route() == ("/ask", {})
    page.shot("empty-prompt")


def test_search_placeholders_fit_and_the_icon_is_served(page):
    fits = """
        const input = document.querySelector(arguments[0]);
        const style = getComputedStyle(input);
        const context = document.createElement("canvas").getContext("2d");
        context.font = `${style.fontSize} ${style.fontFamily}`;
        const room = input.clientWidth - parseFloat(style.paddingLeft)
            - parseFloat(style.paddingRight) - 16;  // the clear button of a search field
        return [context.measureText(input.placeholder).width, room];"""
    for route, selector in (("#/browse", "#search"), ("#/compare", "#compare-search")):
        page.open(route)
        text, room = page.driver.execute_script(fits, selector)
        assert 0 < text <= room, (selector, text, room)
    status = """
        const done = arguments[arguments.length - 1];
        const icon = document.querySelector("link[rel=icon]").href;
        Promise.all([fetch("/favicon.ico"), fetch(icon)]).then(
            (answers) => done(answers.map((a) => [a.status, a.headers.get("content-type")])));"""
    assert page.driver.execute_async_script(status) == [[200, "image/svg+xml"]] * 2
    missing = [e for e in page.driver.get_log("browser") if "404" in e["message"]]
    assert not missing, missing
