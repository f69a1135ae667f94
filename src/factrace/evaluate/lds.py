"""The linear datamodeling score (LDS; Park et al., TRAK, 2023): does a method's additive
prediction rank retrained models the way they actually behave?

For a query q, training subsets S_1 … S_M and a method's scores τ(q, z):

    prediction_j = Σ_{z ∈ S_j} τ(q, z)
    LDS(q)       = Spearman( (prediction_j)_j , (output_j)_j )
    LDS          = mean over queries, ± standard error over queries

``output_j`` is what the model retrained on S_j alone does on q. factrace's output is
``log p(target | prompt)`` (the sum over the target's tokens): a high score says a passage
*helps* the target, so a good method correlates positively with the log-probability. An output
measured as a loss flips the sign (``sign=-1``). Several rows for the same (subset, query) —
retrainings with several seeds — are averaged before the correlation.

Variants (both in common use; :func:`variant` names which one a set of subsets is):
- ``random-subsets`` (TRAK, dattri, kronfluence, bergson's ``validate``): M random subsets, each
  keeping about half the corpus.
- ``leave-out``: M subsets that each leave out a small fraction of the corpus (kept ≥ 75%).

A query whose predictions or outputs are constant over the subsets has no defined correlation;
it counts as 0 (the method, or the retraining, tells those subsets apart not at all) and the
number of such queries is reported.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from factrace.errors import FactraceError
from factrace.evaluate.metrics import bare_id, mean_stderr


@dataclass(frozen=True)
class Subset:
    """A training subset: its id and the ids of the passages it keeps."""

    id: str
    passages: tuple[str, ...]


def random_subsets(doc_ids: Sequence[str], m: int, fraction: float, seed: int) -> list[Subset]:
    """``m`` subsets, each keeping ``round(fraction * n)`` passages drawn uniformly without
    replacement (independently per subset), in corpus order. ``fraction=0.5`` is TRAK's
    datamodel; a fraction near 1 (e.g. 0.9) is leave-a-small-fraction-out."""
    if m < 2:
        raise FactraceError(f"LDS needs at least 2 subsets, got {m}")
    if not 0.0 < fraction < 1.0:
        raise FactraceError(f"the subset fraction must be in (0, 1), got {fraction}")
    n = len(doc_ids)
    keep = round(fraction * n)
    if not 0 < keep < n:
        raise FactraceError(f"a fraction {fraction} of {n} passages keeps {keep}: choose a "
                            "fraction that keeps some passages and leaves some out")
    rng = random.Random(f"factrace-lds-subsets:{seed}:{fraction}")
    out = []
    for j in range(m):
        chosen = sorted(rng.sample(range(n), keep))
        out.append(Subset(f"s{j:03d}", tuple(str(doc_ids[i]) for i in chosen)))
    return out


LEAVE_OUT_AT = 0.75
"""Subsets keeping at least this share of the corpus on average are the leave-out variant."""


@dataclass(frozen=True)
class LdsResult:
    """LDS of one method: mean ± standard error over queries, and what it was measured on."""

    mean: float
    stderr: float
    n_queries: int
    n_subsets: int
    kept_fraction: float
    variant: str
    undefined: int
    """Queries with constant predictions or outputs (counted as 0)."""
    per_query: dict[str, float]

    def to_dict(self, per_query: bool = False) -> dict:
        out = asdict(self)
        if not per_query:
            del out["per_query"]
        return out


def variant(kept_fraction: float) -> str:
    """``random-subsets`` (TRAK-style) or ``leave-out``, by the mean share of the corpus kept."""
    return "leave-out" if kept_fraction >= LEAVE_OUT_AT else "random-subsets"


def describe(result: LdsResult) -> str:
    """One line naming the variant, e.g. ``random-subsets (TRAK): 32 subsets keeping 50%``."""
    name = "random-subsets (TRAK)" if result.variant == "random-subsets" else "leave-out"
    return (f"{name}: {result.n_subsets} subsets keeping {100 * result.kept_fraction:.0f}% of "
            f"the corpus, {result.n_queries} queries")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ (ranks with average ties); ``nan`` when either side is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"spearman needs two equal 1-d arrays, got {a.shape} and {b.shape}")
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    return float(spearmanr(a, b).statistic)


def membership(subsets: Sequence[Subset], doc_ids: Sequence[str]) -> np.ndarray:
    """``[subsets, scored rows]`` 0/1 matrix (a passage split into windows ``<doc>#<n>`` is
    in a subset with all its windows); a subset naming a passage not among ``doc_ids`` is an
    error naming it."""
    columns: dict[str, list[int]] = {}
    for i, d in enumerate(doc_ids):
        columns.setdefault(d, []).append(i)
        if bare_id(d) != d:
            columns.setdefault(bare_id(d), []).append(i)
    out = np.zeros((len(subsets), len(doc_ids)), dtype=np.float64)
    for j, subset in enumerate(subsets):
        missing = [d for d in subset.passages if d not in columns]
        if missing:
            raise FactraceError(
                f"subset {subset.id!r} names {len(missing)} passage(s) not among the scored "
                f"passages, e.g. {missing[0]!r}: score the corpus the subsets were drawn from")
        out[j, [i for d in subset.passages for i in columns[d]]] = 1.0
    return out


def output_matrix(outputs: dict[tuple[str, str], float], subsets: Sequence[Subset],
                  query_ids: Sequence[str], source: str = "outputs") -> np.ndarray:
    """``[subsets, queries]`` outputs; any missing (subset, query) pair is an error naming the
    first and how many more."""
    out = np.empty((len(subsets), len(query_ids)), dtype=np.float64)
    missing = []
    for j, subset in enumerate(subsets):
        for i, qid in enumerate(query_ids):
            value = outputs.get((subset.id, qid))
            if value is None:
                missing.append((subset.id, qid))
            else:
                out[j, i] = value
    if missing:
        subset_id, qid = missing[0]
        more = f" (and {len(missing) - 1} more pairs)" if len(missing) > 1 else ""
        raise FactraceError(f"{source}: no output for subset {subset_id!r} and query {qid!r}"
                            f"{more}; every subset needs an output for every scored query")
    return out


def lds(scores: np.ndarray, query_ids: Sequence[str], doc_ids: Sequence[str],
        subsets: Sequence[Subset], outputs: dict[tuple[str, str], float], sign: float = 1.0,
        source: str = "outputs") -> LdsResult:
    """LDS of ``scores`` ``[queries, passages]`` against the measured ``outputs``
    (``{(subset id, query id): output}``, higher = target more likely; ``sign=-1`` for a
    loss)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(query_ids), len(doc_ids)):
        raise FactraceError(f"scores are {list(scores.shape)} for {len(query_ids)} queries and "
                            f"{len(doc_ids)} passages")
    if len(subsets) < 2:
        raise FactraceError(f"LDS needs at least 2 subsets, got {len(subsets)}")
    if not np.isfinite(scores).all():
        raise FactraceError("the scores contain NaN or inf")
    member = membership(subsets, doc_ids)
    measured = sign * output_matrix(outputs, subsets, query_ids, source)
    predicted = member @ scores.T  # [subsets, queries]
    per_query, undefined = {}, 0
    for i, qid in enumerate(query_ids):
        rho = spearman(predicted[:, i], measured[:, i])
        if math.isnan(rho):
            undefined += 1
            rho = 0.0
        per_query[qid] = rho
    stats = mean_stderr(list(per_query.values()))
    passages = len({bare_id(d) for d in doc_ids})
    kept = float(np.mean([len(set(s.passages)) for s in subsets]) / passages)
    return LdsResult(stats.mean, stats.stderr, len(query_ids), len(subsets), kept,
                     variant(kept), undefined, per_query)


