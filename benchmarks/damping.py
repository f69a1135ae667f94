"""The damping η of TrackStar's R on several kinds of world, and statistics that need no gold.

For one world it encodes every passage and query once with factrace's default encoder (no R,
raw projections kept in ``OUT/proj.pt``), fits R_train as ``index build`` does (the default
number of training examples), then scores every query against every passage exactly as
``trace`` does (:class:`factrace.encode.whitening.TaskWhitening`, mixed R, λ by the paper's
rule unless a method fixes it as ``mixed/η@λ``: factrace's default is ``mixed/10@0.5``) at each
method of ``--methods``. Per method it prints MRR and
recall@10 against the gold passages, tail-patch ± se of the top 10 (one AdamW step per
passage, Δ cached per (query, passage) in ``OUT/deltas.json``),
and statistics computed from the scores and R alone — no gold, no tail-patch — that a rule
choosing η could read:

- ``hub``: the share of all top-10 slots held by the 1% of passages found most often in them
  (k-occurrence; 0.01 when every passage is found equally often). Many queries sharing the
  same proponents is the symptom of a direction common to the queries that R has not removed.
- ``qq``: the mean cosine between two different queries under R (their common part).
- ``z1``: the mean over queries of the top score's distance from the query's mean score, in
  standard deviations over the corpus.

Worlds: ``fact`` (the demo's fact world: statements under several templates per relation,
queries in the form of one of them, "X was born in" → " Y"); ``question`` (the same corpus and
model, every query asked as a question, "Question: Where was X born?\\nAnswer:" → " Y": a
phrasing no passage uses); ``realtext`` (``realtext_world.py``: Wikipedia prose, needs gensim).

    python benchmarks/damping.py --world question --out /tmp/damp-question
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quality import DeltaCache, fact_world, rankings_from, realtext_world  # noqa: E402

from factrace.config import EncoderConfig  # noqa: E402
from factrace.data.corpus import iter_corpus  # noqa: E402
from factrace.data.io import Query, read_qrels, read_queries  # noqa: E402
from factrace.encode.encoder import Encoder  # noqa: E402
from factrace.encode.hessian import RAccumulator  # noqa: E402
from factrace.encode.whitening import (  # noqa: E402
    TaskWhitening,
    TrainBasis,
    shrinkage_damping,
)
from factrace.evaluate.metrics import attribution_metrics, mean_stderr  # noqa: E402
from factrace.model.load import load_model  # noqa: E402
from factrace.model.optimizer_state import load_optimizer_state  # noqa: E402
from factrace.run.process import tune_process  # noqa: E402

QUESTIONS = {
    "born_in": "Where was {s} born?",
    "died_in": "Where did {s} die?",
    "citizen_of": "Which country is {s} a citizen of?",
    "native_language": "What is the native language of {s}?",
    "field_of_work": "In which field does {s} work?",
    "employer": "Who does {s} work for?",
    "located_in": "In which country is {s}?",
    "capital_of": "Which country is {s} the capital of?",
    "official_language": "What is the official language of {s}?",
    "founded_by": "Who founded {s}?",
    "headquartered_in": "Where is {s} headquartered?",
    "industry": "In which field is {s} active?",
    "author": "Who wrote {s}?",
    "language_of_work": "In which language was {s} written?",
}
"""Each relation of the fact world asked as a question (a phrasing no passage uses)."""


def question_world(out: Path) -> dict:
    """The fact world's corpus, model and gold passages; its queries asked as questions."""
    world = fact_world(out)
    facts = {}
    for line in (out / "world" / "facts.jsonl").read_text().splitlines():
        f = json.loads(line)
        facts[f["query_id"]] = f
    path = out / "world" / "questions.jsonl"
    with path.open("w") as fh:
        for q in read_queries(world["queries"]):
            f = facts[q.id]
            prompt = question_prompt(f["relation"], f["subject"])
            fh.write(json.dumps({"id": q.id, "prompt": prompt, "target": q.target}) + "\n")
    return {**world, "queries": path}


def question_prompt(relation: str, subject: str) -> str:
    return "Question: " + QUESTIONS[relation].format(s=subject) + "\nAnswer:"


