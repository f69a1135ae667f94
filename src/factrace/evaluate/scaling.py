"""The scaling study: does influence align more closely with attribution as a model trains
longer and grows larger (the paper's third finding)?

``compare`` given several models (checkpoints of one run: the *tokens* axis; models of
different sizes: the *size* axis) measures, under every checkpoint, on the same corpus, queries
and encoder settings:

- attribution of TrackStar: MRR and recall@10;
- influence under that checkpoint: tail-patch of TrackStar's top-10 and of BM25's (one pass over
  the union of both, each step taken from that checkpoint's own weights and optimizer state);
- the proponent kinds of both (:mod:`factrace.evaluate.kinds`);
- **alignment**: the overlap of TrackStar's and BM25's top-10, ``|T ∩ B| / 10`` per query
  (windows counted as their passage), mean ± se over queries.

BM25 does not depend on the model: it is ranked once. A checkpoint whose results the full
comparison already holds (the last ``--model``) is not measured again.

Axes. A checkpoint's place on the tokens axis is read from its directory: ``tokens_seen`` of
``train_info.json`` (factrace's fact-world pretraining), ``tokens`` of ``factrace.json``,
``num_input_tokens_seen`` of ``trainer_state.json``, else the step (``step`` of
``factrace.json``, ``steps`` of ``train_info.json``, ``global_step`` of ``trainer_state.json``),
else the order the checkpoints were given in (said so). The tokens axis holds the checkpoints
with the last model's parameter count; the size axis the last checkpoint of each parameter
count (the most tokens, else steps, else the last given), by parameters.

Findings: on each axis with at least two checkpoints, first against last, paired over queries
(the per-query difference, its mean and standard error): the overlap of the top-10, TrackStar's
MRR, and the share of TrackStar's top-10 that entails the fact each rise. Verdicts as
:func:`factrace.evaluate.ladder.findings` gives them (:data:`~factrace.evaluate.ladder.SIGNIFICANT_SE`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from factrace.errors import FactraceError
from factrace.evaluate.kinds import kinds_summary
from factrace.evaluate.ladder import SIGNIFICANT_SE, Finding, held_at, results_rows
from factrace.evaluate.metrics import attribution_metrics, bare_id, mean_stderr

OVERLAP_K = 10
"""The cut-off of the top-k overlap."""
ALIGNMENT = {"overlap10": "the overlap of TrackStar's and BM25's top-10",
             "mrr": "TrackStar's MRR",
             "entails10": "the share of TrackStar's top-10 that entails the fact"}
"""What each alignment finding compares, first checkpoint against last."""


@dataclass(frozen=True)
class Checkpoint:
    """One model of the study and what is known of its place on the axes.

    Attributes:
        model: its directory (or GGUF file).
        optimizer_state: where V is read from (the directory itself; ``None``: estimated).
        tail_patch_state: the AdamW state of its tail-patch step (``optimizer.pt``); ``None``:
            an SGD step of ``--lr``.
        tokens: training tokens seen, if recorded.
        step: optimizer steps taken, if recorded.
        recorded: where ``tokens``/``step`` were read (``"none"`` when nowhere).
    """

    model: str
    optimizer_state: str | None
    tail_patch_state: str | None
    tokens: int | None
    step: int | None
    recorded: str


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def training_position(model: str) -> tuple[int | None, int | None, str]:
    """``(tokens, step, where)`` of a checkpoint directory (see the module docstring)."""
    folder = Path(model)
    if not folder.is_dir():
        return None, None, "none"
    for name, tokens_key, step_key in (("train_info.json", "tokens_seen", "steps"),
                                       ("factrace.json", "tokens", "step"),
                                       ("trainer_state.json", "num_input_tokens_seen",
                                        "global_step")):
        record = _read_json(folder / name)
        tokens, step = _count(record.get(tokens_key)), _count(record.get(step_key))
        if tokens or step:
            return tokens, step, name
    return None, None, "none"


def _tokenizer_fingerprint(model: str) -> str:
    from factrace.model.load import is_gguf, load_model, tokenizer_fingerprint

    if is_gguf(model):
        return tokenizer_fingerprint(load_model(model, "cpu").tokenizer)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise FactraceError(f"{model}: no tokenizer could be loaded ({e})".splitlines()[0]) from e
    return tokenizer_fingerprint(tokenizer)


def check_checkpoints(models, second_moment: str | None, tail_patch: bool,
                      lr: float | None) -> list[Checkpoint]:
    """The checkpoints of a scaling study, refused before any work when they cannot all be
    measured alike: a model given twice, a checkpoint without optimizer state (unless ``--second-moment
    estimate``/``none``), without ``optimizer.pt`` for tail-patch (unless ``--lr``), or two
    tokenizers that differ (both named)."""
    from factrace.model.optimizer_state import optimizer_file

    models = [str(m) for m in models]
    repeated = sorted({m for m in models if models.count(m) > 1})
    if repeated:
        raise FactraceError(f"--model {repeated[0]} is given twice; give each checkpoint once")
    estimated = second_moment in ("estimate", "none")
    out = []
    for model in models:
        if not Path(model).exists():
            raise FactraceError(f"--model {model}: no such directory or file")
        if not estimated:
            if not Path(model).is_dir():
                raise FactraceError(f"--model {model}: a file holds no optimizer state; pass "
                                    "--second-moment estimate")
            optimizer_file(model)  # a clear error when there is none
        step_state = Path(model) / "optimizer.pt"
        has_step = step_state.is_file()
        if tail_patch and not has_step and lr is None:
            raise FactraceError(f"{model}: no optimizer.pt for tail-patch's AdamW step; pass "
                                "--lr (one SGD step instead) or --no-tail-patch")
        out.append(Checkpoint(model, None if estimated else model,
                              str(step_state) if has_step else None,
                              *training_position(model)))
    prints = {}
    for c in out:
        fp = _tokenizer_fingerprint(c.model)
        for other, other_fp in prints.items():
            if other_fp != fp:
                raise FactraceError(f"checkpoints {other} and {c.model} have different "
                                    "tokenizers; a scaling study compares models on the same "
                                    "token ids")
        prints[c.model] = fp
    return out


def overlap(a: list[str], b: list[str], k: int = OVERLAP_K) -> float:
    """``|top-k(a) ∩ top-k(b)| / k``, a window ``<doc>#<n>`` counted as its passage."""
    first = {bare_id(d) for d in a[:k]}
    second = {bare_id(d) for d in b[:k]}
    return len(first & second) / k


