"""LDS beside MRR, recall@10 and tail-patch on the fact world: factrace's ladder, the baselines,
the exact whole-gradient cosine and bergson's ``trackstar``, in one table.

    python benchmarks/lds.py --out /tmp/lds-bench --subsets 32 --noise-subsets 16 \
        --leave-out 12 --workers 2 --bergson-python /path/to/bergson-venv/bin/python

1. ``factrace demo --lds M``: the demo (world, pretrained model, ladder, baselines, tail-patch
   of the first 100 queries) with every method's full scores, the demo model retrained on M
   random 50% subsets (seed 0: the demo's own recipe and seed) and the first ``noise-subsets`` of
   them retrained again with seed 1 (the noise floor). Retrainings are cached
   (``~/.cache/factrace/lds``), so a rerun only re-scores.
2. The exact whole-gradient cosine (``quality.py``'s reference: the whole ``factored``-corrected
   per-example gradient of every tracked weight, no projection, no R), full scores.
3. bergson's ``trackstar`` (``peer_quality.py --scores-out``; its whole score matrix), when
   ``--bergson-python`` is given.
4. For 2 and 3: MRR, recall@10 and tail-patch on the demo's queries (tail-patch: the same first
   100 queries, one AdamW step per top-10 passage, as the demo).
5. LDS of every method against the 50% subsets (TRAK) and, with ``--leave-out L``, against L
   subsets that each leave 10% out (retrained with seed 0, and seed 1 where cached, for that
   variant's noise floor).

Steps 2 and 3 keep their results in ``OUT`` (``exact.npz``, ``bergson.npz`` and their
metrics); a rerun reuses them. The table goes to stdout and ``OUT/lds_table.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def rankings_of(full, k: int = 10):
    from factrace.data.io import Ranking

    out = []
    for i, qid in enumerate(full.query_ids):
        row = full.scores[i]
        top = np.argsort(-row, kind="stable")[:k]
        out.append(Ranking(qid, [full.doc_ids[j] for j in top], [float(row[j]) for j in top]))
    return out


def exact_scores(world: dict, path: Path, threads: int):
    """The exact whole-gradient cosine of every (query, passage), written to ``path``."""
    import torch

    sys.path.insert(0, str(HERE))
    from quality import exact_pass, examples_of

    from factrace.config import EncoderConfig
    from factrace.data.corpus import iter_corpus
    from factrace.data.io import read_queries
    from factrace.encode.encoder import Encoder
    from factrace.model.load import load_model
    from factrace.model.optimizer_state import load_optimizer_state
    from factrace.search.full import FullScores, write_scores

    torch.set_num_threads(threads)
    loaded = load_model(world["model"], "cpu", "float32")
    state = load_optimizer_state(world["optimizer"], loaded.model)
    enc = Encoder(loaded, EncoderConfig(projection="exact", hessian="none", normalize=False),
                  state)
    examples, q_ex = examples_of(enc, list(iter_corpus(world["corpus"])),
                                 read_queries(world["queries"]))
    scores, _ = exact_pass(enc, examples, q_ex, [])
    full = FullScores(scores.astype(np.float32), [q.id for q in q_ex],
                      [e.id for e in examples], "exact gradient cosine")
    write_scores(path, full)
    return full, enc.dim


def metrics_of(full, world: dict, tail_patch_queries: int) -> dict:
    """MRR, recall@10 and tail-patch of a full score matrix's top-10, as the demo measures."""
    from factrace.data.corpus import iter_corpus
    from factrace.data.io import read_qrels, read_queries
    from factrace.evaluate.ladder import results_rows
    from factrace.evaluate.tail_patch import tail_patch
    from factrace.model.load import load_model

    ranked = rankings_of(full)
    loaded = load_model(world["model"], "cpu", "float32")
    texts = {p.id: p.text for p in iter_corpus(world["corpus"])}
    patched = tail_patch(loaded, world["optimizer"], read_queries(world["queries"]), ranked,
                         texts, k=10, n_queries=tail_patch_queries, progress=False)
    row = results_rows({"m": ranked}, read_qrels(world["qrels"]), {"m": patched})[0]
    return {k: v for k, v in row.items() if k != "method"}