def qa_world(out: Path, qa_passages: int = 1500, seed: int = 0) -> dict:
    """The fact world's corpus plus ``qa_passages`` question-answer passages about facts that
    are not asked ("Question: Where was X born?\nAnswer: Y."), a model pretrained on both,
    and every asked fact as a question. The asked facts are stated only in the fact world's
    statement templates, so each query's gold passages share its fact but not its phrasing."""
    import random

    from factrace.factworld.pretrain import PretrainConfig, fingerprint, pretrain
    from factrace.factworld.world import WorldConfig, build_world
    from factrace.run.demo import DemoConfig, cache_dir

    base = fact_world(out)
    asked = {}
    for line in (out / "world" / "facts.jsonl").read_text().splitlines():
        f = json.loads(line)
        asked[f["query_id"]] = f
    world = build_world(WorldConfig(n_passages=3000, n_queries=300))
    names = [e.name for e in world.entities]
    asked_keys = {(f["subject"], f["relation"]) for f in asked.values()}
    others = [f for f in world.facts if (names[f.subject], f.relation) not in asked_keys]
    random.Random(f"qa-world:{seed}").shuffle(others)
    wdir = out / "qa-world"
    wdir.mkdir(parents=True, exist_ok=True)
    corpus = wdir / "corpus.jsonl"
    with corpus.open("w") as fh:
        fh.write(Path(base["corpus"]).read_text())
        for k, f in enumerate(others[:qa_passages]):
            text = question_prompt(f.relation, names[f.subject]) + f" {names[f.object]}."
            fh.write(json.dumps({"id": f"qa{k:05d}", "text": text}) + "\n")
    queries = wdir / "queries.jsonl"
    with queries.open("w") as fh:
        for q in read_queries(base["queries"]):
            f = asked[q.id]
            fh.write(json.dumps({"id": q.id, "prompt": question_prompt(f["relation"],
                                 f["subject"]), "target": q.target}) + "\n")
    pre = PretrainConfig(num_threads=1)  # one thread: far faster on a busy machine
    model_dir = cache_dir(DemoConfig()) / fingerprint(corpus, queries, pre)
    pretrain(corpus, queries, model_dir, pre)
    info = json.loads((model_dir / "train_info.json").read_text())
    print(f"qa world: {len(others[:qa_passages])} question-answer passages added; fact "
          f"accuracy on the asked questions {info['fact_accuracy']:.3f}", flush=True)
    return {"corpus": corpus, "queries": queries, "qrels": base["qrels"],
            "model_dir": model_dir, "optimizer_state": model_dir / "optimizer.pt"}


def encode(out: Path, loaded, state, passages, queries, dim: int):
    """Raw projections ``p`` [N, d], ``q`` [Q, d] of the default encoder, and its R spans."""
    cache = out / f"proj-{dim}.pt"
    cfg = EncoderConfig(dim=dim, hessian="none", normalize=False)
    enc = Encoder(loaded, cfg, state)
    spans = Encoder(loaded, EncoderConfig(dim=dim), state).hessian_spans()
    if cache.exists():
        saved = torch.load(cache)
        return saved["p"], saved["q"], saved["ids"], spans
    t = time.perf_counter()
    examples = list(enc.tokenize_passages(passages))
    q_ex = enc.tokenize_queries(queries)

    def projected(exs):
        row = {e.id: i for i, e in enumerate(exs)}
        x = torch.empty(len(exs), enc.dim)
        for ids, p in enc.project(exs):
            x[[row[i] for i in ids]] = p.cpu()
        return x

    p, q = projected(examples), projected(q_ex)
    ids = [e.id for e in examples]
    torch.save({"p": p, "q": q, "ids": ids}, cache)
    print(f"encoded {len(ids)} passages and {len(q_ex)} queries at d = {dim:,} "
          f"({time.perf_counter() - t:.0f} s)", flush=True)
    return p, q, ids, spans


