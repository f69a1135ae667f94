"""The ``factrace`` command line: parse options, build a config, call the library.

User errors (:class:`~factrace.errors.FactraceError`) print one line and exit with code 2.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Annotated

import typer

from factrace.errors import FactraceError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Trace a language model's outputs back to its pretraining data (TrackStar).")
index_app = typer.Typer(no_args_is_help=True, help="Persistent encoding stores.")
app.add_typer(index_app, name="index")

# Encoder options, shared by every command that encodes (None = the variant's default).
Variant = Annotated[str, typer.Option(help="grad-dot | grad-cos | grad-cos+opt | "
                                      "trackstar-train | trackstar")]
Dim = Annotated[int | None, typer.Option(help="Projection dimension (default 2^14 CPU, 2^16 CUDA).")]
Layout = Annotated[str | None, typer.Option(help="layers | modules")]
SecondMoment = Annotated[str | None, typer.Option(
    "--second-moment", help="factored | exact | adafactor | estimate | none")]
Hessian = Annotated[str | None, typer.Option(help="mixed | train | none")]
HessianStructure = Annotated[str | None, typer.Option(
    "--hessian-structure", help="auto | global | block")]
Lambda = Annotated[float | None, typer.Option("--lambda", help="Fixed λ (default: automatic).")]
Damping = Annotated[float | None, typer.Option(help="Damping η of R^{-1/2}.")]
Seed = Annotated[int | None, typer.Option(help="Projection seed.")]
Device = Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N")]
Dtype = Annotated[str | None, typer.Option(help="float32 | bfloat16 | float16")]
BatchTokens = Annotated[int | None, typer.Option("--batch-tokens", help="Tokens per batch.")]
TrainExamples = Annotated[int | None, typer.Option(
    "--train-examples", help="Corpus passages sampled for R_train.")]
Include = Annotated[list[str] | None, typer.Option(help="Glob of modules to track (repeatable).")]
Exclude = Annotated[list[str] | None, typer.Option(help="Glob of modules to skip (repeatable).")]
Truncate = Annotated[bool, typer.Option(help="Truncate long passages instead of windowing.")]
Engine = Annotated[str, typer.Option(help="local | ray")]
Workers = Annotated[int, typer.Option(help="Ray workers (model replicas).")]
RayAddress = Annotated[str | None, typer.Option("--ray-address", help="Existing Ray cluster.")]
GpusPerWorker = Annotated[float, typer.Option("--gpus-per-worker", help="GPUs per Ray worker.")]
ShardRows = Annotated[int, typer.Option("--shard-rows", help="Corpus rows per task/shard.")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No progress bars.")]
Model = Annotated[str, typer.Option(help="Hugging Face model directory.")]
OptState = Annotated[str | None, typer.Option(
    "--optimizer-state", help="optimizer.pt / state_dict / safetensors of exp_avg_sq.")]


def _encoder_config(variant, dim, layout, second_moment, hessian, hessian_structure, lambda_,
                    damping, seed, device, dtype, batch_tokens, train_examples, include, exclude,
                    truncate):
    from factrace.config import variant_config

    return variant_config(
        variant, dim=dim, layout=layout, second_moment=second_moment, hessian=hessian,
        hessian_structure=hessian_structure, lambda_=lambda_, damping=damping, seed=seed,
        device=device, dtype=dtype, batch_tokens=batch_tokens, train_examples=train_examples,
        include=tuple(include) if include else None, exclude=tuple(exclude) if exclude else None,
        overflow="truncate" if truncate else None)


def user_errors(fn):
    """Turn a FactraceError into one line on stderr and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FactraceError as e:
            typer.echo(f"factrace: error: {e}", err=True)
            raise typer.Exit(2) from None
    return wrapper


def _quiet_libraries():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()