def checkpoint_entry(checkpoint: Checkpoint, parameters: int, rankings: dict, qrels,
                     tail_patch: dict, facts, texts) -> dict:
    """One checkpoint's numbers, each with its se, and the per-query values the paired
    findings need. ``rankings`` and ``tail_patch``: ``{"trackstar": ..., "bm25": ...}``."""
    rows = results_rows(rankings, qrels, tail_patch)
    by = {r["method"]: r for r in rows}
    for row in rows:
        row["kinds"] = kinds_summary(rankings[row["method"]], facts, qrels, texts)
    top = {m: {r.query_id: r.doc_ids for r in ranked} for m, ranked in rankings.items()}
    common = [q for q in top["trackstar"] if q in top["bm25"]]
    overlaps = {q: overlap(top["trackstar"][q], top["bm25"][q]) for q in common}
    stats = mean_stderr(list(overlaps.values()))
    reciprocal = attribution_metrics(rankings["trackstar"], qrels).reciprocal_ranks
    entails = {}
    if facts:
        from factrace.evaluate.kinds import ranking_kinds

        for q in common:
            if q in facts:
                kinds = ranking_kinds(top["trackstar"][q][:OVERLAP_K], texts, facts[q],
                                      qrels.get(q, ()))
                entails[q] = kinds.count("entails") / len(kinds) if kinds else 0.0
    return {"model": checkpoint.model, "parameters": parameters, "tokens": checkpoint.tokens,
            "step": checkpoint.step, "recorded": checkpoint.recorded,
            "trackstar": by["trackstar"], "bm25": by["bm25"],
            "overlap10": stats.mean, "overlap10_se": stats.stderr,
            "per_query": {"overlap10": overlaps, "mrr": reciprocal, "entails10": entails}}


def axes(entries: list[dict]) -> dict:
    """``{"tokens": [indices], "tokens_by": ..., "size": [indices]}``: the entries on each
    axis, in axis order (see the module docstring)."""
    last = entries[-1]["parameters"]
    run = [i for i, e in enumerate(entries) if e["parameters"] == last]
    if all(entries[i]["tokens"] for i in run):
        by, key = "training tokens", "tokens"
    elif all(entries[i]["step"] for i in run):
        by, key = "optimizer steps (no record of tokens)", "step"
    else:
        by, key = "the order given (no record of tokens or steps)", None
    if key:
        run.sort(key=lambda i: entries[i][key])
    sizes: dict[int, int] = {}
    for i, e in enumerate(entries):  # the most trained of each size, else the last given
        best = sizes.get(e["parameters"])
        if best is None or _trained(e, i) >= _trained(entries[best], best):
            sizes[e["parameters"]] = i
    size = sorted(sizes.values(), key=lambda i: entries[i]["parameters"])
    return {"tokens": run if len(run) > 1 else [], "tokens_by": by,
            "size": size if len(size) > 1 else []}


def _trained(entry: dict, index: int) -> tuple[int, int, int]:
    return entry["tokens"] or 0, entry["step"] or 0, index