OTHER_R_EVAL = ("single", "heldout")
"""Modes whose R_eval is not the scored queries' own, as ``trace`` / ``ask`` build it for a
question asked alone: ``single``, the question alone (a store with no task); ``heldout``, the
other half of the queries (even queries scored with the odd ones' R_eval and the other way
round: a store's default task of other questions)."""


def r_eval_groups(mode: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(scored, fitted)`` masks over ``n`` queries: the queries scored together and those whose
    R_eval scores them, for ``own`` (all with all) or an :data:`OTHER_R_EVAL` mode."""
    if mode == "own":
        return [(np.ones(n, bool), np.ones(n, bool))]
    if mode == "single":
        return [(np.arange(n) == i, np.arange(n) == i) for i in range(n)]
    even = np.arange(n) % 2 == 0
    return [(even, ~even), (~even, even)]


def other_r_eval(mode: str, basis: TrainBasis, rows: torch.Tensor, y: torch.Tensor,
                 damping, lam: float | None) -> tuple[np.ndarray, float, list[float]]:
    """Scores ``[Q, N]`` of an :data:`OTHER_R_EVAL` mode, the mean λ, and the block η."""
    n = y.shape[0]
    scores = np.empty((n, rows.shape[0]), dtype=np.float32)
    lams = []
    for scored, fitted in r_eval_groups(mode, n):
        task = TaskWhitening.fit(basis, "mixed", y[torch.from_numpy(fitted)], damping=damping,
                                 lam=lam)
        q = y[torch.from_numpy(scored)]
        scores[scored] = task.scorer(q, own=mode == "single")(rows).numpy()
        lams.append(task.lam)
    return scores, float(np.mean(lams)), task.etas


def gold_free(scores: np.ndarray, qq: float) -> dict:
    """Statistics of a score matrix [Q, N] that need no gold (see the module docstring)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    counts = np.bincount(top.ravel(), minlength=scores.shape[1])
    n_hub = max(1, scores.shape[1] // 100)
    hub = float(np.sort(counts)[::-1][:n_hub].sum() / top.size)
    mean, std = scores.mean(1), scores.std(1).clip(min=1e-30)
    z1 = float(((scores.max(1) - mean) / std).mean())
    return {"hub": hub, "qq": qq, "z1": z1}


def paired(per_query: dict, reference: str) -> dict:
    """Each fixed-η method minus ``reference``, per query (reciprocal rank, tail-patch): mean
    ± se of the paired differences."""
    out = {}
    ref = per_query.get(reference, {})
    for method, values in per_query.items():
        if method == reference:
            continue
        row = {}
        for metric in ("rr", "tp"):
            if metric in values and metric in ref:
                keys = sorted(set(values[metric]) & set(ref[metric]))
                diff = [ref[metric][k] - values[metric][k] for k in keys]
                stats = mean_stderr(diff)
                row[metric] = [stats.mean, stats.stderr]
        if row:
            out[method] = row
            shown = ", ".join(f"{'MRR' if k == 'rr' else 'tail-patch'} {v[0]:+.4g} ± {v[1]:.2g}"
                              for k, v in row.items())
            print(f"{reference} minus {method:<14} {shown}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", choices=["fact", "question", "qa", "realtext"], default="fact")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dim", type=int, default=1 << 14)
    ap.add_argument("--train-examples", type=int, default=2048)
    ap.add_argument("--methods", default="none,train/auto,train/10,mixed/auto,mixed/queries,"
                    "mixed/0.01,mixed/0.03,mixed/0.1,mixed/0.3,mixed/1,mixed/3,mixed/10,"
                    "mixed/30,mixed/100",
                    help="R and η: none, train/η or mixed/η; η a number, auto (factrace's rule: "
                    "R_train's Ledoit-Wolf shrinkage) or queries (the shrinkage of the mixed R, "
                    "queries included); mixed/η@λ fixes λ (R_eval's weight; default the paper's "
                    "rule); single/… and heldout/…: R_eval from the query alone or from the "
                    "other half of the queries")
    ap.add_argument("--tail-patch-queries", type=int, default=100)
    ap.add_argument("--tail-patch", default="none,train/auto,mixed/auto,mixed/0.1,mixed/10",
                    help="methods whose top 10 are tail-patched (empty: none)")
    ap.add_argument("--reference", default="mixed/auto",
                    help="the method every other is compared with, query by query")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    tune_process()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    world = {"fact": fact_world, "question": question_world, "qa": qa_world,
             "realtext": realtext_world}[args.world](out)
    passages = list(iter_corpus(world["corpus"]))
    queries: list[Query] = read_queries(world["queries"])
    qrels = read_qrels(world["qrels"])
    loaded = load_model(str(world["model_dir"]), "cpu", "float32")
    state = load_optimizer_state(str(world["optimizer_state"]), loaded.model)
    p, q, ids, spans = encode(out, loaded, state, passages, queries, args.dim)
    qids = [x.id for x in queries]

    n = p.shape[0]
    train_rows = np.linspace(0, n - 1, min(args.train_examples, n)).round().astype(int)
    acc = RAccumulator(spans)
    acc.add(p[train_rows])
    basis = TrainBasis.fit(acc)
    rows, y = basis.rows(p), basis.rotate(q)
    results = {"world": args.world, "dim": args.dim, "passages": n, "queries": len(qids),
               "methods": {}}
    rankings, per_query = {}, {}
    for method in args.methods.split(","):
        mode, _, eta = method.partition("/")
        eta, _, lam = eta.partition("@")
        damping = eta if eta == "auto" else 10.0 if mode == "none" else None
        if eta == "queries":  # the mixed R's own shrinkage, queries included
            lam = TaskWhitening.fit(basis, "mixed", y, damping=10.0).lam
            damping = [shrinkage_damping(v, f, basis.n_train, y[:, o:o + size], lam)
                       for (o, size), v, f in zip(basis.spans, basis.values, basis.fourth,
                                                  strict=True)]
        elif damping is None:
            damping = float(eta)
        lam = None if lam in ("", "auto") else float(lam)
        if mode in OTHER_R_EVAL:
            scores, lam_used, etas = other_r_eval(mode, basis, rows, y, damping, lam)
            qq = float("nan")
        else:
            task = TaskWhitening.fit(basis, mode, y if mode == "mixed" else None,
                                     damping=damping, lam=lam)
            scores = task.scorer(y, own=mode == "mixed")(rows).numpy()
            lam_used, etas = task.lam, task.etas
            fq = task.factor(y)
            fq = fq / fq.norm(dim=1, keepdim=True)
            cos = (fq @ fq.T).numpy()
            qq = float((cos.sum() - np.trace(cos)) / (cos.shape[0] * (cos.shape[0] - 1)))
        ranked = rankings_from(scores, qids, ids)
        rankings[method] = ranked
        m = attribution_metrics(ranked, qrels)
        per_query[method] = {"rr": m.reciprocal_ranks}
        row = {"mrr": m.mrr.mean, "mrr_se": m.mrr.stderr, "recall10": m.recall.mean,
               "lambda": lam_used, "block_etas": etas, **gold_free(scores, qq)}
        results["methods"][method] = row
        etas = "" if etas is None else f", block η {[round(e, 3) for e in etas]}"
        print(f"{method:<14} " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                            if isinstance(v, float)) + etas, flush=True)
    if args.tail_patch:
        cache = DeltaCache(out / "deltas.json", loaded, str(world["optimizer_state"]), queries,
                           {x.id: x.text for x in passages})
        for method in args.tail_patch.split(","):
            t = time.perf_counter()
            stats = cache.score(rankings[method], args.tail_patch_queries)
            row = results["methods"][method]
            row["tail_patch"], row["tail_patch_se"] = stats.mean, stats.stderr
            top = {r.query_id: r.doc_ids[:10] for r in rankings[method]}
            per_query[method]["tp"] = {
                q.id: float(np.mean([cache.delta[q.id][d] for d in top[q.id]]))
                for q in queries[:args.tail_patch_queries]}
            print(f"tail-patch {method}: {stats.mean:.5f} ± {stats.stderr:.5f} "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
    results["paired"] = paired(per_query, args.reference)
    results["per_query"] = per_query  # reciprocal ranks and tail-patch, for other pairings
    (out / "damping.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / 'damping.json'} ({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