def cached_part(name: str, out: Path, make):
    """``(FullScores, metrics)`` of a part, reused from ``out`` when there."""
    from factrace.search.full import read_scores

    scores, info = out / f"{name}.npz", out / f"{name}.json"
    if scores.is_file() and info.is_file():
        print(f"{name}: reused {scores}", flush=True)
        return read_scores(scores), json.loads(info.read_text())
    t = time.perf_counter()
    full, record = make(scores)  # a make finding its scores written already only measures
    record["seconds"] = round(time.perf_counter() - t, 1)
    info.write_text(json.dumps(record, indent=2))
    print(f"{name}: {record['seconds']} s", flush=True)
    return full, record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--passages", type=int, default=3000, help="the demo world's size")
    ap.add_argument("--queries", type=int, default=300, help="the demo world's queries")
    ap.add_argument("--subsets", type=int, default=32, help="50%% subsets (TRAK LDS)")
    ap.add_argument("--noise-subsets", type=int, default=16,
                    help="of those, retrained again with seed 1 for the noise floor")
    ap.add_argument("--leave-out", type=int, default=0,
                    help="subsets leaving 10%% out (0: not measured)")
    ap.add_argument("--workers", type=int, default=2, help="retrainings at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the exact pass")
    ap.add_argument("--bergson-python", default=None)
    ap.add_argument("--projection-dim", type=int, default=24, help="bergson's P")
    ap.add_argument("--reuse-demo", action="store_true",
                    help="read the demo's results from an earlier run in OUT (e.g. to add "
                    "the leave-out column) instead of running it again")
    args = ap.parse_args()
    from factrace.data.corpus import iter_corpus
    from factrace.evaluate.lds import lds, noise_floor, random_subsets
    from factrace.factworld.pretrain import PretrainConfig
    from factrace.factworld.retrain import Recipe, retrain_all
    from factrace.run.demo import DemoConfig, cache_dir, run_demo
    from factrace.search.full import read_scores

    args.out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t = time.perf_counter()
    demo_cfg = DemoConfig(out=str(args.out / "demo"), passages=args.passages,
                          queries=args.queries, tail_patch_queries=min(100, args.queries),
                          lds=args.subsets,
                          lds_noise_subsets=args.noise_subsets, workers=args.workers,
                          overwrite=True, progress=False)
    results = args.out / "demo" / "results.json"
    if args.reuse_demo and results.is_file():
        demo = json.loads(results.read_text())
        demo["model_dir"] = json.loads((args.out / "demo" / "demo.json").read_text())["model_dir"]
        print(f"demo: reused {results}", flush=True)
    else:
        demo = run_demo(demo_cfg)
        timings["demo --lds"] = time.perf_counter() - t
    model_dir = Path(demo["model_dir"])
    world_dir = args.out / "demo" / "world"
    world = {"model": str(model_dir), "optimizer": str(model_dir / "optimizer.pt"),
             "corpus": str(world_dir / "corpus.jsonl"),
             "queries": str(world_dir / "queries.jsonl"), "qrels": str(world_dir / "qrels.jsonl")}
    tp_queries = demo_cfg.tail_patch_queries
    rows = {r["method"]: dict(r) for r in demo["rows"]}
    full = {m: read_scores(args.out / "demo" / "scores" / f"{m}.npz") for m in rows}

    def make_exact(path):
        if path.is_file():
            scores, dim = read_scores(path), None
        else:
            scores, dim = exact_scores(world, path, args.threads)
        return scores, {"dim": dim, **metrics_of(scores, world, tp_queries)}

    full["exact gradient"], rows["exact gradient"] = cached_part("exact", args.out, make_exact)
    if args.bergson_python:
        def make_bergson(path):
            cmd = [sys.executable, str(HERE / "peer_quality.py"), "--bergson-python",
                   args.bergson_python, "--corpus", world["corpus"], "--queries",
                   world["queries"], "--model", world["model"], "--optimizer-state",
                   world["optimizer"], "--projection-dim", str(args.projection_dim),
                   "--threads", str(args.threads), "--out", str(args.out / "bergson.jsonl"),
                   "--scores-out", str(path)]
            if not path.is_file():
                subprocess.run(cmd, check=True)
            scores = read_scores(path)
            return scores, metrics_of(scores, world, tp_queries)

        name = f"bergson trackstar (P={args.projection_dim})"
        full[name], rows[name] = cached_part("bergson", args.out, make_bergson)

    lds_meta = demo["metadata"]["lds"]
    subsets = random_subsets([p.id for p in iter_corpus(world["corpus"])], args.subsets, 0.5, 0)
    outputs = {}
    for line in (args.out / "demo" / "lds" / "outputs.jsonl").read_text().splitlines():
        r = json.loads(line)
        outputs[(r["subset"], r["query_id"])] = r["output"]
    for name in rows:
        result = lds(full[name].scores, full[name].query_ids, full[name].doc_ids, subsets,
                     outputs)
        rows[name]["lds"], rows[name]["lds_se"] = result.mean, result.stderr
    leave = None
    if args.leave_out:
        t = time.perf_counter()
        ids = [p.id for p in iter_corpus(world["corpus"])]
        left = random_subsets(ids, args.leave_out, 0.9, 0)
        recipe = Recipe(world["corpus"], world["queries"], str(model_dir), PretrainConfig())
        cache = cache_dir(demo_cfg).parent / "lds"
        first = retrain_all(recipe, left, [0], cache, workers=args.workers)
        out0 = {(r["subset"], q): v for r in first for q, v in r["outputs"].items()}
        for name in rows:
            result = lds(full[name].scores, full[name].query_ids, full[name].doc_ids, left,
                         out0)
            rows[name]["lds_leave"], rows[name]["lds_leave_se"] = result.mean, result.stderr
        second = [json.loads(p.read_text()) for p in sorted(cache.glob("*.json"))]
        keys = {s.id: s for s in left}
        again = {}
        for r in second:  # seed-1 retrainings of these very subsets, where cached
            if r["seed"] == 1 and r["subset"] in keys and r["recipe"] == recipe.fingerprint() \
                    and r["n_passages"] == len(keys[r["subset"]].passages):
                again.update({(r["subset"], q): v for q, v in r["outputs"].items()})
        twice = [s for s in left if any(k[0] == s.id for k in again)]
        qids = full["trackstar"].query_ids
        leave = {"subsets": len(left), "noise": noise_floor(out0, again, twice, qids)
                 if len(twice) >= 3 else None, "noise_subsets": len(twice)}
        timings["leave-out"] = time.perf_counter() - t

    def cell(row, key, digits=3):
        if row.get(key) is None:
            return "–"
        if key == "tail_patch":
            return f"{row[key]:#.3g} ± {row[key + '_se']:#.2g}"
        return f"{row[key]:.{digits}f} ± {row.get(key + '_se') or 0:.{digits}f}"

    head = "| method | LDS (50% subsets) | " + ("LDS (leave 10% out) | " if leave else "") + \
        "MRR | recall@10 | tail-patch |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, row in rows.items():
        cells = [name, cell(row, "lds")] + ([cell(row, "lds_leave")] if leave else []) + \
            [cell(row, "mrr"), cell(row, "recall10"), cell(row, "tail_patch")]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"TRAK LDS: {lds_meta['variant']}; noise floor {lds_meta.get('noise_floor')} "
             f"({lds_meta.get('noise_floor_from')})"]
    if leave:
        nf = leave["noise"]
        notes.append(f"leave-out LDS: {leave['subsets']} subsets keeping 90%; noise floor "
                     + (f"{nf.mean:.3f} ± {nf.stderr:.3f} (seed 1 against seed 0 on "
                        f"{leave['noise_subsets']} subsets)" if nf else "not measured"))
    notes.append("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    table = "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    (args.out / "lds_table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
