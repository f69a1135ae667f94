"""The results table and the paper's findings, both ways."""

import pytest

from factrace.evaluate.ladder import findings, results_rows
from factrace.evaluate.tail_patch import TailPatchResult


def row(method, mrr, tail_patch=None, recall=None, se=0.01, tp_se=None):
    tp_se = se if tp_se is None else tp_se
    return {"method": method, "mrr": mrr, "mrr_se": se,
            "recall10": mrr if recall is None else recall, "recall10_se": se,
            "tail_patch": tail_patch, "tail_patch_se": None if tail_patch is None else tp_se,
            "n_queries": 10, "n_tail_patch": 10 if tail_patch is not None else 0}


def test_results_rows_from_rankings_and_tail_patch():
    qrels = {"q1": {"g"}, "q2": {"h"}}
    rankings = {"bm25": {"q1": ["g"], "q2": ["x", "h"]}, "trackstar": {"q1": ["x"], "q2": ["h"]}}
    patched = {"trackstar": TailPatchResult(0.25, 0.05, {"q1": 0.2, "q2": 0.3})}
    rows = results_rows(rankings, qrels, patched)
    assert [r["method"] for r in rows] == ["bm25", "trackstar"]
    assert rows[0]["mrr"] == pytest.approx(0.75) and rows[0]["recall10"] == 1.0
    assert rows[0]["mrr_se"] == pytest.approx(0.25)
    assert rows[0]["tail_patch"] is None and rows[0]["n_tail_patch"] == 0
    assert rows[1]["mrr"] == pytest.approx(0.5) and rows[1]["recall10"] == pytest.approx(0.5)
    assert rows[1]["tail_patch"] == 0.25 and rows[1]["tail_patch_se"] == 0.05
    assert rows[1]["n_queries"] == 2 and rows[1]["n_tail_patch"] == 2


PAPER_LIKE = [
    row("bm25", 0.60, 0.001, tp_se=1e-4), row("bm25+target", 0.70, 0.002, tp_se=1e-4),
    row("grad-dot", 0.10, 0.0005, tp_se=1e-4), row("grad-cos", 0.20, 0.001, tp_se=1e-4),
    row("grad-cos+opt", 0.30, 0.002, tp_se=1e-4), row("trackstar-train", 0.40, 0.003, tp_se=1e-4),
    row("trackstar", 0.50, 0.004, tp_se=1e-4),
]


def test_findings_hold_on_paper_like_numbers():
    result = findings(PAPER_LIKE)
    assert all(f.held for f in result), [f for f in result if not f.held]
    claims = [f.claim for f in result]
    assert "TrackStar wins at influence (tail-patch)" in claims
    assert sum("Ladder step" in c for c in claims) == 8
    bm25 = next(f for f in result if "MRR" in f.claim and "BM25" in f.claim)
    assert "bm25+target 0.7" in bm25.evidence and "trackstar 0.5" in bm25.evidence
    assert "14.1 combined se" in bm25.evidence  # 0.2 / sqrt(2 · 0.01²)


def test_findings_report_failures_and_unmeasured():
    rows = [row("bm25", 0.3, 0.01), row("grad-cos", 0.5, 0.002), row("trackstar", 0.4, 0.005)]
    result = {f.claim: f for f in findings(rows)}
    mrr = result["BM25 wins at attribution (MRR) over gradient methods"]
    assert mrr.held is False and "does not beat grad-cos 0.5" in mrr.evidence
    tail = result["TrackStar wins at influence (tail-patch)"]
    # 0.005 against 0.01 with se 0.01 each: -0.35 combined se, within noise
    assert tail.held is None and tail.verdict == "not significant"
    assert "bm25 0.01" in tail.evidence and "-0.4 combined se" in tail.evidence
    step = result["Ladder step grad-cos → trackstar helps tail-patch"]
    assert step.held is None and step.verdict == "not significant"
    assert result["Ladder step grad-cos → trackstar helps MRR"].held is False
    none = {f.claim: f for f in findings([row("bm25", 0.3), row("random", 0.0)])}
    assert none["TrackStar wins at influence (tail-patch)"].held is None
    assert none["TrackStar wins at influence (tail-patch)"].verdict == "not measured"
    assert none["BM25 wins at attribution (Recall@10) over gradient methods"].held is None
    assert "not measured" in none["TrackStar wins at influence (tail-patch)"].evidence


@pytest.mark.parametrize(("trackstar", "verdict"), [
    (0.0060, "not significant"),  # +0.71 se: a win within noise does not count
    (0.0078, "not significant"),  # +1.98 se
    (0.0079, "held"),  # +2.05 se
    (0.0021, "did not hold"),  # -2.05 se
    (0.0030, "not significant"),  # -1.41 se
])
def test_a_finding_needs_two_combined_standard_errors(trackstar, verdict):
    rows = [row("bm25", 0.3, 0.005, se=0.001), row("trackstar", 0.1, trackstar, se=0.001)]
    found = {f.claim: f for f in findings(rows)}["TrackStar wins at influence (tail-patch)"]
    assert found.verdict == verdict
    assert found.held is {"held": True, "did not hold": False}.get(verdict)
    assert found.to_dict()["verdict"] == verdict
