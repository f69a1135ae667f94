"""Retrain the fact world's model on training subsets and measure it on the queries (LDS).

The linear datamodeling score (:mod:`factrace.evaluate.lds`) needs, for every training subset,
what a model trained on that subset alone does on each query. :func:`retrain_outputs` trains
with the demo's exact recipe (:func:`~factrace.factworld.pretrain.train`, the same
:class:`~factrace.factworld.pretrain.PretrainConfig`, initialisation and batch order from the
config's seed) on the subset's passages, in corpus order, with the tokenizer of the model
trained on the whole corpus (a fixed vocabulary, as retraining studies keep the architecture
fixed), and measures each query's output: ``log p(target | prompt)``, the sum over the
target's tokens, the model in eval mode. Retraining on every passage with the demo's seed
reproduces the demo model bit for bit (tested).

Outputs are cached by (subset, seed, recipe fingerprint) in one small JSON file each, so a rerun
is instant; :func:`retrain_all` runs the missing ones in parallel processes (``local``, one
torch thread each) or Ray tasks (``ray``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch

from factrace.data.atomic import atomic_write
from factrace.data.batching import collate
from factrace.data.corpus import iter_corpus
from factrace.data.io import read_queries
from factrace.data.tokenize import tokenize_query
from factrace.errors import FactraceError
from factrace.evaluate.lds import Subset
from factrace.factworld.pretrain import (
    CODE_VERSION,
    PretrainConfig,
    _sha256_file,
    build_model,
    build_optimizer,
    tokenize_corpus,
    train,
)
from factrace.model.loss import target_logprob

RECIPE_VERSION = "1"
"""Bumped whenever a change here changes what a retraining measures; part of the cache key."""


@dataclass(frozen=True)
class Recipe:
    """What a retraining is: the full corpus and queries, the tokenizer directory of the model
    trained on the full corpus, and the demo's pretraining configuration."""

    corpus: str
    queries: str
    tokenizer_dir: str
    config: PretrainConfig

    def fingerprint(self) -> str:
        """Hash of the corpus, the queries, the tokenizer and the configuration (threads
        excluded: they change speed, not weights)."""
        settings = dataclasses.asdict(self.config)
        del settings["num_threads"], settings["seed"]
        tokenizer = Path(self.tokenizer_dir) / "tokenizer.json"
        parts = {"pretrain_code": CODE_VERSION, "recipe": RECIPE_VERSION, "config": settings,
                 "corpus": _sha256_file(Path(self.corpus)),
                 "queries": _sha256_file(Path(self.queries)),
                 "tokenizer": _sha256_file(tokenizer)}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def subset_key(recipe_fingerprint: str, subset: Subset, seed: int) -> str:
    """Cache key of one retraining: (recipe, the subset's passage ids, seed)."""
    digest = hashlib.sha256()
    digest.update(f"{recipe_fingerprint}\n{seed}\n".encode())
    digest.update("\n".join(subset.passages).encode())
    return digest.hexdigest()[:32]


def cache_path(cache: str | Path, recipe_fingerprint: str, subset: Subset, seed: int) -> Path:
    """The file that keeps one retraining's outputs."""
    return Path(cache) / f"{subset_key(recipe_fingerprint, subset, seed)}.json"