def noise_floor(outputs_a: dict[tuple[str, str], float], outputs_b: dict[tuple[str, str], float],
                subsets: Sequence[Subset], query_ids: Sequence[str]) -> LdsResult:
    """The LDS a second retraining earns against the first: per query, the Spearman
    correlation over subsets between two retrainings' outputs (e.g. two seeds). No method's
    LDS against one retraining is expected above it."""
    a = output_matrix(outputs_a, subsets, query_ids, "first retraining")
    b = output_matrix(outputs_b, subsets, query_ids, "second retraining")
    per_query, undefined = {}, 0
    for i, qid in enumerate(query_ids):
        rho = spearman(a[:, i], b[:, i])
        undefined += math.isnan(rho)
        per_query[qid] = 0.0 if math.isnan(rho) else rho
    stats = mean_stderr(list(per_query.values()))
    return LdsResult(stats.mean, stats.stderr, len(query_ids), len(subsets), math.nan,
                     "noise-floor", undefined, per_query)


def _rows(path: str | Path, fields: tuple[str, ...]):
    path = Path(path)
    if not path.is_file():
        raise FactraceError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise FactraceError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise FactraceError(f"{path}:{n}: expected a JSON object")
            missing = [k for k in fields if k not in row]
            if missing:
                raise FactraceError(f"{path}:{n}: missing field(s) {', '.join(missing)}; "
                                    f"expected {', '.join(fields)}")
            yield n, row


