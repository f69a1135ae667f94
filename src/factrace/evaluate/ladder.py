"""The results table of the fact-tracing evaluation and the paper's findings checked against it.

A row is one method (a baseline or a rung of the ablation ladder)::

    {"method", "mrr", "mrr_se", "recall10", "recall10_se", "tail_patch", "tail_patch_se",
     "n_queries", "n_tail_patch"}

(``tail_patch`` and ``tail_patch_se`` are ``None`` when tail-patch was not run for the method.)

:func:`findings` checks the paper's claims (docs/design.md § "The paper's findings") on those
rows and says, for each, whether it held here and by how much, whichever way it went. A claim is "held" when the
difference is at least :data:`SIGNIFICANT_SE` combined standard errors in its favour, "did not
hold" when it is at least that much against it, and "not significant" in between; a claim whose
methods are absent is "not measured".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from factrace.evaluate.metrics import RECALL_K, RankingsLike, attribution_metrics

if TYPE_CHECKING:
    from factrace.evaluate.tail_patch import TailPatchResult

LADDER = ("grad-dot", "grad-cos", "grad-cos+opt", "trackstar-train", "trackstar")
"""The paper's ablation ladder, each rung adding one ingredient to the one before."""
BM25 = ("bm25", "bm25+target")
"""The two BM25 baselines: query = prompt, and query = prompt ⊕ target."""
TRACKSTAR = "trackstar"

_METRICS = {"mrr": "MRR", "recall10": "Recall@10", "tail_patch": "tail-patch"}
SIGNIFICANT_SE = 2.0
"""How many combined standard errors a difference needs to count as held (or as not held)."""


@dataclass(frozen=True)
class Finding:
    """One of the paper's claims, checked on this run.

    Attributes:
        claim: the claim in words.
        held: True if the difference is at least :data:`SIGNIFICANT_SE` combined standard errors
            in the claim's favour, False if at least that much against it, None if in between
            (not significant) or not measured.
        evidence: the numbers behind the verdict, with the difference in combined standard
            errors (``(a − b) / sqrt(se_a² + se_b²)``).
        z: that difference in combined standard errors, signed in the claim's favour; None when
            the claim was not measured.
    """

    claim: str
    held: bool | None
    evidence: str
    z: float | None = None

    @property
    def verdict(self) -> str:
        """``held``, ``did not hold``, ``not significant`` or ``not measured``."""
        if self.held is None:
            return "not measured" if self.z is None else "not significant"
        return "held" if self.held else "did not hold"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def results_rows(
    rankings: Mapping[str, RankingsLike],
    qrels: Mapping[str, set[str]],
    tail_patch: Mapping[str, TailPatchResult] | None = None,
    k: int = RECALL_K,
) -> list[dict]:
    """One row per method of ``rankings`` (method name → its rankings), in the given order."""
    tail_patch = tail_patch or {}
    rows = []
    for method, ranked in rankings.items():
        metrics = attribution_metrics(ranked, qrels, k)
        patched = tail_patch.get(method)
        rows.append({
            "method": method,
            "mrr": metrics.mrr.mean,
            "mrr_se": metrics.mrr.stderr,
            "recall10": metrics.recall.mean,
            "recall10_se": metrics.recall.stderr,
            "tail_patch": patched.mean if patched else None,
            "tail_patch_se": patched.stderr if patched else None,
            "n_queries": metrics.mrr.n,
            "n_tail_patch": patched.n_queries if patched else 0,
        })
    return rows


def _z(a: dict, b: dict, key: str) -> float:
    spread = math.hypot(a[f"{key}_se"] or 0.0, b[f"{key}_se"] or 0.0)
    diff = a[key] - b[key]
    return math.inf if spread == 0 and diff else (diff / spread if spread else 0.0)


def held_at(z: float) -> bool | None:
    """A finding's verdict from its z: held at ``SIGNIFICANT_SE`` or more, not held at minus
    that or less, else not significant (``None``)."""
    return True if z >= SIGNIFICANT_SE else False if z <= -SIGNIFICANT_SE else None


def _show(row: dict, key: str) -> str:
    return f"{row['method']} {row[key]:.4g} ± {row[f'{key}_se']:.2g}"


def _compare(claim: str, winner: dict | None, others: Sequence[dict], key: str) -> Finding:
    """``winner`` beats every row of ``others`` on ``key`` (higher is better)."""
    measured = [r for r in others if r[key] is not None]
    if winner is None or winner[key] is None or not measured:
        return Finding(claim, None, "not measured: the methods it compares were not all run")
    best = max(measured, key=lambda r: r[key])
    z = _z(winner, best, key)
    held = held_at(z)
    verb = "beats" if winner[key] > best[key] else "does not beat"
    return Finding(claim, held, f"{_show(winner, key)} {verb} {_show(best, key)} "
                                f"(difference {winner[key] - best[key]:+.3g}, {z:+.1f} combined "
                                f"se; {SIGNIFICANT_SE:g} needed either way)", z)


def findings(rows: Sequence[dict]) -> list[Finding]:
    """The paper's findings (docs/design.md § "The paper's findings") checked on ``rows``.

    - BM25 wins at attribution: the better BM25 variant beats every gradient method (the ladder)
      on MRR, and on Recall@10.
    - TrackStar wins at influence: its tail-patch beats every other method's.
    - Each step of the ladder helps: each rung present beats the rung present before it, on
      tail-patch and on MRR.
    """
    by_method = {r["method"]: r for r in rows}
    bm25 = [by_method[m] for m in BM25 if m in by_method]
    ladder = [by_method[m] for m in LADDER if m in by_method]
    out = []
    for key in ("mrr", "recall10"):
        best_bm25 = max(bm25, key=lambda r: r[key]) if bm25 else None
        out.append(_compare(f"BM25 wins at attribution ({_METRICS[key]}) over gradient methods",
                            best_bm25, ladder, key))
    trackstar = by_method.get(TRACKSTAR)
    others = [r for r in rows if r["method"] != TRACKSTAR]
    out.append(_compare("TrackStar wins at influence (tail-patch)", trackstar, others,
                        "tail_patch"))
    for key in ("tail_patch", "mrr"):
        steps = [r for r in ladder if r[key] is not None]
        for before, after in zip(steps, steps[1:], strict=False):
            claim = f"Ladder step {before['method']} → {after['method']} helps {_METRICS[key]}"
            out.append(_compare(claim, after, [before], key))
    return out
