"""The first stage of a compact store: which few bytes per passage find the exact top 10.

A store keeps each passage as d float16 numbers (its projection rotated into R_train's eigenbasis,
unit norm). This benchmark asks what a first stage that keeps at most 1/64 of those bytes (d/32
bytes a passage: 512 B at d = 2^14, 2 KiB at 2^16) must be so that the C passages it returns
for a query hold the query's whole exact TrackStar top 10, for C in 50 ... 2000; exact scores of
the candidates (from full rows or by re-encoding them) then give the exact answer.

Worlds (built once in ``--work``, reused after):

- **fact**: the demo's fact world (3,000 passages, 300 queries) and its pretrained tiny Llama
  (``PretrainConfig`` defaults), a store from ``factrace index build`` at the default d.
- **realtext**: ``realtext_world.py``'s model (trained on its 300 passages) and its fact queries;
  the store holds every prose window of the dump that the world's rule makes (``--realtext-rows``,
  the 300 training passages among them), so that it has thousands of rows.

Exact answers come from the store's own code: ``TaskWhitening.scorer`` with the queries' own
R_eval (the whole query set is Y, as ``trace``/``scan`` do), and a single-question case: a task
added with ``factrace index task add --default`` from the even-numbered queries, and each
odd-numbered query traced alone against it (``Tracer.scorer(y, task)``: the task's R and its
stored row norms).

Every first stage is evaluated on the same rows and queries: its approximate key per (query,
row), the C rows of largest key, and **recall** = the share of queries whose whole exact top 10
is among them. Data-dependent stages (PQ codebooks) are trained on one half of the rows and
encode the other half (two-fold cross-fitting), so that no row is coded by a codebook that saw it.
``depth`` is the largest approximate rank (1-based) of an exact top-10 row, per query: the C a
query needs; the table gives its quantiles as a fraction of the rows.

    python benchmarks/compact.py --work /tmp/compact                 # both worlds, then latency
    python benchmarks/compact.py --work /tmp/compact --worlds fact --no-latency
    python benchmarks/compact.py --work /tmp/compact --latency-only --latency-rows 1000000

See the module's ``main`` for every argument; ``benchmarks/README.md`` (section "compact") for
the results and the choice they support.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
TOP = 10
"""The exact answer a candidate set must hold: the top 10."""
CANDIDATES = (50, 100, 200, 500, 1000, 2000)


# worlds ---------------------------------------------------------------------------------------
def _cli(*args: str, threads: int) -> None:
    """One ``factrace`` command in a child process (this interpreter, this PYTHONPATH)."""
    cmd = [sys.executable, "-m", "factrace.cli", *args, "--threads", str(threads), "-q"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"  factrace {args[0]} {args[1]}: {time.perf_counter() - t:.0f} s", flush=True)


def _write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def fact_world(work: Path, threads: int) -> dict:
    """The demo's world and model (pretrained here unless already in ``work``)."""
    from factrace.factworld.generate import generate_world
    from factrace.factworld.pretrain import PretrainConfig, pretrain
    from factrace.factworld.world import WorldConfig

    out = work / "fact"
    files = generate_world(out / "world", WorldConfig(n_passages=3000, n_queries=300, seed=0))
    model = out / "model"
    pretrain(files.corpus, files.queries, model, PretrainConfig(seed=0, num_threads=threads))
    return {"dir": out, "corpus": files.corpus, "queries": files.queries, "model": model}


def realtext_world(work: Path, threads: int, rows: int) -> dict:
    """``realtext_world.py``'s model and queries; a corpus of ``rows`` windows to index."""
    sys.path.insert(0, str(HERE))
    import dataclasses

    from realtext_world import DEFAULT_CONFIG, build_world, write_data

    out = work / "realtext"
    world = build_world(out / "world", pretrain_config=dataclasses.replace(
        DEFAULT_CONFIG, num_threads=threads))
    big = out / "corpus"
    if not (big / "corpus.jsonl").is_file():
        big.mkdir(parents=True, exist_ok=True)
        write_data(big, rows, 1, 0)  # the same round-robin windows, more of them
    return {"dir": out, "corpus": big / "corpus.jsonl", "queries": world["queries"],
            "model": world["model_dir"]}


