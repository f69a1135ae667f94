"""The report files: table, plot, findings, examples, escaping."""

import base64
import json
import re

from rich.console import Console

from factrace.data.io import Ranking
from factrace.data.records import Query
from factrace.evaluate.ladder import Finding, findings
from factrace.report import build_examples, markdown_table, print_table, scatter_png, write_report

ROWS = [
    {"method": "bm25", "mrr": 0.61234, "mrr_se": 0.0213, "recall10": 0.8, "recall10_se": 0.04,
     "tail_patch": 0.0012, "tail_patch_se": 0.0003, "n_queries": 50, "n_tail_patch": 20},
    {"method": "trackstar", "mrr": 0.4, "mrr_se": 0.03, "recall10": 0.7, "recall10_se": 0.05,
     "tail_patch": 0.0051, "tail_patch_se": 0.0004, "n_queries": 50, "n_tail_patch": 20},
    {"method": "random", "mrr": 0.01, "mrr_se": 0.005, "recall10": 0.02, "recall10_se": 0.01,
     "tail_patch": None, "tail_patch_se": None, "n_queries": 50, "n_tail_patch": 0},
]
PASSAGES = {
    "g1": "Alice was born in Paris.",
    "evil": "<script>alert('x')</script> & more",
    "p2": "Bob was born in Tokyo.",
    "long": "word " * 200,
}
QUERIES = [Query("q0", "Nobody", " none"), Query("q1", "Alice was born in", " <Paris>")]
QRELS = {"q1": {"g1"}}
RANKINGS = {
    "trackstar": [Ranking("q1", ["evil", "g1#0", "long"], [0.9, 0.8, 0.1])],
    "bm25": {"q1": ["g1", "p2"]},
}


def examples():
    return build_examples(QUERIES, QRELS, RANKINGS, PASSAGES, methods=("trackstar", "bm25", "x"))


def test_markdown_table_and_terminal_table():
    md = markdown_table(ROWS)
    lines = md.strip().splitlines()
    assert lines[0] == "| Method | MRR | Recall@10 | Tail-patch |"
    assert lines[2] == "| bm25 | 0.612 ± 0.021 | 0.800 ± 0.040 | 0.00120 ± 0.00030 |"
    assert lines[4] == "| random | 0.010 ± 0.005 | 0.020 ± 0.010 | – |"
    console = Console(record=True, width=120)
    print_table(ROWS, console)
    text = console.export_text()
    assert "trackstar" in text and "0.400 ± 0.030" in text and "0.00510 ± 0.00040" in text


def test_build_examples_marks_gold_and_windows():
    [ex] = examples()
    assert ex.query_id == "q1" and list(ex.columns) == ["trackstar", "bm25"]
    track = ex.columns["trackstar"]
    assert [p.gold for p in track] == [False, True, False]
    assert track[1].text == PASSAGES["g1"] and track[1].score == 0.8
    assert len(track[2].text) == 300 and track[2].text.endswith("…")
    assert ex.columns["bm25"][0].gold and ex.columns["bm25"][0].score is None
    assert [p.id for p in ex.gold] == ["g1"]


def test_scatter_png_is_a_png_of_methods_with_tail_patch():
    png = scatter_png(ROWS)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert scatter_png([ROWS[2]]) is None


