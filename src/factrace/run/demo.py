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
from factrace.evaluate.compare import OUTPUTS, CompareConfig, compare
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


def cache_dir(cfg: DemoConfig) -> Path:
    root = cfg.cache or os.environ.get("FACTRACE_CACHE") or Path.home() / ".cache" / "factrace"
    return Path(root) / "pretrained"


def run_demo(cfg: DemoConfig) -> dict:
    timings = {}
    out = Path(cfg.out)
    check_at_least(1, passages=cfg.passages, n_queries=cfg.queries,
                   tail_patch_queries=cfg.tail_patch_queries, dim=cfg.dim)
    check_output_dir(out, ("world", "demo.json", *OUTPUTS), cfg.overwrite)
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
    t = time.perf_counter()
    result = compare(CompareConfig(
        model=str(model_dir), optimizer_state=str(model_dir / "optimizer.pt"),
        corpus=str(files.corpus), queries=str(files.queries), qrels=str(files.qrels),
        out=str(out), encoder_options={"dim": cfg.dim, "train_examples": cfg.train_examples,
                                       "seed": cfg.seed},
        tail_patch_queries=cfg.tail_patch_queries, progress=cfg.progress, overwrite=True,
        scaling=_checkpoints(model_dir, train_info) if cfg.scaling else ()))
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