def build_store(world: dict, threads: int, seed: int = 0, dim: int | None = None) -> Path:
    """``factrace index build`` at the default d (or ``dim``) with projection ``seed``, and the
    task ``half`` (the even-numbered queries) as its default task."""
    from factrace.data.io import read_queries

    name = "store" + (f"-seed{seed}" if seed else "") + (f"-d{dim}" if dim else "")
    store = world["dir"] / name
    model = world["model"]
    if not (store / "manifest.json").is_file() or not json.loads(
            (store / "manifest.json").read_text())["complete"]:
        _cli("index", "build", "--model", str(model), "--optimizer-state",
             str(model / "optimizer.pt"), "--corpus", str(world["corpus"]), "--out", str(store),
             "--seed", str(seed), *(["--dim", str(dim)] if dim else []), threads=threads)
    manifest = json.loads((store / "manifest.json").read_text())
    if "half" not in manifest.get("tasks", {}):
        queries = read_queries(world["queries"])
        half = world["dir"] / "task_queries.jsonl"
        _write_jsonl(half, [{"id": q.id, "prompt": q.prompt, "target": q.target}
                            for q in queries[0::2]])
        _cli("index", "task", "add", "--index", str(store), "--queries", str(half),
             "--name", "half", "--default", threads=threads)
    return store


@dataclass
class World:
    """One world's store in memory, its query sets and their exact scores."""

    name: str
    ids: list[str]  # the store's row ids (a passage longer than the model's context is split
    # into windows "ID#0", "ID#1", ...)
    rows: np.ndarray  # [N, d] float32: the store's rows (rotated, unit norm)
    spans: list[tuple[int, int]]
    values: np.ndarray  # [d] R_train's eigenvalue of every coordinate
    damping: float
    own: object  # TaskWhitening of all queries' R_eval
    y_own: torch.Tensor  # [Q, d]
    task: object  # TaskWhitening of the stored task "half"
    task_norms: np.ndarray  # [N] the rows' norms under it (stored by `index task add`)
    y_single: torch.Tensor  # [Qs, d] the odd queries, each traced alone against the task
    exact_own: np.ndarray  # [Q, N] exact scores
    exact_single: np.ndarray  # [Qs, N]

    @property
    def dim(self) -> int:
        return self.rows.shape[1]


