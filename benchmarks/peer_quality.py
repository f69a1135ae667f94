"""Tracing quality of bergson's TrackStar (EleutherAI) on a factrace world, as factrace rankings.

Runs ``bergson trackstar`` (bergson 2.5.1, the CLI's one-command TrackStar pipeline) on a
world — a corpus JSONL (``id``, ``text``), queries JSONL (``id``, ``prompt``, ``target``), a
Hugging Face causal-LM directory and its AdamW ``optimizer.pt`` — at a given per-module
projection dimension P, and writes the top 10 passages per query in factrace's rankings format,
with ``<out>.meta.json`` beside it (the bergson command with its options, the tracked modules,
the total dimension d = P² × modules, the mixing weight λ bergson used, timings, its log tail).
``factrace eval`` then scores the rankings like any other method's. bergson must be installed
in its own environment (see ``peer.py``); point ``--bergson-python`` at its python.

    python benchmarks/peer_quality.py --bergson-python /path/to/bergson-venv/bin/python \
        --corpus C --queries Q --model M --optimizer-state M/optimizer.pt \
        --projection-dim 24 --out rankings.jsonl

The command it runs (paths replaced by names)::

    bergson trackstar RUN --model MODEL --optimizer_state OPTIMIZER --projection_dim P \
        --precision fp32 --token_batch_size 8192 \
        --data.dataset CORPUS --data.prompt_column text \
        --query.dataset QUERIES --query.prompt_column prompt --query.completion_column completion \
        --unit_normalize true --overwrite true

Everything else is bergson's default, which is its documented recipe (``docs/trackstar.rst``;
``--unit_normalize true`` as in its ``examples/compare_smollm2_8k/trackstar_adam.yaml``, the
recipe with an optimizer state). What the pipeline does, from its source:

1. R_train: the per-module Gram (1/N) Σ g gᵀ of the corpus gradients (its first
   ``stats_sample_size`` = 10,000 rows; here all 3,000), each g the per-example gradient of the
   summed token loss (``loss_reduction sum``), divided elementwise by sqrt(exp_avg_sq) + 1e-8
   (the raw second moment, no bias correction; materialised per example, so exact) and then
   projected two-sidedly per module, L G Rᵀ with Rademacher L (P × out), R (P × in) of entries
   ±1/sqrt(P).
2. R_eval: the same Gram over the queries.
3. R = λ R_eval + (1 − λ) R_train, λ = σ_train[k] / (σ_eval[k] + σ_train[k]) at k =
   ``target_downweight_components`` − 1 = 999 (default 1000) of the eigenvalues of all module
   blocks pooled and sorted.
4. The queries' gradients (loss on the completion tokens only) are stored; the corpus is scored
   in a second pass: both sides are whitened by R^{-1/2} = U (Λ + 0.1·mean Λ)^{-1/2} Uᵀ
   (``inversion damped_inverse``, ``damping_factor 0.1``, mean over each module's spectrum),
   then the score is the cosine (``--unit_normalize true`` makes the preconditioning two-sided
   with power −1/2; without it bergson applies R^{-1} to the query only and takes a dot product).

How that maps to TrackStar (Chang et al.) and to factrace's ``trackstar`` variant:

- same: loss gradient per example, Adam second-moment correction ∇/(sqrt(V) + ε) with ε = 1e-8,
  R = (1/N) Σ p pᵀ of the projected corrected gradients (not unit-normalised), the mixed R with
  λ from where the scaled eigenvalue curves cross, R^{-1/2} with damping η·mean(Λ), η = 0.1,
  on both sides, unit norm, dot product; loss summed over the target tokens of prompt + target.
- different: the correction is exact (elementwise V) where factrace's default is ``factored``
  (rank-one V) and bias-corrected (moot here: β2^1128 ≈ 1e-10); the projection is per tracked
  module, P × P each (factrace's ``modules`` layout; its default ``layers`` groups layers ×
  {attention, MLP}); R is always block-diagonal per module (factrace: one global d × d matrix
  up to d = 8192, blocks above); λ's crossing is at component 1000 however large d is (the
  paper's ~1000 of 65,536 ≈ d/64; factrace's default is d/64, capped below the query count;
  at P = 24, d = 8,064, so bergson's 1000 is ~d/8); R_train uses every corpus row (factrace:
  2,048); the mean in the damping is per module block.

Input details:

- Queries go in as a prompt/completion dataset, the only way bergson puts the loss on part of a
  row: it renders the pair with the tokenizer's chat template and labels the completion's
  tokens. The copy of the model directory given to bergson gets a template rendering
  BOS + prompt + completion, nothing else — so its tokens are exactly factrace's
  (``tok(prompt)`` + ``tok(target, add_special_tokens=False)``; checked per query, the count
  of mismatches goes to the meta file: 0 on the fact world) — and ``model_max_length`` /
  ``max_position_embeddings`` raised to the 8192-token batch (bergson refuses a token batch
  above the context; RoPE does not depend on it; every fact-world passage is under 70 tokens).
- The optimizer state is rewritten as one param group in ``model.parameters()`` order: bergson
  2.5.1 rebuilds the Trainer's [decay, no decay] split with ``ALL_LAYERNORM_LAYERS``, which under
  transformers 5 does not list ``LlamaRMSNorm``, and stops ("param groups of sizes [15, 5] do not
  match HF Trainer's decay/no-decay split [20, 0]"). The rewrite reads the split as the Trainer
  builds it (``Trainer.get_decay_parameter_names``), as factrace does.
- bergson tracks every ``nn.Linear`` of ``model.base_model``: the 7 projections of each layer,
  not the LM head.

Measured on the built-in fact world (3,000 passages, 300 queries, the 0.83M-parameter 2-layer
Llama of ``make demo``, fact accuracy 0.83, 14 tracked modules), 2 shared CPU cores, each
command run once (bergson's projection matrices are a fixed function of the module names, so a
rerun projects the same way):

    python benchmarks/peer_quality.py --bergson-python /work/bergson-venv/bin/python \
        --corpus world/corpus.jsonl --queries world/queries.jsonl --model M \
        --optimizer-state M/optimizer.pt --projection-dim P --out bergson-pP.jsonl
    factrace eval --rankings bergson-pP.jsonl --qrels world/qrels.jsonl

| P | d = 14·P² | k | λ | MRR | Recall@10 | wall s |
|---|---|---|---|---|---|---|
| 24 | 8,064 | 1000 | 0.965 | 0.319 ± 0.024 | 0.460 ± 0.029 | 652 |
| 32 | 14,336 | 1000 | 0.957 | 0.344 ± 0.024 | 0.523 ± 0.029 | 431 |
| 34 | 16,184 | 1000 | 0.956 | 0.361 ± 0.025 | 0.527 ± 0.029 | 329 |
| 24 | 8,064 | 126 | 0.559 | 0.343 ± 0.024 | 0.513 ± 0.029 | 194 |

k is bergson's ``target_downweight_components``: its default 1000, and 126 = d/64 (factrace's
rule) with ``--target-downweight-components 126``.

(Wall times are whole commands, run one after another on cores shared with other work, so they
fell as that work ended; the last ran with the machine nearly free. bergson computes the corpus
gradients twice: once for R_train, once to score.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOP_K = 10
TOKEN_BATCH = 8192
CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
"""Renders a prompt/completion pair as BOS + prompt + completion, nothing added."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")