def test_write_report_files_table_plot_and_escaping(tmp_path):
    found = findings(ROWS) + [("A claim with <b>markup</b>", None, "not measured")]
    paths = write_report(tmp_path / "rep", ROWS, found, examples(),
                         {"model": "tiny <model>", "d": 65536})
    assert {p.name for p in (tmp_path / "rep").iterdir()} == {
        "results.json", "results.md", "report.html", "mrr_vs_tail_patch.png"}
    record = json.loads(paths["json"].read_text())
    assert record["rows"] == ROWS
    assert record["metadata"] == {"model": "tiny <model>", "d": 65536}
    assert record["findings"][-1] == {"claim": "A claim with <b>markup</b>", "held": None,
                                      "evidence": "not measured", "z": None,
                                      "verdict": "not measured"}
    assert record["examples"][0]["columns"]["trackstar"][1]["gold"] is True

    md = paths["markdown"].read_text()
    assert "| trackstar | 0.400 ± 0.030 | 0.700 ± 0.050 | 0.00510 ± 0.00040 |" in md
    assert "**held**: TrackStar wins at influence (tail-patch)" in md

    html = paths["html"].read_text()
    for method in ("bm25", "trackstar", "random"):
        assert f"<tr><td>{method}</td>" in html
    assert '<td class="num">0.612 ± 0.021</td>' in html
    match = re.search(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert match and base64.b64decode(match.group(1)) == paths["plot"].read_bytes()
    # Every piece of user text is escaped.
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in html
    assert "&lt;Paris&gt;" in html and "tiny &lt;model&gt;" in html
    assert "A claim with &lt;b&gt;markup&lt;/b&gt;" in html
    assert html.count('class="star"') == 2  # the gold passage in each column
    assert "TrackStar wins at influence" in html


def test_report_without_tail_patch_has_no_plot(tmp_path):
    rows = [dict(ROWS[2]), dict(ROWS[0], tail_patch=None, tail_patch_se=None)]
    rows[0]["mrr"] = float("nan")
    paths = write_report(tmp_path, rows, [Finding("c", False, "e")])
    assert "plot" not in paths and not (tmp_path / "mrr_vs_tail_patch.png").exists()
    assert "<img" not in paths["html"].read_text()
    assert json.loads(paths["json"].read_text())["rows"][0]["mrr"] is None
    assert "**did not hold**: c — e" in paths["markdown"].read_text()


def test_findings_within_two_standard_errors_read_not_significant(tmp_path):
    found = [Finding("big win", True, "e1", 3.0), Finding("small win", None, "e2", 0.4),
             Finding("big loss", False, "e3", -5.0), Finding("absent", None, "e4")]
    paths = write_report(tmp_path, ROWS, found)
    md = paths["markdown"].read_text()
    for verdict, claim in (("held", "big win"), ("not significant", "small win"),
                           ("did not hold", "big loss"), ("not measured", "absent")):
        assert f"**{verdict}**: {claim}" in md
    html = paths["html"].read_text()
    assert '<li class="unsure"><strong>not significant</strong>: small win' in html
    assert "at least 2 combined standard errors" in html
    assert [f["verdict"] for f in json.loads(paths["json"].read_text())["findings"]] == [
        "held", "not significant", "did not hold", "not measured"]


README_ROWS = [  # the README's demo table: bm25 and dense nearly coincide, bm25+target at the edge
    dict(ROWS[0], method=m, mrr=mrr, tail_patch=tp, tail_patch_se=se)
    for m, mrr, tp, se in (("grad-dot", 0.207, 0.00522, 0.00099), ("grad-cos", 0.266, 0.00645, 0.0012),
                           ("grad-cos+opt", 0.326, 0.00709, 0.0013),
                           ("trackstar-train", 0.271, 0.00399, 0.0008),
                           ("trackstar", 0.316, 0.00331, 0.0007), ("bm25", 0.886, 0.00023, 0.00061),
                           ("bm25+target", 0.947, 0.00099, 0.00064), ("dense", 0.884, 0.00027, 0.00065),
                           ("random", 0.005, -0.0001, 0.00035))
]


def test_plot_names_methods_in_a_legend_inside_the_figure():
    from factrace.report.plot import scatter_figure

    fig = scatter_figure(README_ROWS)
    [ax] = fig.axes
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [r["method"] for r in README_ROWS]
    assert len(ax.texts) == 0  # no labels beside points, which overlap for bm25 and dense
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    inside = fig.bbox
    for artist in (legend, ax):
        box = artist.get_window_extent(renderer) if artist is legend else ax.get_tightbbox(renderer)
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 \
            and box.y1 <= inside.y1, (artist, box, inside)


def test_report_header_shows_metadata_for_people(tmp_path):
    paths = write_report(tmp_path, ROWS, [], [], {
        "tail_patch": {"lr": 0.1 + 0.2 - 0.3 + 0.0003 - 5.551115123125783e-17, "k": 10},
        "timings": {"load_s": 1.23456789}, "model": "ckpt/"})
    html = paths["html"].read_text()
    assert "<th>tail_patch</th><td>lr 0.0003, k 10</td>" in html
    assert "<th>timings</th><td>load_s 1.235</td>" in html
    assert "{" not in re.search(r'<table class="meta">(.*?)</table>', html, re.S).group(1)


def _shares(entails, other):
    return {"entails": {"mean": entails, "se": 0.01}, "object": {"mean": 0.0, "se": 0.0},
            "subject": {"mean": 0.0, "se": 0.0}, "relation": {"mean": 0.0, "se": 0.0},
            "other": {"mean": other, "se": 0.02}}


def test_kinds_table_and_stacked_bars(tmp_path):
    rows = [{"method": "trackstar", "mrr": 0.5, "mrr_se": 0.1, "recall10": 0.6,
             "recall10_se": 0.1, "tail_patch": None, "tail_patch_se": None,
             "kinds": {"n_queries": 7, "top1": _shares(0.25, 0.75), "top10": _shares(0.4, 0.6)}},
            {"method": "random", "mrr": 0.0, "mrr_se": 0.0, "recall10": 0.0,
             "recall10_se": 0.0, "tail_patch": None, "tail_patch_se": None}]
    paths = write_report(tmp_path, rows)
    md = paths["markdown"].read_text()
    assert "| trackstar | 1 | 0.25 ± 0.01 | 0.00 ± 0.00 | 0.00 ± 0.00 | 0.00 ± 0.00 | " \
           "0.75 ± 0.02 | 7 |" in md
    assert "| trackstar | 10 | 0.40 ± 0.01 |" in md and "| random |" not in md.split(
        "Proponent kinds")[1]
    assert paths["kinds_plot"].read_bytes().startswith(b"\x89PNG")
    html = paths["html"].read_text()
    assert "Proponent kinds" in html and html.count("data:image/png;base64") == 1
    del rows[0]["kinds"]
    assert "kinds_plot" not in write_report(tmp_path / "none", rows)