def train_on_subset(recipe: Recipe, passages: Sequence[str] | None, seed: int,
                    progress: bool = False):
    """The model and tokenizer trained by the recipe on ``passages`` (``None``: all), in corpus
    order, initialised and shuffled by ``seed``."""
    from transformers import AutoTokenizer

    config = dataclasses.replace(recipe.config, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(recipe.tokenizer_dir)
    keep = None if passages is None else set(passages)
    texts = [p.text for p in iter_corpus(recipe.corpus) if keep is None or p.id in keep]
    if not texts:
        raise FactraceError("a retraining subset names no passage of the corpus")
    threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        sequences = tokenize_corpus(texts, tokenizer, config.max_length)
        model = build_model(config, tokenizer)
        optimizer = build_optimizer(model, config)
        train(model, optimizer, sequences, tokenizer.pad_token_id, config, progress)
    finally:
        torch.set_num_threads(threads)
    return model, tokenizer


@torch.no_grad()
def measure_outputs(model, tokenizer, queries, max_length: int, batch_size: int = 64) -> dict:
    """``{query id: log p(target | prompt)}`` (sum over the target's tokens), eval mode."""
    model.eval()
    out = {}
    examples = [tokenize_query(tokenizer, q, max_length) for q in queries]
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        values = target_logprob(model, collate(chunk, tokenizer.pad_token_id)).double()
        out.update({ex.id: float(v) for ex, v in zip(chunk, values.tolist(), strict=True)})
    return out


def retrain_outputs(recipe: Recipe, subset: Subset, seed: int, cache: str | Path,
                    fingerprint: str | None = None) -> dict:
    """One retraining's measured outputs, from the cache or trained now and cached:
    ``{"subset", "seed", "outputs": {query id: log-prob}, "seconds"}``."""
    import time

    fingerprint = fingerprint or recipe.fingerprint()
    path = cache_path(cache, fingerprint, subset, seed)
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    started = time.perf_counter()
    model, tokenizer = train_on_subset(recipe, subset.passages, seed)
    outputs = measure_outputs(model, tokenizer, read_queries(recipe.queries),
                              recipe.config.max_length)
    row = {"subset": subset.id, "seed": seed, "n_passages": len(subset.passages),
           "recipe": fingerprint, "seconds": round(time.perf_counter() - started, 2),
           "outputs": outputs}
    with atomic_write(path, "w") as f:
        json.dump(row, f)
    return row


def _job(args) -> dict:
    recipe, subset, seed, cache, fingerprint = args
    torch.set_num_threads(1)
    return retrain_outputs(recipe, subset, seed, cache, fingerprint)


def retrain_all(recipe: Recipe, subsets: Sequence[Subset], seeds: Sequence[int],
                cache: str | Path, engine: str = "local", workers: int = 2,
                ray_address: str | None = None,
                on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """Every (subset, seed) retraining's outputs, cached ones read, the others trained in
    ``workers`` parallel processes (``local``) or Ray tasks (``ray``), one torch thread
    each. Returns rows in (subset, seed) order."""
    from factrace.run.engines import check_engine

    check_engine(engine)
    recipe = dataclasses.replace(recipe, config=dataclasses.replace(recipe.config,
                                                                    num_threads=1))
    fingerprint = recipe.fingerprint()
    Path(cache).mkdir(parents=True, exist_ok=True)
    jobs = [(recipe, s, seed, str(cache), fingerprint) for s in subsets for seed in seeds]
    results: dict[int, dict] = {}
    todo = []
    for i, job in enumerate(jobs):
        path = cache_path(cache, fingerprint, job[1], job[2])
        if path.is_file():
            results[i] = json.loads(path.read_text(encoding="utf-8"))
        else:
            todo.append(i)
    if todo and engine == "ray":
        from factrace.extras import require

        require("--engine ray", "ray")
        import ray

        started = not ray.is_initialized()
        if started:
            ray.init(address=ray_address, num_cpus=None if ray_address else workers,
                     include_dashboard=False, log_to_driver=False)
        try:
            remote = ray.remote(num_cpus=1)(_job)
            refs = {remote.remote(jobs[i]): i for i in todo}
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                results[refs[done[0]]] = ray.get(done[0])
                if on_done:
                    on_done(results[refs[done[0]]])
        finally:
            if started:
                ray.shutdown()
    elif todo:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_job, jobs[i]): i for i in todo}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if on_done:
                    on_done(results[futures[future]])
    return [results[i] for i in range(len(jobs))]


def output_rows(results: Sequence[dict]) -> list[dict]:
    """The outputs file's rows (``{"subset", "query_id", "output", "seed"}``) of retrainings."""
    return [{"subset": r["subset"], "query_id": qid, "output": value, "seed": r["seed"]}
            for r in results for qid, value in r["outputs"].items()]


def lds_inputs(recipe: Recipe, subsets: Sequence[Subset], seed: int, noise_subsets: int,
               cache: str | Path, engine: str = "local", workers: int = 2,
               ray_address: str | None = None, progress: bool = True):
    """Retrain (or read from the cache) every subset with ``seed`` — the outputs LDS is
    measured against — and the first ``noise_subsets`` once more with ``seed + 1``, whose
    outputs give the noise floor (the LDS of that second retraining against the first).
    Returns :class:`~factrace.evaluate.lds.LdsInputs` and the outputs file's rows."""
    import time

    from tqdm.auto import tqdm

    from factrace.evaluate.lds import LdsInputs, noise_floor

    query_ids = [q.id for q in read_queries(recipe.queries)]
    noise_subsets = min(noise_subsets, len(subsets))
    total = len(subsets) + noise_subsets
    started = time.perf_counter()
    bar = tqdm(total=total, desc="retraining on subsets", unit="model", disable=not progress)
    first = retrain_all(recipe, subsets, [seed], cache, engine, workers, ray_address,
                        on_done=lambda _: bar.update(1))
    bar.n = len(subsets)
    bar.refresh()
    second = retrain_all(recipe, subsets[:noise_subsets], [seed + 1], cache, engine, workers,
                         ray_address, on_done=lambda _: bar.update(1)) if noise_subsets else []
    bar.close()
    outputs = {(r["subset"], qid): v for r in first for qid, v in r["outputs"].items()}
    details = {"subsets": len(subsets), "retraining_seed": seed,
               "recipe": "the demo model's (same configuration, tokenizer and seed), "
                         "trained on the subset alone",
               "retrain_seconds_total": round(sum(r["seconds"] for r in [*first, *second]), 1),
               "wall_seconds": round(time.perf_counter() - started, 1)}
    noise = None
    if second:
        again = {(r["subset"], qid): v for r in second for qid, v in r["outputs"].items()}
        noise = noise_floor(outputs, again, subsets[:noise_subsets], query_ids)
        details["noise_floor_from"] = (f"seed {seed + 1} against seed {seed} on the first "
                                       f"{noise_subsets} subsets")
    return LdsInputs(list(subsets), outputs, noise=noise, details=details), \
        output_rows([*first, *second])
