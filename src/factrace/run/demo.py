"""``factrace demo``: a synthetic fact world, a tiny pretrained Llama, TrackStar and the whole
evaluation, on this machine, from nothing."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from factrace.data.atomic import atomic_write
from factrace.data.outputs import check_at_least, check_output_dir
from factrace.errors import FactraceError
from factrace.evaluate.compare import OUTPUTS, SCORES_DIR, CompareConfig, compare
from factrace.factworld.generate import generate_world
from factrace.factworld.pretrain import PretrainConfig, fingerprint, pretrain
from factrace.factworld.world import WorldConfig


@dataclass
class DemoConfig:
    """The demo's sizes. Defaults: about 3,000 passages, a few-million-parameter Llama."""

    out: str = "demo_out"
    passages: int = 3000
    queries: int = 300
    seed: int = 0
    dim: int = 1 << 14
    train_examples: int = 2048
    tail_patch_queries: int | None = 100
    """Queries tail-patched (the first N; None: all)."""
    pretrain: PretrainConfig | None = None
    cache: str | None = None
    """Where pretrained models are cached by input hash (default ``$FACTRACE_CACHE`` or
    ``~/.cache/factrace``)."""
    scaling: bool = True
    """The scaling study over the pretraining's checkpoints (:attr:`PretrainConfig.checkpoints`:
    a quarter, half and all of its steps), as ``compare`` with several ``--model``."""
    progress: bool = True
    overwrite: bool = False
    """Replace the outputs of an earlier demo in ``out`` (otherwise refused before any work)."""
    lds: int = 0
    """Training subsets to retrain the demo model on for the linear datamodeling score
    (0: no LDS). Each retraining takes about as long as the demo's pretraining times
    ``lds_fraction``; outputs are cached, so a rerun is instant."""
    lds_fraction: float = 0.5
    """Share of the passages each subset keeps: 0.5 is TRAK's random-subsets LDS, a share of
    0.75 or more (e.g. 0.9) the leave-out variant."""
    lds_noise_subsets: int | None = None
    """Subsets retrained a second time (seed + 1) for the noise floor (``None``: all)."""
    engine: str = "local"
    """Where retrainings run: ``local`` (parallel processes) or ``ray``."""
    workers: int = 2
    """Retrainings run at once (one torch thread each)."""


def cache_dir(cfg: DemoConfig) -> Path:
    root = cfg.cache or os.environ.get("FACTRACE_CACHE") or Path.home() / ".cache" / "factrace"
    return Path(root) / "pretrained"