def read_jsonl(path: Path, fields: tuple[str, ...]) -> list[dict]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [k for k in fields if k not in row]
            if missing:
                sys.exit(f"{path}:{n}: missing {', '.join(missing)}")
            rows.append(row)
    return rows


def write_jsonl(path: Path, rows) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def prepare_model(src: Path, dst: Path, token_batch: int = TOKEN_BATCH) -> dict:
    """A copy of the model directory that bergson can run as this comparison needs.

    Weights are linked, not copied. The tokenizer gets a chat template that renders a
    prompt/completion pair as exactly BOS + prompt + completion (bergson puts the loss on the
    completion of a prompt/completion row only through the chat template), and the context
    limits are raised to the token batch (bergson refuses a token batch above the context; RoPE
    positions do not depend on it, and no sequence here comes near it).
    """
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.is_file() and item.name != "optimizer.pt":
            if item.name in ("config.json", "tokenizer_config.json", "chat_template.jinja"):
                continue
            os.symlink(item.resolve(), dst / item.name)
    config = json.loads((src / "config.json").read_text())
    original_context = config.get("max_position_embeddings")
    config["max_position_embeddings"] = max(original_context or 0, token_batch)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    tok_cfg["model_max_length"] = token_batch
    tok_cfg["chat_template"] = CHAT_TEMPLATE
    (dst / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    (dst / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return {"max_position_embeddings": original_context}


def check_query_tokens(model_dir: Path, queries: list[dict]) -> int:
    """Queries whose bergson tokens (the rendered template, no special tokens added) differ
    from factrace's (``tok(prompt)`` + ``tok(target, add_special_tokens=False)``)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    bad = 0
    for q in queries:
        ours = (tok(q["prompt"])["input_ids"]
                + tok(q["target"], add_special_tokens=False)["input_ids"])
        text = tok.apply_chat_template(
            [{"role": "user", "content": q["prompt"]},
             {"role": "assistant", "content": q["target"]}], tokenize=False)
        bad += tok(text, add_special_tokens=False)["input_ids"] != ours
    return bad


def single_group_optimizer(model_dir: Path, src: Path, dst: Path) -> str:
    """Rewrite ``src`` (a torch optimizer state_dict) as one param group whose ids follow
    ``model.named_parameters()`` — the layout bergson reads without guessing.

    Two groups with the second undecayed are read as the Hugging Face Trainer's [decay, no
    decay] split (each in ``named_parameters()`` order, decay set as
    ``Trainer.get_decay_parameter_names``); anything else is read in ``named_parameters()``
    order. bergson 2.5.1 reconstructs the Trainer split with ``ALL_LAYERNORM_LAYERS``, which
    under transformers 5 no longer lists ``LlamaRMSNorm``, and stops with "param groups of
    sizes [15, 5] do not match HF Trainer's decay/no-decay split [20, 0]"."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    sd = torch.load(src, map_location="cpu", weights_only=False)
    groups = sd["param_groups"]
    if len(groups) == 2 and groups[1].get("weight_decay") == 0.0:
        decay = set(Trainer.get_decay_parameter_names(None, model))
        order = [n for n, _ in named if n in decay] + [n for n, _ in named if n not in decay]
        convention = "Hugging Face Trainer [decay, no decay] groups"
    else:
        order, convention = [n for n, _ in named], "model.parameters() order"
    ids = [i for g in groups for i in g["params"]]
    if len(ids) != len(order):
        sys.exit(f"{src}: {len(ids)} parameters in the optimizer state, {len(order)} in the model")
    position = {n: i for i, (n, _) in enumerate(named)}
    shapes = {n: tuple(p.shape) for n, p in named}
    state = {}
    for pid, name in zip(ids, order, strict=True):
        if pid in sd["state"]:
            s = sd["state"][pid]
            if "exp_avg_sq" in s and tuple(s["exp_avg_sq"].shape) != shapes[name]:
                sys.exit(f"{src}: parameter {name} has shape {shapes[name]} but its second "
                         f"moment {tuple(s['exp_avg_sq'].shape)} (read as {convention})")
            state[position[name]] = s
    group = {k: v for k, v in groups[0].items() if k != "params"}
    group["params"] = list(range(len(named)))
    torch.save({"state": state, "param_groups": [group]}, dst)
    return convention


def read_scores(score_dir: Path) -> np.ndarray:
    """bergson's score store → ``[passages, queries]`` float32."""
    info = json.loads((score_dir / "info.json").read_text())
    mmap = np.memmap(score_dir / "scores.bin", dtype=np.dtype(info["dtype"]), mode="r",
                     shape=(info["num_rows"],))
    n = info["num_scores"]
    written = all(bool(np.all(mmap[f"written_{i}"])) for i in range(n))
    if not written:
        sys.exit(f"{score_dir}: bergson left scores unwritten")
    return np.stack([np.asarray(mmap[f"score_{i}"], dtype=np.float32) for i in range(n)], 1)


def tracked_modules(run: Path) -> dict:
    info = json.loads((run / "query" / "info.json").read_text())
    return info["grad_sizes"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bergson-python", required=True)
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--queries", required=True, type=Path)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--optimizer-state", required=True, type=Path)
    ap.add_argument("--projection-dim", type=int, default=24,
                    help="bergson --projection_dim P: a P x P projection per module")
    ap.add_argument("--target-downweight-components", type=int, default=None,
                    help="bergson's λ selection component (its default, 1000, when unset)")
    ap.add_argument("--damping-factor", type=float, default=None,
                    help="bergson's damping c in (λ + c·mean λ)^-1/2 (its default, 0.1, "
                         "when unset)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--token-batch", type=int, default=TOKEN_BATCH,
                    help="bergson's --token_batch_size (its activation memory grows with it)")
    ap.add_argument("--keep", type=Path, default=None, help="keep bergson's run directory here")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--scores-out", type=Path, default=None,
                    help="also write bergson's whole score matrix as a factrace scores file "
                    "(.npz: scores [queries, passages], query_ids, doc_ids; for eval --lds)")
    args = ap.parse_args()
    started = time.perf_counter()

    passages = read_jsonl(args.corpus, ("id", "text"))
    queries = read_jsonl(args.queries, ("id", "prompt", "target"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory(prefix="peer-quality-") as tmp:
        root = Path(tmp)
        model = root / "model"
        original = prepare_model(args.model, model, args.token_batch)
        mismatched = check_query_tokens(model, queries)
        if mismatched:
            print(f"warning: {mismatched} queries tokenise differently in bergson's template",
                  file=sys.stderr)
        optimizer = root / "optimizer.pt"
        convention = single_group_optimizer(args.model, args.optimizer_state, optimizer)
        corpus = root / "corpus.jsonl"
        write_jsonl(corpus, ({"text": p["text"]} for p in passages))
        query_file = root / "queries.jsonl"
        write_jsonl(query_file, ({"prompt": q["prompt"], "completion": q["target"]}
                                 for q in queries))
        run = root / "run"
        options = [
            "--model", str(model), "--optimizer_state", str(optimizer),
            "--projection_dim", str(args.projection_dim), "--precision", "fp32",
            "--token_batch_size", str(args.token_batch),
            "--data.dataset", str(corpus), "--data.prompt_column", "text",
            "--query.dataset", str(query_file), "--query.prompt_column", "prompt",
            "--query.completion_column", "completion",
            "--unit_normalize", "true", "--overwrite", "true",
        ]
        if args.target_downweight_components is not None:
            options += ["--target_downweight_components", str(args.target_downweight_components)]
        if args.damping_factor is not None:
            options += ["--damping_factor", str(args.damping_factor)]
        cmd = [args.bergson_python, "-m", "bergson", "trackstar", str(run), *options]
        log = root / "bergson.log"
        t = time.perf_counter()
        with open(log, "w") as fh:
            rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                cwd=root).returncode
        bergson_s = time.perf_counter() - t
        if rc:
            sys.stderr.write(log.read_text()[-6000:])
            sys.exit(f"bergson exited with {rc}")
        scores = read_scores(run / "scores")
        modules = tracked_modules(run)
        components = (args.target_downweight_components
                      if args.target_downweight_components is not None else 1000)
        lam = bergson_lambda(args.bergson_python, run, components, env)
        log_text = log.read_text()
        if args.keep is not None:
            shutil.rmtree(args.keep, ignore_errors=True)
            shutil.copytree(run, args.keep)
            shutil.copy(log, args.keep / "bergson.log")
    if scores.shape != (len(passages), len(queries)):
        sys.exit(f"bergson wrote scores of shape {scores.shape}, expected "
                 f"{(len(passages), len(queries))}")

    ids = [p["id"] for p in passages]
    if args.scores_out is not None:
        from factrace.search.full import FullScores, write_scores

        write_scores(args.scores_out, FullScores(np.ascontiguousarray(scores.T), [
            str(q["id"]) for q in queries], [str(i) for i in ids], "bergson trackstar"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        for j, q in enumerate(queries):
            col = scores[:, j]
            top = np.argsort(-col, kind="stable")[:TOP_K]
            f.write(json.dumps({"query_id": q["id"], "doc_ids": [ids[i] for i in top],
                                "scores": [float(col[i]) for i in top]}) + "\n")
    p = args.projection_dim
    meta = {
        "method": "bergson trackstar",
        "bergson_version": bergson_version(args.bergson_python, env),
        "command": ["bergson", "trackstar", "RUN", *[
            "MODEL" if c == str(model) else "OPTIMIZER" if c == str(optimizer)
            else "CORPUS" if c == str(corpus) else "QUERIES" if c == str(query_file) else c
            for c in options]],
        "inputs": {"corpus": str(args.corpus), "queries": str(args.queries),
                   "model": str(args.model), "optimizer_state": str(args.optimizer_state)},
        "projection_dim": p,
        "tracked_modules": sorted(modules),
        "dim": p * p * len(modules),
        "lambda": lam,
        "model_copy": {"chat_template": CHAT_TEMPLATE, "model_max_length": args.token_batch,
                       "max_position_embeddings": max(original["max_position_embeddings"] or 0,
                                                      args.token_batch),
                       "original_max_position_embeddings": original["max_position_embeddings"]},
        "queries_tokenised_differently": mismatched,
        "optimizer_state_rewritten": f"one param group in model.parameters() order, read from "
                                     f"{convention}",
        "corpus_rows": len(passages), "queries": len(queries), "top_k": TOP_K,
        "bergson_seconds": round(bergson_s, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "log_tail": log_text.splitlines()[-40:],
    }
    Path(str(args.out) + ".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"bergson trackstar P={p} d={meta['dim']}: {meta['bergson_seconds']} s in bergson, "
          f"{meta['total_seconds']} s in all -> {args.out}")


def bergson_lambda(python: str, run: Path, components: int, env: dict) -> float:
    """The mixing weight λ of R_eval that bergson's mix step used (it does not record it),
    recomputed with its own function from the two saved Hessians."""
    code = ("import sys; from bergson.gradients import GradientProcessor as G; "
            "from bergson.utils.math import compute_lambda; "
            "q = G.load(sys.argv[1] + '/query_hessian'); "
            "v = G.load(sys.argv[1] + '/value_hessian'); "
            "print(compute_lambda(q.hessians_eigen, v.hessians_eigen, int(sys.argv[2])))")
    out = subprocess.run([python, "-c", code, str(run), str(components)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bergson_version(python: str, env: dict) -> str:
    out = subprocess.run([python, "-c", "import importlib.metadata as m; "
                          "print(m.version('bergson'))"], env=env, capture_output=True,
                         text=True)
    return out.stdout.strip()


if __name__ == "__main__":
    main()