@app.command()
@user_errors
def scan(
    model: Model, corpus: Annotated[str, typer.Option(help="Corpus: JSONL, Parquet, saved "
                                                      "dataset, or a directory of them.")],
    queries: Annotated[str, typer.Option(help="Queries JSONL (id, prompt, target).")],
    out: Annotated[str, typer.Option(help="Rankings JSONL to write.")],
    top_k: Annotated[int, typer.Option("--top-k")] = 10,
    optimizer_state: OptState = None, variant: Variant = "trackstar", dim: Dim = None,
    layout: Layout = None, second_moment: SecondMoment = None, hessian: Hessian = None,
    hessian_structure: HessianStructure = None, lambda_: Lambda = None, damping: Damping = None,
    seed: Seed = None, device: Device = None, dtype: Dtype = None,
    batch_tokens: BatchTokens = None, train_examples: TrainExamples = None,
    include: Include = None, exclude: Exclude = None, truncate: Truncate = False,
    engine: Engine = "local", workers: Workers = 2, ray_address: RayAddress = None,
    gpus_per_worker: GpusPerWorker = 0.0, shard_rows: ShardRows = 512, quiet: Quiet = False,
):
    """Score every corpus passage against every query in one streaming pass (the paper's mode)."""
    _quiet_libraries()
    from factrace.run.scan import ScanConfig
    from factrace.run.scan import scan as run_scan

    enc = _encoder_config(variant, dim, layout, second_moment, hessian, hessian_structure,
                          lambda_, damping, seed, device, dtype, batch_tokens, train_examples,
                          include, exclude, truncate)
    result = run_scan(ScanConfig(model=model, corpus=corpus, queries=queries, out=out,
                                 optimizer_state=optimizer_state, top_k=top_k, encoder=enc,
                                 engine=engine, workers=workers, ray_address=ray_address,
                                 gpus_per_worker=gpus_per_worker, shard_rows=shard_rows,
                                 progress=not quiet))
    if not quiet:
        t = result.metadata["timings"]
        typer.echo(f"wrote {out} ({len(result.rankings)} queries, "
                   f"{result.metadata['corpus_rows']} passages, "
                   f"{sum(t.values()):.1f}s)", err=True)


@index_app.command("build")
@user_errors
def index_build(
    model: Model, corpus: Annotated[str, typer.Option(help="Corpus file or directory.")],
    out: Annotated[str, typer.Option(help="Store directory to build (or resume).")],
    queries: Annotated[str | None, typer.Option(help="Queries for R_eval (needed by "
                                                "--hessian mixed).")] = None,
    optimizer_state: OptState = None, variant: Variant = "trackstar", dim: Dim = None,
    layout: Layout = None, second_moment: SecondMoment = None, hessian: Hessian = None,
    hessian_structure: HessianStructure = None, lambda_: Lambda = None, damping: Damping = None,
    seed: Seed = None, device: Device = None, dtype: Dtype = None,
    batch_tokens: BatchTokens = None, train_examples: TrainExamples = None,
    include: Include = None, exclude: Exclude = None, truncate: Truncate = False,
    engine: Engine = "local", workers: Workers = 2, ray_address: RayAddress = None,
    gpus_per_worker: GpusPerWorker = 0.0, shard_rows: ShardRows = 512, quiet: Quiet = False,
):
    """Encode every passage into a persistent, fingerprinted, resumable store."""
    _quiet_libraries()
    from factrace.run.index import IndexConfig, build_index

    enc = _encoder_config(variant, dim, layout, second_moment, hessian, hessian_structure,
                          lambda_, damping, seed, device, dtype, batch_tokens, train_examples,
                          include, exclude, truncate)
    store = build_index(IndexConfig(model=model, corpus=corpus, out=out, queries=queries,
                                    optimizer_state=optimizer_state, encoder=enc, engine=engine,
                                    workers=workers, ray_address=ray_address,
                                    gpus_per_worker=gpus_per_worker, shard_rows=shard_rows,
                                    progress=not quiet))
    if not quiet:
        typer.echo(f"store {out}: {store.n_rows} encodings of dimension {store.dim}", err=True)


@app.command()
@user_errors
def trace(
    index: Annotated[str, typer.Option(help="Store built by `factrace index build`.")],
    queries: Annotated[str, typer.Option(help="Queries JSONL.")],
    out: Annotated[str, typer.Option(help="Rankings JSONL to write.")],
    top_k: Annotated[int, typer.Option("--top-k")] = 10,
    model: Annotated[str | None, typer.Option(help="Model dir (default: the store's).")] = None,
    optimizer_state: OptState = None,
    faiss: Annotated[str | None, typer.Option(help="Approximate search: IVF<n>,Flat or "
                                              "IVF<n>,PQ<m>.")] = None,
    nprobe: Annotated[int, typer.Option(help="FAISS lists probed per query.")] = 16,
    report_recall: Annotated[bool, typer.Option("--report-recall", help="Print recall@10 of "
                                                "approximate against exact search.")] = False,
    device: Device = None, quiet: Quiet = False,
):
    """Rank a store's passages for new queries, encoded with the store's own configuration."""
    _quiet_libraries()
    from factrace.run.index import TraceConfig
    from factrace.run.index import trace as run_trace

    result = run_trace(TraceConfig(index=index, queries=queries, out=out, top_k=top_k,
                                   model=model, optimizer_state=optimizer_state, faiss=faiss,
                                   nprobe=nprobe, report_recall=report_recall, device=device,
                                   progress=not quiet))
    if report_recall and "recall_at_10" in result.metadata:
        typer.echo(f"recall@10 of {faiss} against exact search: "
                   f"{result.metadata['recall_at_10']:.4f}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``factrace`` script."""
    try:
        app(args=argv, prog_name="factrace", standalone_mode=True)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