def load_world(name: str, store_path: Path, queries_path: Path, cache: Path) -> World:
    """Open the store with ``Tracer``, encode the queries (cached), score every row exactly."""
    from factrace.data.io import read_queries
    from factrace.run.tracer import Tracer

    t = time.perf_counter()
    tracer = Tracer.open(str(store_path))
    store = tracer.store
    rows = np.concatenate([np.asarray(e, dtype=np.float32) for _, e in store.iter_shards()])
    enc = tracer.encoder
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        y_all = saved["y"]
    else:
        queries = read_queries(queries_path)
        ids, y_all = enc.query_vectors(queries)
        if ids != [q.id for q in queries]:
            raise SystemExit("one example per query expected")
        torch.save({"y": y_all}, cache)
    basis = enc._basis()
    values = np.zeros(basis.dim)
    for (off, size), v in zip(basis.spans, basis.values, strict=True):
        values[off:off + size] = v
    own = enc.task(y_all)
    own_scorer = own.scorer(y_all, own=True)
    exact_own = own_scorer(torch.from_numpy(rows)).numpy()
    y_single = y_all[1::2]
    single_scorer, record = tracer.scorer(y_single[:1], task="half")
    task, task_norms = tracer.task("half")
    exact_single = task.scorer(y_single, row_norms=task_norms)(torch.from_numpy(rows)).numpy()
    # one question alone must score as the batch does (each query's u is its own)
    first = single_scorer(torch.from_numpy(rows)).numpy()[0]
    assert np.allclose(first, exact_single[0], atol=1e-5), "single-question scores differ"
    print(f"{name}: {rows.shape[0]} rows, d = {rows.shape[1]} ({len(basis.spans)} blocks), "
          f"{y_all.shape[0]} queries (own R: λ = {own.lam:.3g}); task 'half' of "
          f"{task.n_eval} queries (λ = {task.lam:.3g}), {y_single.shape[0]} single questions; "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    return World(name, store.ids, rows, list(basis.spans), values, float(own.damping), own, y_all, task,
                 np.asarray(task_norms, np.float32), y_single, exact_own, exact_single)


# first stages ----------------------------------------------------------------------------------
#: Gaussian Lloyd-Max quantizers (thresholds, levels) in units of the coordinate's deviation.
LLOYD_MAX = {
    1: ([0.0], [-0.7979, 0.7979]),
    2: ([-0.9816, 0.0, 0.9816], [-1.5104, -0.4528, 0.4528, 1.5104]),
    4: ([-2.4008, -1.8435, -1.4371, -1.0993, -0.7996, -0.5224, -0.2582, 0.0, 0.2582, 0.5224,
         0.7996, 1.0993, 1.4371, 1.8435, 2.4008],
        [-2.7326, -2.069, -1.618, -1.2562, -0.9424, -0.6568, -0.3881, -0.1284, 0.1284, 0.3881,
         0.6568, 0.9424, 1.2562, 1.618, 2.069, 2.7326]),
}
BAND_EDGES = (16, 64, 256, 1024)
"""Per block: bands of the top 16 eigen-coordinates, the next 48, ... (5 bands a block)."""


@dataclass
class Stage:
    """A first stage coded from the rows: what it keeps per passage and how it scores."""

    name: str
    bytes: float
    """Per passage, at this d."""
    train_s: float = 0.0
    recon: np.ndarray | None = None
    """``[N, d]``: the rows as the stage's codes decode (the key's numerator is ``u·p̂``)."""
    project: np.ndarray | None = None
    sketch: np.ndarray | None = None
    """``[d, k]`` and ``[N, k]``: a sketch ``p G`` (numerator ``(u G)·(p G)``)."""
    keys: dict | None = None
    """Direct keys per case (``own``/``single`` → ``[Q, N]``), for stages without rows."""
    norm: str = "none"
    """How the own case divides by ``‖R^{-1/2}p‖``: ``exact`` (oracle), ``bands`` (band energies
    and the task's W), ``none``. A stored task's norms are always the stored, exact ones."""
    note: str = ""


def halves(n: int) -> list[np.ndarray]:
    return [np.arange(0, n, 2), np.arange(1, n, 2)]


def cross_fit(rows: np.ndarray, fit, code) -> tuple[np.ndarray, float]:
    """Decoded rows, each half coded by a model fitted on the other half; fitting seconds."""
    out = np.empty_like(rows)
    seconds = 0.0
    a, b = halves(rows.shape[0])
    for train, test in ((a, b), (b, a)):
        t = time.perf_counter()
        model = fit(np.ascontiguousarray(rows[train]))
        seconds += time.perf_counter() - t
        out[test] = code(model, np.ascontiguousarray(rows[test]))
    return out, seconds / 2


def reference_w(world: World) -> np.ndarray:
    """W of R_train alone at the store's damping (λ = 0): a task-free metric for coding."""
    c = np.zeros(world.dim)
    for off, size in world.spans:
        c[off:off + size] = world.damping * world.values[off:off + size].mean()
    return 1.0 / (world.values + c)


def stage_pq(world: World, m: int, nbits: int, order: str = "perm", scaled: bool = False,
             seed: int = 0) -> Stage:
    """FAISS product quantizer with ``m`` sub-quantizers of ``nbits``: coordinates in R_train's
    eigen-order (``eigen``) or randomly permuted (``perm``: every sub-vector mixes strong and
    weak directions), optionally scaled by W_ref^{1/2} first (the metric the scores use)."""
    import faiss

    d = world.dim
    perm = np.random.default_rng(seed).permutation(d) if order == "perm" else np.arange(d)
    scale = np.sqrt(reference_w(world) / reference_w(world).mean()).astype(np.float32) \
        if scaled else np.ones(d, np.float32)
    x = (world.rows * scale)[:, perm]

    def fit(train):
        pq = faiss.ProductQuantizer(d, m, nbits)
        pq.cp.seed = seed
        pq.train(train)
        return pq

    decoded, seconds = cross_fit(x, fit, lambda pq, rows: pq.decode(pq.compute_codes(rows)))
    recon = np.empty_like(decoded)
    recon[:, perm] = decoded
    recon /= scale
    name = f"PQ{m}x{nbits}" + (" eigen-order" if order == "eigen" else "") + \
        (" W_ref-scaled" if scaled else "")
    return Stage(name, m * nbits / 8, seconds, recon=recon)


def stage_scalar(world: World, bits: int) -> Stage:
    """Every coordinate quantized alone to ``bits`` (Gaussian Lloyd-Max levels in units of its
    deviation over the other half's rows; the deviations are per store, not per row)."""
    thresholds, levels = (np.asarray(v, np.float32) for v in LLOYD_MAX[bits])

    def code(sigma, rows):
        return levels[np.searchsorted(thresholds, rows / sigma)] * sigma

    recon, seconds = cross_fit(world.rows, lambda t: t.std(0) + 1e-12, code)
    return Stage(f"scalar {bits} bit a coordinate", world.dim * bits / 8, seconds, recon=recon)


def stage_jl(world: World, budget: float, bands: int, seed: int = 0) -> Stage:
    """A Gaussian sketch to k float16 dims (the budget less the band energies)."""
    k = int((budget - 2 * bands) // 2)
    g = np.random.default_rng(seed).standard_normal((world.dim, k)).astype(np.float32)
    g /= np.sqrt(k)
    sketch = (world.rows @ g).astype(np.float16).astype(np.float32)
    return Stage(f"Gaussian sketch k={k}", 2 * k + 2 * bands, project=g, sketch=sketch,
                 norm="bands")


def stage_truncate(world: World, budget: float, bands: int) -> Stage:
    """The top-k eigen-coordinates of R_train (largest eigenvalue across blocks), float16."""
    k = int((budget - 2 * bands) // 2)
    keep = np.argsort(-world.values, kind="stable")[:k]
    recon = np.zeros_like(world.rows)
    recon[:, keep] = world.rows[:, keep].astype(np.float16)
    return Stage(f"top-{k} eigen-coordinates", 2 * k + 2 * bands, recon=recon,
                 norm="bands")


def stage_bm25(world: World, passages: list, queries: list) -> Stage:
    """Lexical candidates (no rows): BM25 of prompt + target over the passages' words, as
    ``factrace baseline --method bm25`` ranks them. Bytes: the index's postings (4-byte doc id
    and 4-byte score each) per passage."""
    import bm25s

    from factrace.evaluate.baselines import query_text

    t = time.perf_counter()
    tokens = bm25s.tokenize([p.text for p in passages], stopwords="en", show_progress=False)
    index = bm25s.BM25()
    index.index(tokens, show_progress=False)
    seconds = time.perf_counter() - t
    texts = [query_text(q, True) for q in queries]
    words = bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)
    scores = np.stack([np.asarray(index.get_scores(w), np.float32) if w else
                       np.zeros(len(passages), np.float32) for w in words])
    position = {p.id: i for i, p in enumerate(passages)}
    row_passage = [position[i] if i in position else position[i.rsplit("#", 1)[0]]
                   for i in world.ids]  # a window of a split passage scores as its passage
    scores = scores[:, row_passage]
    postings = sum(len(set(ids)) for ids in tokens.ids)
    return Stage("BM25 (prompt + target)", 8 * postings / len(passages), seconds,
                 keys={"own": scores, "single": scores[1::2]}, note="no rows")


# scoring ---------------------------------------------------------------------------------------
def case_parts(world: World, case: str):
    """``u = R⁻¹q`` per query, the task, and the exact scores of a case."""
    if case == "own":
        task, y, exact = world.own, world.y_own, world.exact_own
    else:
        task, y, exact = world.task, world.y_single, world.exact_single
    return task.apply_inverse(y.float()).numpy(), task, exact


def stage_keys(world: World, stage: Stage, case: str, norm: str | None = None) -> np.ndarray:
    """``[Q, N]`` approximate keys of ``stage`` for a case (own R or single questions)."""
    from factrace.search.compact import EigenBands, task_diagonal

    if stage.keys is not None:
        return stage.keys[case]
    u, task, _ = case_parts(world, case)
    if stage.recon is not None:
        num = u @ stage.recon.T
    else:
        num = (u @ stage.project) @ stage.sketch.T
    if case == "single":
        return num / world.task_norms[None, :]
    norm = norm or stage.norm
    if norm == "exact":
        return num / task.norms(torch.from_numpy(world.rows)).numpy()[None, :]
    if norm == "bands":
        bands = EigenBands.of_spectrum(world.spans, world.values, BAND_EDGES)
        energies = bands.energies(world.rows).astype(np.float16)
        sq = bands.weighted_sq_norms(energies, task_diagonal(task))
        return num / np.sqrt(sq)[None, :]
    return num


def n_bands(world: World) -> int:
    from factrace.search.compact import EigenBands

    return EigenBands.of_spectrum(world.spans, world.values, BAND_EDGES).n_bands


def evaluate(world: World, stage: Stage, candidates, norm: str | None = None) -> dict:
    """Recall at each C and depth quantiles, per case."""
    from factrace.search.compact import candidate_depth

    said = norm or stage.norm
    label = stage.name if stage.keys is not None else f"{stage.name} (norms: {said})"
    out = {"stage": label, "bytes": stage.bytes,
           "share": stage.bytes / (2 * world.dim), "train_s": stage.train_s}
    n = world.rows.shape[0]
    for case in ("own", "single"):
        _, _, exact = case_parts(world, case)
        depth = candidate_depth(stage_keys(world, stage, case, norm), exact, TOP)
        out[case] = {"recall": {c: float((depth <= c).mean()) for c in candidates},
                     "depth": [int(x) for x in np.percentile(depth, [50, 90, 99, 100],
                                                             method="higher")],
                     "rows": n}
    return out


def print_table(world: World, results: list[dict], candidates, rows: str = "") -> None:
    rows = rows or f"{world.rows.shape[0]} rows"
    for case, title in (("own", f"{world.exact_own.shape[0]} queries, their own R_eval"),
                        ("single", f"{world.exact_single.shape[0]} single questions, stored task "
                                   f"'half'")):
        print(f"\n{world.name}: {rows}, d = {world.dim}; {title}; recall = share of queries "
              f"whose whole exact top {TOP} is among the C candidates")
        head = " | ".join(f"C={c}" for c in candidates)
        print(f"| first stage | bytes/passage | of float16 row | fit s | {head} | depth q50 / q90 "
              f"/ q99 / max |")
        print("|---|---|---|---|" + "---|" * len(candidates) + "---|")
        for r in results:
            rec = " | ".join(f"{r[case]['recall'][c]:.2f}" for c in candidates)
            share = f"1/{1 / r['share']:.0f}" if r["share"] <= 0.5 else f"{r['share']:.2f}"
            print(f"| {r['stage']} | {r['bytes']:.0f} | {share} | {r['train_s']:.1f} | {rec} | "
                  f"{' / '.join(str(x) for x in r[case]['depth'])} |", flush=True)


def stages_at_budget(world: World, passages, queries, sweep: bool, shares=(32, 16, 8)):
    """The stages compared (generators: each is coded only when its turn comes)."""
    d = world.dim
    budget = 2 * d / 64  # bytes: 1/64 of a float16 row
    bands = n_bands(world)
    m = int(budget)  # 8-bit sub-quantizers
    yield stage_jl(world, budget, bands), None
    yield stage_truncate(world, budget, bands), None
    yield stage_pq(world, m, 8, order="eigen"), None
    yield stage_pq(world, 2 * m, 4), None
    pq = stage_pq(world, m, 8)
    yield pq, None
    for norm in ("bands", "exact"):
        yield pq, norm
    yield stage_pq(world, m, 8, scaled=True), None
    if passages is not None:
        yield stage_bm25(world, passages, queries), None
    if sweep:
        for share in shares:
            yield stage_pq(world, 2 * d // share, 8), None
        yield stage_pq(world, d // 2, 4), None
        for bits in (1, 2, 4):
            yield stage_scalar(world, bits), None



def ivf_coverage(world: World, nlists=(16, 64), probes=(1, 4, 16)) -> list[dict]:
    """Whether inverted lists could cut the scan: k-means lists of the rows (FAISS, inner
    product), probed in order of ``u·centroid`` as an IVF index probes them; per ``nprobe``, the
    share of queries whose whole exact top 10 lies in the probed lists and the share of rows
    those lists hold (the scan an IVF first stage would still do)."""
    import faiss

    out = []
    for nlist in nlists:
        km = faiss.Kmeans(world.dim, nlist, niter=20, seed=0, spherical=True)
        km.train(world.rows)
        _, assign = km.index.search(world.rows, 1)
        assign = assign[:, 0]
        sizes = np.bincount(assign, minlength=nlist)
        for case in ("own", "single"):
            u, _, exact = case_parts(world, case)
            order = np.argsort(-(u @ km.centroids.T), axis=1)
            top = np.argpartition(-exact, TOP - 1, axis=1)[:, :TOP]
            for nprobe in probes:
                if nprobe > nlist:
                    continue
                probed = order[:, :nprobe]
                held = [np.isin(assign[t], p).all() for t, p in zip(top, probed, strict=True)]
                scanned = sizes[probed].sum(1) / len(world.rows)
                out.append({"nlist": nlist, "nprobe": nprobe, "case": case,
                            "covered": float(np.mean(held)), "scanned": float(scanned.mean())})
    return out


def print_ivf(world: World, results: list[dict]) -> None:
    print(f"\n{world.name}: inverted lists over the {world.rows.shape[0]} rows (spherical "
          "k-means); covered = share of queries whose whole exact top 10 is in the probed lists")
    print("| lists | probed | own R: covered | own R: rows scanned | single: covered | single: "
          "rows scanned |")
    print("|---|---|---|---|---|---|")
    pairs = sorted({(r["nlist"], r["nprobe"]) for r in results})
    for nlist, nprobe in pairs:
        own, single = (next(r for r in results if (r["nlist"], r["nprobe"], r["case"]) ==
                            (nlist, nprobe, c)) for c in ("own", "single"))
        print(f"| {nlist} | {nprobe} | {own['covered']:.2f} | {own['scanned']:.2f} | "
              f"{single['covered']:.2f} | {single['scanned']:.2f} |")


# more rows: the real rows among synthetic distractors ------------------------------------------
def synthetic_rows(energy: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` unit rows drawn from a Gaussian with the real rows' mean energy per rotated
    coordinate (R_train's eigenbasis: the real rows' covariance there is close to diagonal)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, energy.shape[0]), dtype=np.float32) * np.sqrt(energy)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def coder(spec: str, d: int, perm: np.ndarray):
    """``(name, bytes, fit, code)`` of a scale-study stage ``pq:MxB`` or ``scalar:B``."""
    import faiss

    kind, arg = spec.split(":")
    if kind == "pq":
        m, nbits = (int(x) for x in arg.split("x"))

        def fit(train):
            pq = faiss.ProductQuantizer(d, m, nbits)
            pq.cp.seed = 0
            pq.train(np.ascontiguousarray(train[:, perm]))
            return pq

        def code(pq, rows):
            out = np.empty_like(rows)
            out[:, perm] = pq.decode(pq.compute_codes(np.ascontiguousarray(rows[:, perm])))
            return out
        return f"PQ{m}x{nbits}", m * nbits / 8, fit, code
    bits = int(arg)
    thresholds, levels = (np.asarray(v, np.float32) for v in LLOYD_MAX[bits])

    def fit_sigma(train):
        return train.std(0) + 1e-12

    def code_scalar(sigma, rows):
        return levels[np.searchsorted(thresholds, rows / sigma)] * sigma
    return f"scalar {bits} bit a coordinate", d * bits / 8, fit_sigma, code_scalar


def scale_study(world: World, specs: list[str], distractors: int, candidates,
                chunk: int = 10_000, train_rows: int = 4_000) -> list[dict]:
    """Recall of the real queries' exact top 10 over the real rows plus ``distractors``
    synthetic ones (scored exactly, as a store would), for first stages ``specs``. Each stage
    is fitted on half the real rows and ``train_rows`` synthetic ones and codes the other half
    of the real rows; the synthetic rows are coded by the first fit."""
    from factrace.search.compact import EigenBands, candidate_depth, task_diagonal

    energy = (world.rows ** 2).mean(0)
    d = world.dim
    perm = np.random.default_rng(0).permutation(d)
    sample = synthetic_rows(energy, train_rows, seed=10**6)
    bands = EigenBands.of_spectrum(world.spans, world.values, BAND_EDGES)
    parts = halves(len(world.rows))
    fits = []
    for spec in specs:
        name, size, fit, code = coder(spec, d, perm)
        t = time.perf_counter()
        models = [fit(np.concatenate([world.rows[h], sample])) for h in parts]
        seconds = (time.perf_counter() - t) / 2
        recon = np.empty_like(world.rows)
        for h, model in zip(parts[::-1], models, strict=True):
            recon[h] = code(model, world.rows[h])
        fits.append((name, size, seconds, models[0], code, recon))
        print(f"  {name}: fitted in {seconds:.0f} s", flush=True)
    del sample

    def keys_of(u, recon, rows, case, w, norms):
        num = u @ recon.T
        if case == "own":
            sq = bands.weighted_sq_norms(bands.energies(rows).astype(np.float16), w)
            return (num / np.sqrt(sq)[None, :]).astype(np.float32)
        return (num / norms[None, :]).astype(np.float32)  # a stored task's norms are exact

    cases = {}
    for case in ("own", "single"):
        u, task, exact = case_parts(world, case)
        y = world.y_own if case == "own" else world.y_single
        qn = np.sqrt(np.clip((u * y.numpy()).sum(1), 1e-30, None))
        w = task_diagonal(task)
        keys = [[keys_of(u, f[5], world.rows, case, w, world.task_norms)] for f in fits]
        cases[case] = (u, task, qn, w, [exact], keys)
    t = time.perf_counter()
    for start in range(0, distractors, chunk):
        x = synthetic_rows(energy, min(chunk, distractors - start), seed=start + 1)
        recons = [code(model, x) for _, _, _, model, code, _ in fits]
        for case, (u, task, qn, w, exact, keys) in cases.items():
            rn = task.norms(torch.from_numpy(x)).numpy()
            exact.append(((u @ x.T) / qn[:, None] / rn[None, :]).astype(np.float32))
            for i, recon in enumerate(recons):
                keys[i].append(keys_of(u, recon, x, case, w, rn))
        print(f"  distractors {start + len(x):,}/{distractors:,} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
    results = []
    for i, (name, size, seconds, *_rest) in enumerate(fits):
        r = {"stage": name, "bytes": size, "share": size / (2 * d), "train_s": seconds}
        for case, (_, _, _, _, exact, keys) in cases.items():
            depth = candidate_depth(np.concatenate(keys[i], 1), np.concatenate(exact, 1), TOP)
            r[case] = {"recall": {c: float((depth <= c).mean()) for c in candidates},
                       "depth": [int(v) for v in np.percentile(depth, [50, 90, 99, 100],
                                                               method="higher")],
                       "rows": len(world.rows) + distractors}
        results.append(r)
    return results


# latency ---------------------------------------------------------------------------------------
def faiss_index(d: int, spec: str, n: int, train_rows: int, seed: int = 0):
    """A FAISS inner-product index ``PQ{m}x{b}`` (flat ADC) or ``PQ{m}x4fs`` (4-bit fast scan)
    over ``n`` rows, trained on ``train_rows`` synthetic Gaussian rows; the stored codes are
    uniform random bytes (a flat scan's cost does not depend on their values), so that no
    ``n × d`` matrix is ever formed. Returns the index and its training seconds."""
    import faiss

    m, rest = spec[2:].split("x")
    m, fast = int(m), rest.endswith("fs")
    nbits = int(rest.removesuffix("fs"))
    rng = np.random.default_rng(seed)
    train = rng.standard_normal((train_rows, d), dtype=np.float32)
    pq = faiss.IndexPQ(d, m, nbits, faiss.METRIC_INNER_PRODUCT)
    pq.pq.cp.seed = seed
    t = time.perf_counter()
    pq.train(train)
    seconds = time.perf_counter() - t
    del train
    step = 1 << 16
    for start in range(0, n, step):
        pq.add_sa_codes(rng.integers(0, 256, size=(min(step, n - start), pq.code_size),
                                     dtype=np.uint8))
    if fast:
        fs = faiss.IndexPQFastScan(pq)  # packs the codes for SIMD lookups
        del pq
        return fs, seconds
    return pq, seconds


def latency_specs(d: int) -> list[str]:
    """What the latency study builds at ``d``: 1/64 of a float16 row as 8-bit PQ (flat ADC) and
    as 4-bit fast-scan PQ, and 1/8 as 4-bit fast-scan PQ over pairs of coordinates."""
    return [f"PQ{d // 32}x8", f"PQ{d // 16}x4fs", f"PQ{d // 2}x4fs"]


def latency_study(dims, n: int, train_rows: int, candidates, max_bytes: float,
                  repeats: int = 5) -> list[dict]:
    """Seconds for one question's first stage (FAISS search of one ``u`` against ``n`` coded
    rows, best C kept), median of ``repeats``; training and coding seconds of the quantizer."""
    import faiss

    out = []
    for d in dims:
        for spec in latency_specs(d):
            m, rest = spec[2:].split("x")
            code_bytes = int(m) * int(rest.removesuffix("fs")) / 8
            rows = int(min(n, max_bytes // code_bytes))
            index, train_s = faiss_index(d, spec, rows, train_rows)
            rng = np.random.default_rng(1)
            sample = rng.standard_normal((2000, d), dtype=np.float32)
            t = time.perf_counter()
            index.sa_encode(sample)
            encode_per_row = (time.perf_counter() - t) / len(sample)
            del sample
            u = rng.standard_normal((1, d), dtype=np.float32)
            times = {}
            for c in candidates:
                index.search(u, c)  # warm
                runs = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    index.search(u, c)
                    runs.append(time.perf_counter() - t)
                times[c] = float(np.median(runs)) * n / rows
            batch = rng.standard_normal((100, d), dtype=np.float32)
            t = time.perf_counter()
            index.search(batch, candidates[-1])
            batch_s = (time.perf_counter() - t) * n / rows
            out.append({"d": d, "stage": spec, "bytes": code_bytes, "share": code_bytes / (2 * d),
                        "rows_built": rows, "rows": n, "train_rows": train_rows,
                        "train_s": train_s, "encode_s_per_million": encode_per_row * 1e6,
                        "search_s": times, "search_100_s": batch_s,
                        "threads": faiss.omp_get_max_threads()})
            said = ", ".join(f"C={c}: {s:.3f} s" for c, s in times.items())
            print(f"  d = {d} {spec}: {code_bytes:.0f} B/passage, {rows:,} rows built, train "
                  f"{train_s:.1f} s, one question {said}", flush=True)
            del index
    return out


def print_latency(results: list[dict], n: int) -> None:
    cs = list(results[0]["search_s"])
    print(f"\nfirst stage for {n:,} rows: FAISS {results[0]['threads']} threads; seconds per "
          "question (median of 5); where fewer rows were built, times are scaled by the rows")
    print("| d | first stage | bytes/passage | of float16 row | codes for the rows | train s "
          "(rows) | code s per 10^6 rows | " + " | ".join(f"1 question, C={c}" for c in cs) +
          f" | 100 questions, C={cs[-1]} |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(cs) + "---|")
    for r in results:
        scaled = "" if r["rows_built"] == r["rows"] else f" (built {r['rows_built']:,})"
        print(f"| 2^{int(np.log2(r['d']))} | {r['stage']} | {r['bytes']:.0f} | "
              f"1/{1 / r['share']:.0f} | {r['bytes'] * r['rows'] / 2**30:.1f} GiB{scaled} | "
              f"{r['train_s']:.1f} ({r['train_rows']:,}) | {r['encode_s_per_million']:.0f} | " +
              " | ".join(f"{r['search_s'][c]:.3f}" for c in cs) +
              f" | {r['search_100_s']:.2f} |", flush=True)


def run_world(name: str, args) -> None:
    from factrace.data.corpus import iter_corpus
    from factrace.data.io import read_queries

    work = Path(args.work)
    world_files = fact_world(work, args.threads) if name == "fact" else \
        realtext_world(work, args.threads, args.realtext_rows)
    store = build_store(world_files, args.threads, dim=args.dim)
    suffix = f"-d{args.dim}" if args.dim else ""
    world = load_world(name + suffix, store, world_files["queries"],
                       world_files["dir"] / f"queries_y{suffix}.pt")
    saved = {}
    if not args.scale_only:
        passages = list(iter_corpus(str(world_files["corpus"])))
        queries = read_queries(world_files["queries"])
        results = []
        shares = [int(x) for x in args.sweep_shares.split(",") if x]
        for stage, norm in stages_at_budget(world, passages, queries, args.sweep, shares):
            results.append(evaluate(world, stage, args.candidates, norm))
            r = results[-1]
            print(f"  {r['stage']}: {r['bytes']:.0f} B, fit {r['train_s']:.1f} s, recall@"
                  f"{args.candidates[-1]} own {r['own']['recall'][args.candidates[-1]]:.2f}",
                  flush=True)
        print_table(world, results, args.candidates)
        saved["stages"] = results
        saved["ivf"] = ivf_coverage(world)
        print_ivf(world, saved["ivf"])
    if args.distractors and name in args.scale_worlds.split(","):
        specs = [scale_spec(s, world.dim) for s in args.scale_stages.split(",")]
        results = scale_study(world, specs, args.distractors, args.candidates)
        print_table(world, results, args.candidates,
                    f"{world.rows.shape[0]} real rows + {args.distractors:,} synthetic")
        saved["distractors"] = {"rows": args.distractors, "stages": results}
    if args.seed_check:
        other = build_store(world_files, args.threads, seed=1, dim=args.dim)
        twin = load_world(f"{name}{suffix} (projection seed 1)", other, world_files["queries"],
                          world_files["dir"] / f"queries_y-seed1{suffix}.pt")
        stage = Stage("the exact trace with projection seed 1 (full rows)", 2 * twin.dim,
                      keys={"own": twin.exact_own, "single": twin.exact_single})
        saved["seed_check"] = evaluate(world, stage, args.candidates)
        print_table(world, [saved["seed_check"]], args.candidates)
    (world_files["dir"] / f"compact_results{suffix}.json").write_text(json.dumps(saved, indent=1))


def scale_spec(spec: str, d: int) -> str:
    """``pq/64x8`` (8-bit PQ in 1/64 of a float16 row) → ``pq:512x8`` at d = 2^14;
    ``scalar2`` → ``scalar:2``."""
    if spec.startswith("scalar"):
        return f"scalar:{spec[6:]}"
    share, nbits = (int(x) for x in spec[3:].split("x"))
    return f"pq:{2 * d * 8 // share // nbits}x{nbits}"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="folder for the worlds, stores and results "
                    "(built on the first run, reused after)")
    ap.add_argument("--worlds", default="fact,realtext",
                    help="comma-separated: fact, realtext (empty: none)")
    ap.add_argument("--candidates", default=",".join(map(str, CANDIDATES)),
                    help="candidate counts C (comma-separated)")
    ap.add_argument("--realtext-rows", type=int, default=5000,
                    help="windows in the realtext store (all the dump has, 4,336, by default)")
    ap.add_argument("--dim", type=int, default=None,
                    help="store d (default: factrace's default for the model)")
    ap.add_argument("--seed-check", action="store_true",
                    help="also build the store with projection seed 1 and score its exact trace "
                    "as a first stage (how much of the top 10 is the projection's own noise)")
    ap.add_argument("--no-sweep", dest="sweep", action="store_false",
                    help="only the 1/64 budget (not 1/32 ... 1/4)")
    ap.add_argument("--sweep-shares", default="32,16,8",
                    help="8-bit PQ of the sweep at these shares 1/S of a float16 row")
    ap.add_argument("--distractors", type=int, default=100_000,
                    help="synthetic rows added to the real ones for the scale study (0: none)")
    ap.add_argument("--scale-worlds", default="fact", help="worlds the scale study runs on")
    ap.add_argument("--scale-stages", default="pq/64x8,pq/16x8,pq/8x4,scalar2",
                    help="first stages of the scale study: pq/SHARExBITS (PQ in 1/SHARE of a "
                    "float16 row, BITS-bit codes) or scalarBITS")
    ap.add_argument("--scale-only", action="store_true", help="skip the per-stage tables")
    ap.add_argument("--latency-rows", type=int, default=1_000_000,
                    help="rows of the latency study (0: no latency study)")
    ap.add_argument("--latency-dims", default="16384,65536")
    ap.add_argument("--latency-train-rows", type=int, default=10_000)
    ap.add_argument("--latency-max-bytes", type=float, default=4e9,
                    help="codes built at most (more rows: times scaled by the row count)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and FAISS threads (the latency study: give 2 on a quiet machine)")
    args = ap.parse_args()
    args.candidates = [int(c) for c in args.candidates.split(",")]
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    for name in filter(None, args.worlds.split(",")):
        run_world(name, args)
    if args.latency_rows:
        print(f"\nload average before the latency study: {load_average()}", flush=True)
        dims = [int(d) for d in args.latency_dims.split(",")]
        results = latency_study(dims, args.latency_rows, args.latency_train_rows,
                                [200, 2000], args.latency_max_bytes)
        print(f"load average after: {load_average()}")
        print_latency(results, args.latency_rows)
        Path(args.work, "latency.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