def read_subsets(path: str | Path) -> list[Subset]:
    """Subsets JSONL: ``{"subset": id, "passages": [doc id, …]}`` per line."""
    out, seen = [], set()
    for n, row in _rows(path, ("subset", "passages")):
        if not isinstance(row["passages"], list):
            raise FactraceError(f"{path}:{n}: passages must be a list of passage ids")
        sid = str(row["subset"])
        if sid in seen:
            raise FactraceError(f"{path}:{n}: subset {sid!r} appears twice")
        seen.add(sid)
        out.append(Subset(sid, tuple(str(d) for d in row["passages"])))
    if not out:
        raise FactraceError(f"{path}: no subsets")
    return out


def write_subsets(path: str | Path, subsets: Sequence[Subset]) -> None:
    from factrace.data.atomic import atomic_write

    with atomic_write(path, "w") as f:
        for s in subsets:
            f.write(json.dumps({"subset": s.id, "passages": list(s.passages)}) + "\n")


def read_outputs(path: str | Path, seed: int | None = None) -> dict[tuple[str, str], float]:
    """Outputs JSONL: ``{"subset", "query_id", "output"}`` per line (optional ``seed``);
    rows of one (subset, query) are averaged (several retrainings); ``seed`` keeps only the
    rows of that seed."""
    sums: dict[tuple[str, str], list[float]] = {}
    for n, row in _rows(path, ("subset", "query_id", "output")):
        if seed is not None and row.get("seed") != seed:
            continue
        value = row["output"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            raise FactraceError(f"{path}:{n}: output must be a finite number, got {value!r}")
        sums.setdefault((str(row["subset"]), str(row["query_id"])), []).append(float(value))
    if not sums:
        raise FactraceError(f"{path}: no outputs" + (f" of seed {seed}" if seed is not None
                                                     else ""))
    return {key: math.fsum(v) / len(v) for key, v in sums.items()}


def check_outputs_subsets(outputs: dict[tuple[str, str], float], subsets: Sequence[Subset],
                          source: str) -> None:
    """Outputs naming a subset the subsets file lacks are an error naming it."""
    known = {s.id for s in subsets}
    unknown = sorted({sid for sid, _ in outputs if sid not in known})
    if unknown:
        raise FactraceError(f"{source}: outputs for subset(s) not in the subsets file, e.g. "
                            f"{unknown[0]!r} ({len(unknown)} in all)")


@dataclass
class LdsInputs:
    """Subsets and the retrained models' measured outputs, ready to score methods against
    (``compare`` and ``demo --lds``): each method's full scores go to :meth:`measure`."""

    subsets: list[Subset]
    outputs: dict[tuple[str, str], float]
    sign: float = 1.0
    """``+1``: outputs are log-probabilities; ``-1``: losses."""
    noise: LdsResult | None = None
    """The noise floor (a second retraining against the first), when measured."""
    details: dict = field(default_factory=dict)
    """What the retrainings were (seeds, recipe, timings), shown with the results."""
    source: str = "outputs"
    results: dict[str, LdsResult] = field(default_factory=dict)

    def check(self, doc_ids: Sequence[str], query_ids: Sequence[str]) -> None:
        """Refuse, before any work, subsets or outputs that do not cover the corpus/queries."""
        membership(self.subsets, doc_ids)
        output_matrix(self.outputs, self.subsets, query_ids, self.source)

    def measure(self, full) -> LdsResult:
        """LDS of one method's :class:`~factrace.search.full.FullScores`, kept by name."""
        result = lds(full.scores, full.query_ids, full.doc_ids, self.subsets, self.outputs,
                     self.sign, self.source)
        self.results[full.method] = result
        return result

    def add_to(self, rows: list[dict]) -> None:
        """Put each measured method's LDS (``lds``, ``lds_se``) into its results row."""
        for row in rows:
            result = self.results.get(row["method"])
            if result is not None:
                row["lds"], row["lds_se"] = result.mean, result.stderr

    def describe(self) -> dict:
        first = next(iter(self.results.values()), None)
        out = {"variant": describe(first) if first else None,
               "output": "log p(target | prompt)" if self.sign > 0 else "loss (sign flipped)",
               **self.details}
        if self.noise is not None:
            out["noise_floor"] = f"{self.noise.mean:.3f} ± {self.noise.stderr:.3f}"
        return out