def run_demo(cfg: DemoConfig) -> dict:
    timings = {}
    out = Path(cfg.out)
    check_at_least(1, passages=cfg.passages, n_queries=cfg.queries,
                   tail_patch_queries=cfg.tail_patch_queries, dim=cfg.dim, workers=cfg.workers)
    if cfg.lds:
        check_lds_options(cfg)
    check_output_dir(out, ("world", "demo.json", *OUTPUTS,
                           *((SCORES_DIR, LDS_DIR) if cfg.lds else ())), cfg.overwrite)
    t = time.perf_counter()
    files = generate_world(out / "world", WorldConfig(n_passages=cfg.passages,
                                                      n_queries=cfg.queries, seed=cfg.seed))
    timings["world_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pre = cfg.pretrain or PretrainConfig(seed=cfg.seed)
    model_dir = cache_dir(cfg) / fingerprint(files.corpus, files.queries, pre)
    pretrain(files.corpus, files.queries, model_dir, pre, progress=cfg.progress)
    train_info = json.loads((model_dir / "train_info.json").read_text())
    timings["pretrain_s"] = time.perf_counter() - t
    lds = None
    if cfg.lds:
        t = time.perf_counter()
        lds = demo_lds(cfg, files, model_dir, pre)
        timings["lds_retraining_s"] = time.perf_counter() - t
    t = time.perf_counter()
    result = compare(CompareConfig(
        model=str(model_dir), optimizer_state=str(model_dir / "optimizer.pt"),
        corpus=str(files.corpus), queries=str(files.queries), qrels=str(files.qrels),
        out=str(out), encoder_options={"dim": cfg.dim, "train_examples": cfg.train_examples,
                                       "seed": cfg.seed},
        tail_patch_queries=cfg.tail_patch_queries, progress=cfg.progress, overwrite=True,
        scaling=_checkpoints(model_dir, train_info) if cfg.scaling else (),
        lds=lds))
    timings["trace_and_evaluate_s"] = time.perf_counter() - t
    result["timings"] = {**timings, **result["metadata"]["timings"]}
    result["train_info"] = train_info
    result["model_dir"] = str(model_dir)
    scaling = result["scaling"]
    with atomic_write(out / "demo.json") as f:
        json.dump({"timings": result["timings"], "train_info": train_info,
                   "model_dir": str(model_dir),
                   "kinds": {r["method"]: r.get("kinds") for r in result["rows"]},
                   "scaling": [{k: v for k, v in e.items() if k != "per_query"}
                               for e in (scaling["checkpoints"] if scaling else [])]},
                  f, indent=2, default=str)
    return result


def _checkpoints(model_dir: Path, train_info: dict) -> tuple[str, ...]:
    """The run's kept checkpoints, then its final model (the scaling study's tokens axis)."""
    kept = [str(model_dir / name) for name in train_info.get("checkpoints", [])]
    return (*kept, str(model_dir)) if kept else ()


LDS_DIR = "lds"
"""Where ``demo --lds`` writes the subsets and the retrained models' outputs (``eval --lds``
reads them back)."""


def check_lds_options(cfg: DemoConfig) -> None:
    """Refuse impossible LDS options before any work."""
    from factrace.evaluate.lds import random_subsets
    from factrace.run.engines import check_engine

    check_engine(cfg.engine)
    if cfg.lds_noise_subsets is not None and cfg.lds_noise_subsets < 0:
        raise FactraceError(f"--lds-noise-subsets must be at least 0, got "
                            f"{cfg.lds_noise_subsets}")
    random_subsets([str(i) for i in range(cfg.passages)], cfg.lds, cfg.lds_fraction, cfg.seed)


def demo_lds(cfg: DemoConfig, files, model_dir: Path, pre: PretrainConfig):
    """Retrain the demo model on ``cfg.lds`` random subsets (cached), write the subsets and
    outputs under ``out/lds/``, and return the LDS inputs for ``compare``."""
    from factrace.data.corpus import iter_corpus
    from factrace.evaluate.lds import random_subsets, write_subsets
    from factrace.factworld.retrain import Recipe, lds_inputs

    ids = [p.id for p in iter_corpus(files.corpus)]
    subsets = random_subsets(ids, cfg.lds, cfg.lds_fraction, cfg.seed)
    recipe = Recipe(str(files.corpus), str(files.queries), str(model_dir), pre)
    noise = cfg.lds if cfg.lds_noise_subsets is None else cfg.lds_noise_subsets
    inputs, rows = lds_inputs(recipe, subsets, pre.seed, noise, cache_dir(cfg).parent / "lds",
                              cfg.engine, cfg.workers, progress=cfg.progress)
    folder = Path(cfg.out) / LDS_DIR
    write_subsets(folder / "subsets.jsonl", subsets)
    for name, keep in (("outputs.jsonl", lambda r: r["seed"] == pre.seed),
                       ("noise_outputs.jsonl", lambda r: r["seed"] != pre.seed)):
        with atomic_write(folder / name) as f:
            for row in filter(keep, rows):
                f.write(json.dumps(row) + "\n")
    inputs.details["files"] = {"subsets": str(folder / "subsets.jsonl"),
                               "outputs": str(folder / "outputs.jsonl"),
                               "noise_outputs": str(folder / "noise_outputs.jsonl")}
    return inputs