def _paired(first: dict, last: dict, key: str, axis: str, how: str) -> Finding:
    claim = f"With {axis}, {ALIGNMENT[key]} rises (influence aligns with attribution)"
    before, after = first["per_query"][key], last["per_query"][key]
    common = [q for q in before if q in after]
    if not common:
        return Finding(claim, None, "not measured: no query has a value at both checkpoints")
    diff = mean_stderr([after[q] - before[q] for q in common])
    a = mean_stderr([before[q] for q in common])
    b = mean_stderr([after[q] for q in common])
    z = (math.copysign(math.inf, diff.mean) if diff.stderr == 0 and diff.mean
         else diff.mean / diff.stderr if diff.stderr else 0.0)
    return Finding(claim, held_at(z), f"{a.mean:.3f} ± {a.stderr:.3f} ({how(first)}) → {b.mean:.3f} ± "
                                f"{b.stderr:.3f} ({how(last)}); paired difference "
                                f"{diff.mean:+.3f} ± {diff.stderr:.3f} over {diff.n} queries, "
                                f"{z:+.1f} se ({SIGNIFICANT_SE:g} needed either way)", z)


def scaling_findings(entries: list[dict], order: dict) -> list[Finding]:
    """First against last checkpoint on each axis that has two or more, paired over queries;
    an axis with fewer gets one finding, not measured, saying why."""
    out = []

    def tokens(e: dict) -> str:
        if order["tokens_by"] == "training tokens":
            return f"{e['tokens']:,} tokens"
        if e["step"]:
            return f"step {e['step']:,}"
        return Path(e["model"]).name

    for axis, how, name in (("tokens", tokens, "more training tokens"),
                            ("size", lambda e: f"{e['parameters']:,} parameters", "more "
                             "parameters")):
        chosen = order[axis]
        if len(chosen) < 2:
            why = ("fewer than two checkpoints share the last model's parameter count"
                   if axis == "tokens" else "every checkpoint has the same parameter count")
            out.append(Finding(f"With {name}, influence aligns more closely with attribution",
                               None, f"not measured: {why}"))
            continue
        first, last = entries[chosen[0]], entries[chosen[-1]]
        for key in ALIGNMENT:
            if key == "entails10" and not first["per_query"][key]:
                continue
            out.append(_paired(first, last, key, name, how))
    return out


def run_scaling(cfg, checkpoints: list[Checkpoint], queries, qrels, texts, facts, bm25,
                folder: Path, known: dict | None = None) -> dict:
    """Measure every checkpoint (:func:`checkpoint_entry`); ``known``: the model whose
    trackstar rankings and shared tail-patch the full comparison already holds
    (``{"model", "rankings", "tail_patch"}``), not measured again.

    ``cfg`` is the :class:`~factrace.evaluate.compare.CompareConfig` of the comparison: its
    corpus, queries and encoder options are every checkpoint's."""
    from factrace.evaluate.compare import ladder_rankings, tail_patch_from_union, union_tail_patch
    from factrace.model.load import load_model
    from factrace.model.optimizer_state import load_optimizer_state

    entries = []
    selected = queries[:cfg.tail_patch_queries] if cfg.tail_patch_queries else queries
    for i, c in enumerate(checkpoints):
        if cfg.progress:
            print(f"scaling study: checkpoint {i + 1} of {len(checkpoints)}: {c.model}",
                  flush=True)
        loaded = load_model(c.model, cfg.device, "float32")
        parameters = sum(p.numel() for p in loaded.model.parameters())
        one = replace(cfg, model=c.model, optimizer_state=c.optimizer_state,
                      variants=("trackstar",), baselines=(),
                      scores=False, lds=None)  # full scores and LDS: the final model's only
        if known is not None and known["model"] == c.model:
            ranked = {"trackstar": known["rankings"]["trackstar"], "bm25": bm25}
            shared = known["tail_patch"]
            patched = (tail_patch_from_union(shared, ranked, [q.id for q in selected],
                                             cfg.tail_patch_k) if shared else {})
        else:
            state = (load_optimizer_state(c.optimizer_state, loaded.model)
                     if c.optimizer_state else None)
            ranked = {"trackstar": ladder_rankings(one, loaded, state, queries,
                                                   folder / f"checkpoint-{i}")["trackstar"],
                      "bm25": bm25}
            patched = {}
            if cfg.tail_patch:
                patched, _ = union_tail_patch(loaded, replace(one, optimizer_state=
                                                              c.tail_patch_state),
                                              queries, ranked, texts)
        entries.append(checkpoint_entry(c, parameters, ranked, qrels, patched, facts, texts))
        del loaded
    order = axes(entries)
    placed = (f"; the tokens axis ordered by {order['tokens_by']}" if order["tokens"] else "")
    return {"checkpoints": entries, "axes": order, "findings": scaling_findings(entries, order),
            "same": "every checkpoint: the same corpus, queries, qrels and encoder settings "
                    f"({_settings(cfg)}); BM25 ranked once{placed}"}


def _settings(cfg) -> str:
    options = ", ".join(f"{k} {v}" for k, v in sorted(cfg.encoder_options.items()))
    return f"trackstar, {options or 'defaults'}, top-{cfg.tail_patch_k} tail-patched"
