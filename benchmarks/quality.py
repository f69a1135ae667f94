"""Where tracing quality goes: every projection and R choice against the exact gradient.

On one world (the built-in fact world, or the real-text world of ``realtext_world.py``) it
computes, for every query q and training example m, the score matrix S[q, m] of:

- the exact reference: the cosine of the whole corrected per-example gradients
  (``projection="exact"``, no projection, no R), and a CountSketch of those same gradients to d
  dimensions (what a dense random projection of the full gradient would keep);
- factrace's Kronecker projections in several layouts at equal d, each scored without R, with
  R_train, and with TrackStar's mixed R at several λ and damping values.

For each it prints the error of the cosines against the exact ones (RMS over all pairs, mean
per-query Pearson correlation, and the overlap of the top 10), MRR and recall@10 against the gold
passages, and, for the methods named by ``--tail-patch``, tail-patch ± se (one AdamW step per
passage from the saved state; Δ of each (query, passage) pair is cached in ``OUT/deltas.json``
so that methods share the work). BM25 rows come from the same evaluator.

    python benchmarks/quality.py --world fact --out /tmp/q-fact
    python benchmarks/quality.py --world realtext --out /tmp/q-real --tail-patch-queries 100

Queries and passages are encoded once per projection; the rest is algebra on those encodings.
Nothing here is fitted to the gold passages: λ is automatic or fixed, and a held-out variant
estimates R_eval on the other half of the queries.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from factrace.config import EncoderConfig
from factrace.data.corpus import iter_corpus
from factrace.data.io import Ranking, read_qrels, read_queries, read_rankings
from factrace.encode.encoder import Encoder
from factrace.encode.encoder import unit_normalize as unit
from factrace.encode.hessian import (
    Decomposed,
    RAccumulator,
    auto_lambda,
    default_k,
    descending_spectrum,
    eigh_blocks,
    whiten,
)
from factrace.evaluate.baselines import bm25_rankings
from factrace.evaluate.metrics import attribution_metrics, mean_stderr
from factrace.evaluate.tail_patch import tail_patch
from factrace.model.load import load_model
from factrace.model.optimizer_state import load_optimizer_state
from factrace.run.process import tune_process

HERE = Path(__file__).resolve().parent


# worlds ---------------------------------------------------------------------------------------
def fact_world(out: Path, passages: int = 3000, queries: int = 300) -> dict:
    from factrace.factworld.generate import generate_world
    from factrace.factworld.pretrain import PretrainConfig, fingerprint, pretrain
    from factrace.factworld.world import WorldConfig
    from factrace.run.demo import DemoConfig, cache_dir

    files = generate_world(out / "world", WorldConfig(n_passages=passages, n_queries=queries))
    pre = PretrainConfig()
    model_dir = cache_dir(DemoConfig()) / fingerprint(files.corpus, files.queries, pre)
    pretrain(files.corpus, files.queries, model_dir, pre)
    return {"corpus": files.corpus, "queries": files.queries, "qrels": files.qrels,
            "model_dir": model_dir, "optimizer_state": model_dir / "optimizer.pt"}


def realtext_world(out: Path) -> dict:
    sys.path.insert(0, str(HERE))
    from realtext_world import build_world

    return build_world(out / "world")


# encodings ------------------------------------------------------------------------------------
def examples_of(enc: Encoder, passages, queries):
    ex = list(enc.tokenize_passages(passages))
    return ex, enc.tokenize_queries(queries)


def projected(enc: Encoder, examples) -> torch.Tensor:
    """Raw p (before R and unit norm), ``[n, d]`` float32 in ``examples`` order."""
    row = {e.id: i for i, e in enumerate(examples)}
    out = torch.empty(len(examples), enc.dim)
    for ids, p in enc.project(examples):
        out[[row[i] for i in ids]] = p.cpu()
    return out


def count_sketch(dim_in: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    bucket = torch.randint(0, dim, (dim_in,), generator=g)
    sign = torch.randint(0, 2, (dim_in,), generator=g).float() * 2 - 1
    return bucket, sign


def exact_pass(enc: Encoder, examples, queries_ex, sketch_dims: list[int]):
    """Exact cosine matrix [Q, N] and CountSketches of the corrected gradients, in one pass."""
    qg = projected(enc, queries_ex)
    q_unit = unit(qg)
    sketches = {d: count_sketch(enc.dim, d) for d in sketch_dims}

    def sketch(g, d):
        bucket, sign = sketches[d]
        out = torch.zeros(g.shape[0], d)
        out.index_add_(1, bucket, g * sign)
        return out

    q_sk = {d: sketch(qg, d) for d in sketch_dims}
    row = {e.id: i for i, e in enumerate(examples)}
    scores = torch.empty(len(queries_ex), len(examples))
    p_sk = {d: torch.empty(len(examples), d) for d in sketch_dims}
    for ids, g in enc.project(examples):
        cols = [row[i] for i in ids]
        scores[:, cols] = q_unit @ unit(g).T
        for d in sketch_dims:
            p_sk[d][cols] = sketch(g, d)
    return scores.numpy(), {d: (p_sk[d], q_sk[d]) for d in sketch_dims}


def second_moments(x: torch.Tensor, spans) -> list[np.ndarray]:
    acc = RAccumulator(spans)
    acc.add(x)
    return acc.matrices()


def whitened(p, q, spans, mixed: list[np.ndarray], dampings) -> dict[float, np.ndarray]:
    """Cosine scores after R^{-1/2} of ``mixed`` (one eigendecomposition, every damping)."""
    decomposed = Decomposed(list(spans), eigh_blocks(mixed), "probe", None, None, 0, 0)
    out = {}
    for damping in dampings:
        w = whiten(decomposed, damping)
        out[damping] = (unit(w.apply(q)) @ unit(w.apply(p)).T).numpy()
    return out


def lambda_auto(train, evals, n_train, n_eval) -> float:
    dim = sum(m.shape[0] for m in train)
    k = min(default_k(dim, n_train, n_eval), dim - 1)
    return auto_lambda(descending_spectrum(train), descending_spectrum(evals), k)


# evaluation -------------------------------------------------------------------------------------
def rankings_from(scores: np.ndarray, qids, ids, k: int = 10) -> list[Ranking]:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [Ranking(q, [ids[j] for j in row], [float(scores[i, j]) for j in row])
            for i, (q, row) in enumerate(zip(qids, top, strict=True))]


def agreement(scores: np.ndarray, exact: np.ndarray) -> dict:
    rms = float(np.sqrt(np.mean((scores - exact) ** 2)))
    a = scores - scores.mean(1, keepdims=True)
    b = exact - exact.mean(1, keepdims=True)
    pearson = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1)).clip(min=1e-30)
    top_s = np.argsort(-scores, axis=1)[:, :10]
    top_e = np.argsort(-exact, axis=1)[:, :10]
    overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(top_s, top_e, strict=True)])
    return {"rms": rms, "pearson": float(pearson.mean()), "top10_overlap": float(overlap)}


class DeltaCache:
    """Tail-patch Δ per (query, passage), shared by every method and kept on disk."""

    def __init__(self, path: Path, loaded, optimizer_state, queries, texts):
        self.path, self.loaded, self.optimizer_state = path, loaded, optimizer_state
        self.queries, self.texts = queries, texts
        self.delta: dict[str, dict[str, float]] = (
            json.loads(path.read_text()) if path.exists() else {})

    def score(self, rankings: list[Ranking], n_queries: int, k: int = 10):
        selected = self.queries[:n_queries]
        top = {r.query_id: r.doc_ids[:k] for r in rankings}
        todo = {q.id: [d for d in top[q.id] if d not in self.delta.get(q.id, {})]
                for q in selected}
        if any(todo.values()):
            longest = max(len(v) for v in todo.values())
            res = tail_patch(self.loaded, self.optimizer_state, selected, todo, self.texts,
                             k=longest, progress=False)
            for qid, pairs in res.per_passage.items():
                self.delta.setdefault(qid, {}).update(dict(pairs))
            self.path.write_text(json.dumps(self.delta))
        per_query = [float(np.mean([self.delta[q.id][d] for d in top[q.id]])) for q in selected]
        return mean_stderr(per_query)


# the probe ------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", choices=["fact", "realtext"], default="fact")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dim", type=int, default=16128,
                    help="d for every projection (default divisible by 14, 16 and 28 blocks)")
    ap.add_argument("--train-examples", type=int, default=2048)
    ap.add_argument("--layouts", default="layers,modules",
                    help="Kronecker layouts to probe, comma-separated; LAYOUT/gN uses N layer "
                    "groups, LAYOUT/aX blocks about X times taller (output side) than wide")
    ap.add_argument("--tail-patch", default="exact,bm25+target,layers/none,layers/mixed-auto,"
                    "modules/none,modules/mixed-auto",
                    help="methods to tail-patch (comma-separated; empty for none)")
    ap.add_argument("--rankings", action="append", default=[], metavar="NAME=PATH",
                    help="rankings of another tool (e.g. peer_quality.py's) to evaluate beside")
    ap.add_argument("--dampings", default="0.1,1,10", help="η values of R^{-1/2}")
    ap.add_argument("--lambdas", default="0.9,0.99", help="fixed λ values besides automatic")
    ap.add_argument("--no-r", action="store_true",
                    help="probe the projections only (no R: the R fits dominate at large d)")
    ap.add_argument("--tail-patch-queries", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    tune_process()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    world = fact_world(out) if args.world == "fact" else realtext_world(out)
    passages = list(iter_corpus(world["corpus"]))
    queries = read_queries(world["queries"])
    qrels = read_qrels(world["qrels"])
    loaded = load_model(str(world["model_dir"]), "cpu", "float32")
    state = load_optimizer_state(str(world["optimizer_state"]), loaded.model)
    texts = {p.id: p.text for p in passages}
    n_params = sum(p.numel() for p in loaded.model.parameters())
    print(f"world {args.world}: {len(passages)} passages, {len(queries)} queries, model "
          f"{n_params / 1e6:.2f}M parameters ({time.perf_counter() - t0:.0f} s to build/load)",
          flush=True)

    results: dict[str, dict] = {}
    rankings: dict[str, list[Ranking]] = {}
    scores_of: dict[str, np.ndarray] = {}
    qids = [q.id for q in queries]

    def record(name, scores, extra=None, exact=None):
        ranked = rankings_from(scores, qids, ids)
        m = attribution_metrics(ranked, qrels)
        row = {"mrr": m.mrr.mean, "mrr_se": m.mrr.stderr, "recall10": m.recall.mean,
               **(agreement(scores, exact) if exact is not None else {}), **(extra or {})}
        results[name], rankings[name], scores_of[name] = row, ranked, scores
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in row.items() if k != "whitening")
        print(f"  {name:<32} {shown}", flush=True)

    # the exact reference and CountSketches of it
    t = time.perf_counter()
    exact_enc = Encoder(loaded, EncoderConfig(projection="exact", hessian="none",
                                              normalize=False), state)
    examples, q_ex = examples_of(exact_enc, passages, queries)
    ids = [e.id for e in examples]
    exact, sketches = exact_pass(exact_enc, examples, q_ex, [args.dim])
    print(f"exact reference: D = {exact_enc.dim:,} tracked weights, "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    record("exact", exact, exact=exact)
    n = len(examples)
    train_rows = np.linspace(0, n - 1, min(args.train_examples, n)).round().astype(int)
    half = np.arange(len(queries)) % 2 == 0

    def probe(prefix, p, q, spans):
        record(f"{prefix}/none", (unit(q) @ unit(p).T).numpy(), exact=exact)
        if args.no_r:
            return
        train = second_moments(p[train_rows], spans)
        evals = second_moments(q, spans)
        dampings = tuple(float(x) for x in args.dampings.split(","))
        for damping, s in whitened(p, q, spans, train, dampings).items():
            record(f"{prefix}/train" + ("" if damping == 0.1 else f"-eta{damping:g}"), s,
                   exact=exact)
        auto = lambda_auto(train, evals, len(train_rows), len(q))
        lambdas = [(auto, "auto")] + [(float(x), x) for x in args.lambdas.split(",") if x]
        for lam, tag in lambdas:
            mixed = [lam * e + (1 - lam) * t for e, t in zip(evals, train, strict=True)]
            for damping, s in whitened(p, q, spans, mixed, dampings).items():
                name = f"{prefix}/mixed-{tag}" + ("" if damping == 0.1 else f"-eta{damping:g}")
                record(name, s, {"lambda": round(lam, 3)}, exact=exact)
        # R_eval from the odd queries only (held out), scored on the even ones, against R_eval
        # from all queries on the same even ones (λ automatic, the first damping)
        held_evals = second_moments(q[torch.from_numpy(~half)], spans)
        lam = lambda_auto(train, held_evals, len(train_rows), int((~half).sum()))
        mixed = [lam * e + (1 - lam) * t for e, t in zip(held_evals, train, strict=True)]
        eta = dampings[0]
        held = whitened(p, q, spans, mixed, (eta,))[eta]
        auto_name = f"{prefix}/mixed-auto" + ("" if eta == 0.1 else f"-eta{eta:g}")
        sub_q = [qid for qid, h in zip(qids, half, strict=True) if h]
        sub_qrels = {k: v for k, v in qrels.items() if k in set(sub_q)}
        for name, sc in ((f"{auto_name}[even]", scores_of[auto_name][half]),
                         (f"{prefix}/mixed-heldout[even]", held[half])):
            m = attribution_metrics(rankings_from(sc, sub_q, ids), sub_qrels)
            note = "" if "auto" in name else f", λ {lam:.3f}"
            print(f"  {name:<32} mrr {m.mrr.mean:.4g}, recall10 {m.recall.mean:.4g}{note}")

    for d, (p, q) in sketches.items():
        size = d // 16  # block-diagonal R over 16 equal blocks, as for the layouts
        probe(f"countsketch{d}", p, q, [(i * size, size) for i in range(16)])
    for spec in filter(None, args.layouts.split(",")):
        layout, *options = spec.split("/")
        shape = dict(dim=args.dim, layout=layout)
        for option in options:  # gN: N layer groups; aX: blocks of aspect X
            key = {"g": "layer_groups", "a": "aspect"}[option[0]]
            shape[key] = int(option[1:]) if key == "layer_groups" else float(option[1:])
        t = time.perf_counter()
        enc = Encoder(loaded, EncoderConfig(hessian="none", normalize=False, **shape), state)
        p, q = projected(enc, examples), projected(enc, q_ex)
        spans = Encoder(loaded, EncoderConfig(**shape), state).hessian_spans()
        print(f"{spec}: {len(enc.blocks)} blocks of {enc.blocks[0].rows}x{enc.blocks[0].cols}, "
              f"{time.perf_counter() - t:.0f} s", flush=True)
        probe(spec, p, q, spans)

    for name, with_target in (("bm25", False), ("bm25+target", True)):
        ranked = bm25_rankings(passages, queries, 10, with_target=with_target)
        m = attribution_metrics(ranked, qrels)
        results[name] = {"mrr": m.mrr.mean, "mrr_se": m.mrr.stderr, "recall10": m.recall.mean}
        rankings[name] = ranked
        print(f"  {name:<32} mrr {m.mrr.mean:.4g}, recall10 {m.recall.mean:.4g}")

    for spec in args.rankings:
        name, _, path = spec.partition("=")
        ranked = read_rankings(path)
        m = attribution_metrics(ranked, qrels)
        results[name] = {"mrr": m.mrr.mean, "mrr_se": m.mrr.stderr, "recall10": m.recall.mean}
        rankings[name] = ranked
        print(f"  {name:<32} mrr {m.mrr.mean:.4g}, recall10 {m.recall.mean:.4g}")

    cache = DeltaCache(out / "deltas.json", loaded, str(world["optimizer_state"]), queries, texts)
    for name in filter(None, args.tail_patch.split(",")):
        if name not in rankings:
            print(f"  (no method {name!r} to tail-patch)")
            continue
        t = time.perf_counter()
        stats = cache.score(rankings[name], args.tail_patch_queries)
        results[name]["tail_patch"], results[name]["tail_patch_se"] = stats.mean, stats.stderr
        print(f"  tail-patch {name:<28} {stats.mean:.5f} ± {stats.stderr:.5f} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
    (out / "quality.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / 'quality.json'} ({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
