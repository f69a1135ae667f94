"""The ``factrace`` command line: parse options, build a config, call the library.

User errors (:class:`~factrace.errors.FactraceError`) print one line and exit with code 2;
warnings for the user (:class:`~factrace.errors.FactraceWarning`) print one line each.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import typing
import warnings
from pathlib import Path
from typing import Annotated

import typer

from factrace.errors import DISK_FULL, FactraceError, FactraceWarning
from factrace.extras import require
from factrace.run.process import tune_process

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Trace a language model's outputs back to its pretraining data (TrackStar).")
index_app = typer.Typer(no_args_is_help=True, help="Persistent encoding stores.")
app.add_typer(index_app, name="index")

# Encoder options, shared by every command that encodes (None = the variant's default).
Variant = Annotated[str, typer.Option(help="grad-dot | grad-cos | grad-cos+opt | "
                                      "trackstar-train | trackstar | trackstar-paper (η = 0.1) | "
                                      "trackstar-auto (η from R_train)")]
Dim = Annotated[int | None, typer.Option(help="Projection dimension (default 2^16; on CPU at "
                                          "most 4096 per block: 2^14 for a 2-layer model).")]
Layout = Annotated[str | None, typer.Option(help="layers | modules")]
LayerGroups = Annotated[int | None, typer.Option(
    "--layer-groups", help="Contiguous layer groups of the layers layout (each gives an "
    "attention and an MLP block).")]
Projection = Annotated[str | None, typer.Option(
    help="kronecker | exact (no projection: the whole corrected gradient, without R).")]
SecondMoment = Annotated[str | None, typer.Option(
    "--second-moment", help="factored | exact | adafactor | estimate | none")]
Hessian = Annotated[str | None, typer.Option(help="mixed | train | none")]
HessianStructure = Annotated[str | None, typer.Option(
    "--hessian-structure", help="auto | global | block")]
Lambda = Annotated[str | None, typer.Option(
    "--lambda", help="λ, R_eval's weight in R: a number in [0, 1], or auto (the paper's rule: the "
    "scaled eigenvalue curves cross at --lambda-k) (default 0.5; trackstar-paper: auto).")]
Damping = Annotated[str | None, typer.Option(
    help="Damping η of R^{-1/2}: a number, or auto (each block's η from its data) (default 10; "
         "trackstar-paper: 0.1).")]
Seed = Annotated[int | None, typer.Option(help="Projection seed.")]
Device = Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N")]
Dtype = Annotated[str | None, typer.Option(help="float32 | bfloat16 | float16")]
BatchTokens = Annotated[int | None, typer.Option(
    "--batch-tokens", help="Padded tokens per batch (default: 8192 on CPU; on CUDA grown to fill "
    "the device).")]
TrainExamples = Annotated[int | None, typer.Option(
    "--train-examples", help="Corpus passages sampled for R_train.")]
Include = Annotated[list[str] | None, typer.Option(
    help="Glob of linear modules outside the repeated blocks to track too, e.g. lm_head "
    "(repeatable).")]
Only = Annotated[list[str] | None, typer.Option(
    help="Glob restricting tracking to the modules it matches, e.g. '*.mlp.*' (repeatable).")]
Exclude = Annotated[list[str] | None, typer.Option(help="Glob of modules to skip (repeatable).")]
Truncate = Annotated[bool, typer.Option(help="Truncate long passages instead of windowing.")]
Compile = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the model's forward (compiles first, then runs faster).")]
Engine = Annotated[str, typer.Option(help="local | ray")]
Workers = Annotated[int, typer.Option(help="Ray workers (model replicas).")]
RayAddress = Annotated[str | None, typer.Option("--ray-address", help="Existing Ray cluster.")]
GpusPerWorker = Annotated[float, typer.Option("--gpus-per-worker", help="GPUs per Ray worker.")]
ShardRows = Annotated[int | None, typer.Option(
    "--shard-rows", help="Corpus rows per task/shard (default: 256 MiB of float32 encodings, "
    "256-8192 rows).")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No progress bars.")]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Replace existing outputs (otherwise refused before any work).")]
Model = Annotated[str, typer.Option(help="Hugging Face model directory, or a .gguf file "
                                    "(de-quantised on loading).")]
ScoresOut = Annotated[str | None, typer.Option(
    help="Also write every (query, passage) score to this .npz (for eval --lds).")]
ScoresMaxGib = Annotated[float, typer.Option(
    help="Refuse --scores-out above this size in GiB (or above the free disk).")]
TopK = Annotated[int, typer.Option("--top-k", help="Top passages kept per query (gradient methods also keep as many "
    "opponents).")]
TailPatchK = Annotated[int, typer.Option(
    "--tail-patch-k", help="Top passages of each ranking tail-patched, one step each.")]
TailPatchQueries = Annotated[int | None, typer.Option(
    "--tail-patch-queries", help="Tail-patch the first N queries only (default: all).")]
OptState = Annotated[str | None, typer.Option(
    "--optimizer-state", help="optimizer.pt / state_dict / safetensors of exp_avg_sq.")]


EstimateExamples = Annotated[int | None, typer.Option(
    "--estimate-examples", help="Corpus passages sampled to estimate V with --second-moment "
    "estimate (default 256).")]
LambdaK = Annotated[int | None, typer.Option(
    "--lambda-k", help="Component where --lambda auto's eigenvalue curves cross, and below "
    "which a trace's queries are too few to stand for a task (default d/64).")]
MaxLength = Annotated[int | None, typer.Option(
    "--max-length", help="Tokens per example (default: the model's context); longer passages "
    "become windows.")]
Epsilon = Annotated[float | None, typer.Option(help="ε of the optimizer correction (default "
                                               "1e-8).")]
LossReduction = Annotated[str | None, typer.Option(
    "--loss-reduction", help="sum | mean of the per-token losses of an example.")]
Aspect = Annotated[float | None, typer.Option(help="Projection block shape a/b (default 1).")]
Threads = Annotated[int | None, typer.Option(
    help="CPU threads of PyTorch and numpy's BLAS (default: the cores this process may use). "
    "Lower it when other jobs share the machine: threads slow down many times when they are "
    "oversubscribed.")]

#: Every EncoderConfig option of the command line, declared once: name → (type, default).
ENCODER_OPTIONS = {
    "variant": (Variant, "trackstar"), "dim": (Dim, None), "projection": (Projection, None),
    "layout": (Layout, None), "layer_groups": (LayerGroups, None), "aspect": (Aspect, None),
    "second_moment": (SecondMoment, None), "epsilon": (Epsilon, None),
    "estimate_examples": (EstimateExamples, None), "hessian": (Hessian, None),
    "hessian_structure": (HessianStructure, None), "lambda_": (Lambda, None),
    "lambda_k": (LambdaK, None), "damping": (Damping, None), "train_examples": (TrainExamples, None),
    "seed": (Seed, None), "device": (Device, None), "dtype": (Dtype, None),
    "batch_tokens": (BatchTokens, None), "max_length": (MaxLength, None),
    "loss_reduction": (LossReduction, None), "include": (Include, None), "only": (Only, None),
    "exclude": (Exclude, None), "truncate": (Truncate, False), "compile_": (Compile, False),
}


def _encoder_overrides(include=None, exclude=None, only=None, truncate=False, compile_=False,
                       **options) -> dict:
    """The encoder options given on the command line, as EncoderConfig fields (those not given
    are left out: they keep a variant's defaults)."""
    given = dict(options, include=tuple(include) if include else None,
                 exclude=tuple(exclude) if exclude else None,
                 only=tuple(only) if only else None,
                 overflow="truncate" if truncate else None, compile=compile_ or None)
    return {name: value for name, value in given.items() if value is not None}


def _encoder_config(variant="trackstar", **options):
    from factrace.config import variant_config

    return variant_config(variant, **_encoder_overrides(**options))


def with_options(fn, options: dict, call, drop: tuple[str, ...] = ()):
    """``fn`` with the keyword options ``options`` (name → (type, default)) added to its
    signature (and its parameters ``drop`` removed from it), called as ``call(fn, kwargs)``."""
    sig = inspect.signature(fn)
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                               annotation=kind)
             for name, (kind, default) in options.items()]
    hints = typing.get_type_hints(fn, include_extras=True)  # the annotations, resolved
    params = [p.replace(annotation=hints.get(p.name, p.annotation))
              for p in sig.parameters.values() if p.name not in drop]

    @functools.wraps(fn)
    def wrapper(**kwargs):
        return call(fn, kwargs)

    wrapper.__signature__ = sig.replace(parameters=params + extra)
    wrapper.__annotations__ = {p.name: p.annotation for p in params + extra}
    del wrapper.__wrapped__  # typer reads the signature above, not the function's own
    return wrapper


def _with_encoder_options(fn, options: dict, param: str, build):
    """``fn`` with the encoder ``options`` and ``--threads``: the threads are set and the
    options reach ``fn`` as its one parameter ``param``, ``build(options)``."""
    def call(fn, kwargs):
        set_threads(kwargs.pop("threads"))
        given = {name: kwargs.pop(name) for name in options}
        return fn(**kwargs, **{param: build(given)})

    return with_options(fn, {**options, "threads": (Threads, None)}, call, drop=(param,))


def encoder_options(fn):
    """Give a command every encoder option (:data:`ENCODER_OPTIONS`) and ``--threads``; it
    receives them as one ``encoder`` (an EncoderConfig) and has the threads set."""
    return _with_encoder_options(fn, ENCODER_OPTIONS, "encoder",
                                 lambda given: _encoder_config(**given))


def ladder_options(fn):
    """Give a command that runs every variant (``compare``) every encoder option but
    ``--variant``, and ``--threads``; it receives those given as one ``encoder_options`` (a dict
    of EncoderConfig fields: each overrides every variant's default) and has the threads set."""
    options = {name: spec for name, spec in ENCODER_OPTIONS.items() if name != "variant"}
    return _with_encoder_options(fn, options, "encoder_options",
                                 lambda given: _encoder_overrides(**given))


def _column_option(flag: str, what: str, default: str):
    return Annotated[str | None, typer.Option(
        flag, help=f"Column (JSON Lines: key) of the {what} (default: {default}).")]


#: The columns of a corpus and of queries, declared once: option → (field, type, default).
CORPUS_COLUMNS = {
    "id_field": ("id", _column_option("--id-field", "corpus's passage ids", "id"), None),
    "text_field": ("text", _column_option("--text-field", "corpus's passage texts", "text"),
                   None),
}
QUERY_COLUMNS = {
    "query_id_field": ("id", _column_option("--query-id-field", "queries' ids", "id"), None),
    "query_prompt_field": ("prompt", _column_option("--query-prompt-field", "queries' prompts",
                                                    "prompt"), None),
    "query_target_field": ("target", _column_option("--query-target-field", "queries' targets",
                                                    "target"), None),
}


def data_columns(fn):
    """Give a command that reads a corpus (a ``corpus`` parameter) ``--id-field`` and
    ``--text-field``, and one that reads queries (``queries``) the ``--query-*-field`` options;
    it receives its corpus (each of a list) and queries as a
    :class:`~factrace.data.sources.Source` when a column is renamed, else as the path."""
    from factrace.data.sources import with_columns

    names = inspect.signature(fn).parameters
    groups = {param: columns for param, columns in (("corpus", CORPUS_COLUMNS),
                                                    ("queries", QUERY_COLUMNS))
              if param in names}

    def call(fn, kwargs):
        for param, columns in groups.items():
            renamed = {field: kwargs.pop(option) for option, (field, _, _) in columns.items()}
            value = kwargs[param]
            kwargs[param] = ([with_columns(v, **renamed) for v in value]
                             if isinstance(value, list) else with_columns(value, **renamed))
        return fn(**kwargs)

    options = {option: (kind, default) for columns in groups.values()
               for option, (_, kind, default) in columns.items()}
    return with_options(fn, options, call)


def set_threads(threads: int | None) -> None:
    """``--threads``: PyTorch's intra-op threads (default: the cores this process may use) and,
    when given, numpy's BLAS threads (unless the environment sets them): numpy reads them when
    it loads, which PyTorch does, so before it."""
    if threads is not None and threads < 1:
        raise FactraceError(f"--threads must be at least 1, got {threads}")
    if threads is not None and "numpy" not in sys.modules:
        for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, str(threads))
    import torch

    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))


def _require_engine(command: str, engine: str) -> None:
    """--engine ray needs the ray extra (said before any work)."""
    if engine == "ray":
        require(f"factrace {command} --engine ray", "ray")


def user_errors(fn):
    """Turn a FactraceError into one line on stderr and exit code 2, and each FactraceWarning
    into one line on stderr."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("always", FactraceWarning)
            shown = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                if issubclass(category, FactraceWarning):
                    typer.echo(f"factrace: warning: {message}", err=True)
                else:
                    shown(message, category, filename, lineno, file, line)

            warnings.showwarning = show
            try:
                return fn(*args, **kwargs)
            except FactraceError as e:
                typer.echo(f"factrace: error: {e}", err=True)
                raise typer.Exit(2) from None
            except OSError as e:  # a full disk outside the store's own writes
                if e.errno not in DISK_FULL:
                    raise
                where = f" writing {e.filename}" if e.filename else ""
                typer.echo(f"factrace: error: no space left on device{where}; free space and "
                           "rerun the same command to resume", err=True)
                raise typer.Exit(2) from None
    return wrapper


def _quiet_libraries():
    """transformers and the Hugging Face hub offline, errors only, no progress bars: said in
    the environment, which they read when they load (a command that loads no model does not
    load them), and to transformers itself when it is loaded already."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()


@app.command()
@user_errors
@data_columns
@encoder_options
def scan(
    model: Model, corpus: Annotated[str, typer.Option(help="Corpus: JSONL, Parquet, Arrow, saved "
                                                      "dataset, or a directory of them.")],
    queries: Annotated[str, typer.Option(help="Queries (id, prompt, target): JSON Lines, Parquet, Arrow, a saved dataset or a directory of them.")],
    out: Annotated[str, typer.Option(help="Rankings JSONL to write.")],
    top_k: TopK = 10,
    optimizer_state: OptState = None, engine: Engine = "local", workers: Workers = 2,
    ray_address: RayAddress = None, gpus_per_worker: GpusPerWorker = 0.0,
    shard_rows: ShardRows = None, quiet: Quiet = False, overwrite: Overwrite = False,
    scores_out: ScoresOut = None, scores_max_gib: ScoresMaxGib = 4.0,
    encoder=None,
):
    """Score every corpus passage against every query in one streaming pass (the paper's mode)."""
    _require_engine("scan", engine)
    _quiet_libraries()
    from factrace.run.scan import ScanConfig
    from factrace.run.scan import scan as run_scan

    enc = encoder
    result = run_scan(ScanConfig(model=model, corpus=corpus, queries=queries, out=out,
                                 optimizer_state=optimizer_state, top_k=top_k, encoder=enc,
                                 engine=engine, workers=workers, ray_address=ray_address,
                                 gpus_per_worker=gpus_per_worker, shard_rows=shard_rows,
                                 progress=not quiet, overwrite=overwrite,
                                 scores_out=scores_out, scores_max_gib=scores_max_gib))
    if not quiet:
        t = result.metadata["timings"]
        typer.echo(f"wrote {out} ({len(result.rankings)} queries, "
                   f"{result.metadata['corpus_rows']} passages, "
                   f"{sum(t.values()):.1f}s)", err=True)


@index_app.command("build")
@user_errors
@data_columns
@encoder_options
def index_build(
    model: Model, corpus: Annotated[str, typer.Option(help="Corpus file or directory.")],
    out: Annotated[str, typer.Option(help="Store directory to build (or resume).")],
    queries: Annotated[str | None, typer.Option(help="Optional: queries whose R_eval becomes "
                                                "the store's default task.")] = None,
    task_name: Annotated[str, typer.Option("--task-name", help="Name of that task.")] = "default",
    optimizer_state: OptState = None, engine: Engine = "local", workers: Workers = 2,
    ray_address: RayAddress = None, gpus_per_worker: GpusPerWorker = 0.0,
    shard_rows: ShardRows = None, quiet: Quiet = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a store already at --out by a new one (otherwise it is "
        "resumed, or kept when complete).")] = False,
    compact: Annotated[bool, typer.Option(
        "--compact", help="Keep codes instead of rows (1/8 of their bytes by default): trace "
        "and ask then re-encode each question's candidates for their exact scores.")] = False,
    compact_spec: Annotated[str | None, typer.Option(
        help="FAISS spec of a compact store's codes (default PQ<d/2>x4fs).")] = None,
    encoder=None,
):
    """Encode every passage into a persistent, fingerprinted, resumable store."""
    _require_engine("index build", engine)
    _quiet_libraries()
    from factrace.run.index import IndexConfig, build_index

    enc = encoder
    store = build_index(IndexConfig(model=model, corpus=corpus, out=out, queries=queries,
                                    task_name=task_name,
                                    optimizer_state=optimizer_state, encoder=enc, engine=engine,
                                    workers=workers, ray_address=ray_address,
                                    gpus_per_worker=gpus_per_worker, shard_rows=shard_rows,
                                    progress=not quiet, overwrite=overwrite,
                                    compact=compact, compact_spec=compact_spec))
    if not quiet:
        typer.echo(f"store {out}: {store.n_rows} encodings of dimension {store.dim}", err=True)


QuietOut = Annotated[bool, typer.Option("-q", "--quiet", help="No terminal output (with "
                                         "--out).")]
StoreOption = Annotated[str, typer.Option("--index", help="Store built by `factrace index build`.")]
ModelOverride = Annotated[str | None, typer.Option(
    help="Model directory or .gguf file (default: the store's).")]


@index_app.command("add")
@user_errors
@data_columns
def index_add(
    index: StoreOption,
    corpus: Annotated[str, typer.Option(help="Corpus of new passages to append.")],
    model: ModelOverride = None, optimizer_state: OptState = None, device: Device = None,
    quiet: Quiet = False,
    threads: Threads = None,
):
    """Append passages, encoded with the store's exact configuration (resumable)."""
    set_threads(threads)
    _quiet_libraries()
    from factrace.run.index import AddConfig, add_to_index

    store = add_to_index(AddConfig(index=index, corpus=corpus, model=model,
                                   optimizer_state=optimizer_state, device=device,
                                   progress=not quiet))
    if not quiet:
        typer.echo(f"store {index}: {store.n_rows} encodings", err=True)


task_app = typer.Typer(no_args_is_help=True, help="Named query sets whose R_eval a store keeps.")
index_app.add_typer(task_app, name="task")


@task_app.command("add")
@user_errors
@data_columns
def index_task_add(
    index: StoreOption,
    queries: Annotated[str, typer.Option(help="Queries JSONL defining the task's R_eval.")],
    name: Annotated[str, typer.Option(help="Task name.")],
    default: Annotated[bool, typer.Option("--default", help="Make it the store's default "
                                          "task.")] = False,
    model: ModelOverride = None, optimizer_state: OptState = None, device: Device = None,
    quiet: Quiet = False,
    threads: Threads = None,
):
    """Add (or replace) a task: R_eval from a query set, kept with the store."""
    set_threads(threads)
    _quiet_libraries()
    from factrace.run.index import TaskConfig, add_task

    entry = add_task(TaskConfig(index=index, queries=queries, name=name, default=default,
                                model=model, optimizer_state=optimizer_state, device=device,
                                progress=not quiet))
    if not quiet:
        typer.echo(f"task {name}: {entry['n_queries']} queries, λ = {entry['lambda']:.3f}",
                   err=True)


@index_app.command("verify")
@user_errors
def index_verify(index: StoreOption):
    """Re-hash every shard of a store (and its saved approximate index or codec) against its
    manifest."""
    from factrace.store.encodings import EncodingStore

    store = EncodingStore.open(index, verify=True)
    typer.echo(f"store {index}: {store.n_shards} shards, {store.n_rows} rows verified")


@index_app.command("approx")
@user_errors
def index_approx(
    index: StoreOption,
    spec: Annotated[str | None, typer.Option(
        help="FAISS factory spec (default PQ<d/2>x4fs: 1/8 of the rows' bytes, fast-scan "
        "codes; cut to what the training rows support).")] = None,
    train_rows: Annotated[int | None, typer.Option(
        "--train-rows", help="Rows sampled to train it (default: 10000, at most 2 GiB of "
        "float32).")] = None,
    quiet: Quiet = False,
    threads: Threads = None,
):
    """Train an approximate index once and keep it with the store, for `trace --candidates`
    (`index add` extends it)."""
    set_threads(threads)
    _quiet_libraries()
    from factrace.run.index import ApproxConfig, build_approx

    entry = build_approx(ApproxConfig(index=index, spec=spec, train_rows=train_rows))
    if not quiet:
        notes = f" ({'; '.join(entry['notes'])})" if entry["notes"] else ""
        typer.echo(f"store {index}: FAISS {entry['spec']} over {entry['rows']} rows, trained on "
                   f"{entry['trained_rows']}{notes}", err=True)


Candidates = Annotated[int | None, typer.Option(
    help="Two-stage search: exact scores of this many candidates per query (and per side) "
    "from the store's saved index (`factrace index approx`); a compact store's codes are "
    "its index, and it takes 200 when none are given.")]


@app.command()
@user_errors
@data_columns
def trace(
    index: StoreOption,
    queries: Annotated[str, typer.Option(help="Queries JSONL.")],
    out: Annotated[str, typer.Option(help="Rankings JSONL to write.")],
    top_k: TopK = 10,
    task: Annotated[str | None, typer.Option(help="Use this task's R_eval (default: the "
                                             "queries' own; the store's default task when they "
                                             "are too few).")] = None,
    model: ModelOverride = None,
    optimizer_state: OptState = None,
    faiss: Annotated[str | None, typer.Option(help="Approximate search: IVF<n>,Flat or "
                                              "IVF<n>,PQ<m>.")] = None,
    nprobe: Annotated[int, typer.Option(help="FAISS lists probed per query.")] = 16,
    report_recall: Annotated[bool, typer.Option("--report-recall", help="Print recall@10 of "
                                                "approximate against exact search.")] = False,
    candidates: Candidates = None,
    device: Device = None, quiet: Quiet = False, overwrite: Overwrite = False,
    threads: Threads = None,
    scores_out: ScoresOut = None, scores_max_gib: ScoresMaxGib = 4.0,
):
    """Rank a store's passages for new queries, encoded with the store's own configuration."""
    set_threads(threads)
    _quiet_libraries()
    from factrace.run.tracer import TraceConfig
    from factrace.run.tracer import trace as run_trace

    result = run_trace(TraceConfig(index=index, queries=queries, out=out, top_k=top_k, task=task,
                                   model=model, optimizer_state=optimizer_state, faiss=faiss,
                                   nprobe=nprobe, report_recall=report_recall,
                                   candidates=candidates, device=device, progress=not quiet,
                                   overwrite=overwrite, scores_out=scores_out,
                                   scores_max_gib=scores_max_gib))
    meta = result.metadata
    if "faiss" in meta:
        typer.echo(f"approximate search: {meta['faiss']['description']}", err=True)
    if "two_stage" in meta:
        typer.echo(f"two-stage search: exact scores of {meta['two_stage']['candidates']} "
                   f"candidates per query from {meta['two_stage']['description']}", err=True)
    if report_recall and "recall_at_10" in meta:
        built = meta["faiss"]["built"] if "faiss" in meta else \
            f"two-stage ({meta['two_stage']['spec']}, {meta['two_stage']['candidates']} candidates)"
        typer.echo(f"recall@10 of {built} against exact search: {meta['recall_at_10']:.4f}")


TaskOption = Annotated[str | None, typer.Option(help="Use this task's R_eval (default: the "
                                                "queries' own; the store's default task when "
                                                "they are too few).")]


@app.command()
@user_errors
def ask(
    index: StoreOption,
    prompt: Annotated[str | None, typer.Argument(help="The prompt (or --prompts FILE).")] = None,
    prompts: Annotated[str | None, typer.Option(
        help="Prompts file: .jsonl with \"prompt\" (and optionally \"id\") per line, or text "
        "with one prompt per line.")] = None,
    out: Annotated[str | None, typer.Option(help="Rankings JSONL to write (trace's rows plus "
                                            "prompt, completion, span, traced, "
                                            "proponent_tokens).")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest completion "
                                                "(it also stops at EOS).")] = 16,
    temperature: Annotated[float, typer.Option(help="0: greedy; above: sampled.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the sampling.")] = 0,
    span: Annotated[str, typer.Option(help="What of the completion is traced: answer (up to "
                                      "its first sentence end or line break), whole, or "
                                      "START:END (characters of the completion; the tokens "
                                      "overlapping them).")] = "answer",
    top_k: TopK = 10,
    explain_top: Annotated[int, typer.Option("--explain-top", help="Best proponents whose "
                                             "passage tokens are scored.")] = 3,
    task: TaskOption = None,
    candidates: Candidates = None,
    model: ModelOverride = None, optimizer_state: OptState = None, device: Device = None,
    quiet: QuietOut = False,
    overwrite: Overwrite = False,
    threads: Threads = None,
):
    """The store's model completes a prompt; its answer is traced against the store."""
    set_threads(threads)
    _quiet_libraries()
    from factrace.report.answers import print_answer
    from factrace.run.tracer import AskConfig
    from factrace.run.tracer import ask as run_ask

    answers, _ = run_ask(AskConfig(index=index, prompt=prompt, prompts=prompts, out=out,
                                   max_new_tokens=max_new_tokens, temperature=temperature,
                                   seed=seed, span=span, top_k=top_k, task=task,
                                   explain_top=explain_top, texts=not quiet,
                                   candidates=candidates, model=model,
                                   optimizer_state=optimizer_state, device=device,
                                   overwrite=overwrite))
    if not quiet:
        for answer in answers:
            print_answer(answer)


@app.command()
@user_errors
@data_columns
def explain(
    index: StoreOption,
    queries: Annotated[str, typer.Option(help="Queries JSONL the pair was traced with, or the "
                                         "answers of an ask (its --out).")],
    query_id: Annotated[str, typer.Option("--query-id", help="The query's id.")],
    doc_id: Annotated[str, typer.Option("--doc-id", help="The passage's id in the store "
                                        "(<doc>#<n> for a window).")],
    out: Annotated[str | None, typer.Option(help="JSON to write.")] = None,
    task: TaskOption = None,
    model: ModelOverride = None, optimizer_state: OptState = None, device: Device = None,
    quiet: QuietOut = False,
    overwrite: Overwrite = False,
    threads: Threads = None,
):
    """One pair's score, split exactly over the passage's tokens and over the query's."""
    set_threads(threads)
    _quiet_libraries()
    from factrace.report.answers import print_explanation
    from factrace.run.tracer import ExplainConfig
    from factrace.run.tracer import explain as run_explain

    result = run_explain(ExplainConfig(index=index, queries=queries, query_id=query_id,
                                       doc_id=doc_id, out=out, task=task, model=model,
                                       optimizer_state=optimizer_state, device=device,
                                       overwrite=overwrite))
    if not quiet:
        print_explanation(result)


@app.command()
@user_errors
@data_columns
def serve(
    index: Annotated[str | None, typer.Option("--index", help="Store built by `factrace index "
                                              "build`: passage texts, Ask and Explain.")] = None,
    rankings: Annotated[list[str] | None, typer.Option(
        help="Rankings JSONL of scan, trace, ask or compare, or a compare output directory "
        "(repeatable).")] = None,
    qrels: Annotated[str | None, typer.Option(help="Gold passages JSONL: marks gold passages "
                                              "and correct queries.")] = None,
    queries: Annotated[str | None, typer.Option(help="Queries JSONL of the rankings (default: "
                                                "the one each file's metadata records).")] = None,
    corpus: Annotated[list[str] | None, typer.Option(help="Corpus for passage texts (default: "
                                                     "the store's; repeatable).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (only this machine by "
                                      "default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    token: Annotated[str | None, typer.Option(
        help="Access token every request must carry (default: none on loopback; off it, one "
        "generated and printed).")] = None,
    max_queue: Annotated[int, typer.Option(
        help="Questions (ask, explain) that may wait for the model while one runs; more are "
        "refused (503).")] = 4,
    model: ModelOverride = None, optimizer_state: OptState = None, device: Device = None,
    threads: Threads = None,
):
    """A local web explorer: browse and compare rankings, ask the model, explain a score."""
    require("factrace serve", "serve")
    set_threads(threads)
    _quiet_libraries()
    from factrace.serve import ServeConfig
    from factrace.serve import serve as run_serve

    run_serve(ServeConfig(index=index, rankings=list(rankings or []), qrels=qrels,
                          queries=queries, corpus=list(corpus or []), model=model,
                          optimizer_state=optimizer_state, device=device, host=host,
                          port=port, token=token, max_queue=max_queue))


@app.command("eval")
@user_errors
@data_columns
def eval_(
    rankings: Annotated[str | None, typer.Option(help="Rankings JSONL.")] = None,
    qrels: Annotated[str | None, typer.Option(help="Gold passages JSONL (query_id, "
                                              "doc_id).")] = None,
    out: Annotated[str | None, typer.Option(help="Metrics JSON to write.")] = None,
    tail_patch: Annotated[bool, typer.Option("--tail-patch", help="Also measure tail-patch "
                                             "(needs --model, --optimizer-state, --corpus, "
                                             "--queries).")] = False,
    model: Annotated[str | None, typer.Option(help="Model directory or .gguf file "
                                               "(tail-patch).")] = None,
    optimizer_state: OptState = None,
    corpus: Annotated[str | None, typer.Option(help="Corpus (tail-patch).")] = None,
    queries: Annotated[str | None, typer.Option(help="Queries (tail-patch).")] = None,
    tail_patch_k: TailPatchK = 10,
    tail_patch_queries: TailPatchQueries = None,
    lr: Annotated[float | None, typer.Option(help="Tail-patch learning rate (default: the "
                                             "final learning rate of training).")] = None,
    kinds: Annotated[bool, typer.Option("--kinds", help="Also the share of each proponent kind "
                                        "(entails, object, subject, relation, other) in the "
                                        "top 1 and 10 (needs --queries with the facts' fields, "
                                        "--corpus).")] = False,
    device: Device = None, quiet: Quiet = False, overwrite: Overwrite = False,
    lds: Annotated[bool, typer.Option("--lds", help="Linear datamodeling score of --scores "
                                      "against retrained models' --outputs (instead of "
                                      "MRR/recall of --rankings).")] = False,
    scores: Annotated[list[str] | None, typer.Option(
        "--scores", help="Full scores .npz of a method (repeatable; from scan/trace "
        "--scores-out or compare).")] = None,
    subsets: Annotated[str | None, typer.Option(
        help="LDS subsets JSONL: {\"subset\": id, \"passages\": [...]}.")] = None,
    outputs: Annotated[str | None, typer.Option(
        help="LDS outputs JSONL: {\"subset\", \"query_id\", \"output\"}.")] = None,
    output_kind: Annotated[str, typer.Option(
        help="logprob (output = log p(target | prompt)) | loss (sign flipped).")] = "logprob",
    noise_outputs: Annotated[str | None, typer.Option(
        help="Outputs of a second retraining: report the LDS noise floor.")] = None,
    lds_subsets: Annotated[int | None, typer.Option(
        help="Generate M random subsets of the scored passages.")] = None,
    lds_fraction: Annotated[float, typer.Option(
        help="Share of passages a generated subset keeps (0.5: TRAK; 0.9: "
        "leave-10%-out).")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of generated subsets.")] = 0,
    subsets_out: Annotated[str | None, typer.Option(
        help="Write the (generated) subsets to this JSONL.")] = None,
):
    """MRR, recall@10 and (optionally) tail-patch and proponent kinds of a rankings file,
    each mean ± se; or, with --lds, the linear datamodeling score of full scores."""
    _quiet_libraries()
    if lds:
        _eval_lds(scores or [], subsets, outputs, output_kind, noise_outputs, lds_subsets,
                  lds_fraction, seed, subsets_out, out, overwrite,
                  given=[flag for flag, value in (("--rankings", rankings), ("--qrels", qrels),
                                                  ("--tail-patch", tail_patch)) if value])
        return
    missing = [flag for flag, value in (("--rankings", rankings), ("--qrels", qrels))
               if value is None]
    if missing:
        raise FactraceError(f"eval needs {' and '.join(missing)} (or --lds with --scores)")
    from factrace.evaluate.evaluation import EvalConfig, evaluate
    from factrace.report import print_table

    rows = evaluate(EvalConfig(rankings=rankings, qrels=qrels, out=out, tail_patch=tail_patch,
                               model=model, optimizer_state=optimizer_state, corpus=corpus,
                               queries=queries, tail_patch_k=tail_patch_k,
                               tail_patch_queries=tail_patch_queries, lr=lr, kinds=kinds,
                               device=device, progress=not quiet, overwrite=overwrite))
    print_table(rows)
    if "tail_patch_step" in rows[0]:
        typer.echo(f"tail-patch: {rows[0]['tail_patch_step']}")
    _print_kinds(rows, rows[0].get("kinds_note"))


def _eval_lds(scores, subsets, outputs, output_kind, noise_outputs, generate, fraction, seed,
              subsets_out, out, overwrite, given) -> None:
    from factrace.evaluate.lds_eval import LdsEvalConfig, evaluate_lds

    if given:
        raise FactraceError(f"--lds reads --scores, not {', '.join(given)}: evaluate rankings "
                            "in a separate call")
    record = evaluate_lds(LdsEvalConfig(scores=scores, subsets=subsets, outputs=outputs,
                                        output_kind=output_kind, noise_outputs=noise_outputs,
                                        generate=generate, fraction=fraction, seed=seed,
                                        subsets_out=subsets_out, out=out, overwrite=overwrite))
    if "subsets_written" in record:
        typer.echo(f"wrote {record['subsets']} subsets to {record['subsets_written']}; retrain "
                   "on each and measure the outputs, then run eval --lds --subsets ... "
                   "--outputs ...")
        return
    typer.echo(f"LDS, {record['variant']}; output: {record['output']}")
    width = max(len(name) for name in record["methods"])
    for name, r in record["methods"].items():
        note = f" ({r['undefined']} queries undefined, counted 0)" if r["undefined"] else ""
        typer.echo(f"  {name:<{width}}  {r['mean']:.3f} ± {r['stderr']:.3f}{note}")
    if "noise_floor" in record:
        nf = record["noise_floor"]
        typer.echo(f"noise floor (second retraining against the first, {nf['subsets']} "
                   f"subsets): {nf['mean']:.3f} ± {nf['stderr']:.3f}")


@app.command()
@user_errors
@data_columns
def baseline(
    method: Annotated[str, typer.Option(help="bm25 | bm25+target | dense | random")],
    corpus: Annotated[str, typer.Option(help="Corpus file or directory.")],
    queries: Annotated[str, typer.Option(help="Queries JSONL.")],
    out: Annotated[str, typer.Option(help="Rankings JSONL to write.")],
    top_k: TopK = 10, overwrite: Overwrite = False, quiet: Quiet = False,
):
    """Rank passages with a baseline retriever, in the rankings format."""
    _quiet_libraries()
    from factrace.data.corpus import iter_corpus, validate_corpus
    from factrace.data.io import read_queries, write_rankings
    from factrace.data.outputs import check_at_least, check_output_file
    from factrace.evaluate.baselines import BASELINES, baseline_rankings
    from factrace.run.progress import progress_step

    if method not in BASELINES:
        raise FactraceError(f"--method must be one of {', '.join(BASELINES)}; got {method!r}")
    if method != "random":
        require(f"factrace baseline --method {method}", "baselines")
    check_at_least(1, top_k=top_k)
    check_output_file(out, overwrite=overwrite)
    qs = read_queries(queries)
    validate_corpus(corpus)
    passages = list(iter_corpus(corpus))
    with progress_step(f"baseline {method}", not quiet):
        ranked = baseline_rankings(method, passages, qs, top_k)
    write_rankings(out, ranked)


@app.command()
@user_errors
@data_columns
@ladder_options
def compare(
    model: Annotated[list[str], typer.Option(
        help="Hugging Face model directory, or a .gguf file. Given several times: the scaling "
        "study over those checkpoints (each with its optimizer state in its directory, or "
        "--second-moment estimate); the last gets the full comparison.")],
    corpus: Annotated[str, typer.Option(help="Corpus file or directory.")],
    queries: Annotated[str, typer.Option(help="Queries JSONL.")],
    qrels: Annotated[str, typer.Option(help="Gold passages JSONL.")],
    out: Annotated[str, typer.Option(help="Output directory.")],
    top_k: TopK = 10,
    optimizer_state: Annotated[str | None, typer.Option(
        "--optimizer-state", help="AdamW state (without it: --second-moment estimate, and "
        "--lr for tail-patch's SGD step).")] = None,
    tail_patch: Annotated[bool, typer.Option(help="Measure tail-patch.")] = True,
    tail_patch_k: TailPatchK = 10,
    tail_patch_queries: TailPatchQueries = None,
    lr: Annotated[float | None, typer.Option(help="Tail-patch learning rate.")] = None,
    engine: Engine = "local", workers: Workers = 2, ray_address: RayAddress = None,
    quiet: Quiet = False, overwrite: Overwrite = False,
    encoder_options=None,
):
    """The ladder (grad-dot … trackstar) and the baselines: results.json/.md and report.html.
    Encoder options apply to every variant, over its own defaults."""
    require("factrace compare", "baselines", "report", *(("ray",) if engine == "ray" else ()))
    _quiet_libraries()
    from factrace.evaluate.compare import CompareConfig
    from factrace.evaluate.compare import compare as run_compare
    from factrace.report import print_table
    from factrace.report.scaling import print_scaling

    options = dict(encoder_options)  # the correction and device have fields of their own
    second_moment, device = options.pop("second_moment", None), options.pop("device", None)
    scaling = tuple(model) if len(model) > 1 else ()
    if scaling and optimizer_state is not None:
        raise FactraceError("with several --model, each checkpoint's optimizer state is read "
                            "from its directory (factrace_optimizer.safetensors or "
                            "optimizer.pt): leave --optimizer-state out")
    if scaling and second_moment not in ("estimate", "none"):
        optimizer_state = model[-1]
    result = run_compare(CompareConfig(model[-1], optimizer_state, corpus, queries, qrels, out,
                                       top_k=top_k, encoder_options=options,
                                       second_moment=second_moment,
                                       tail_patch=tail_patch, tail_patch_k=tail_patch_k,
                                       tail_patch_queries=tail_patch_queries, lr=lr,
                                       engine=engine, workers=workers,
                                       ray_address=ray_address, device=device,
                                       progress=not quiet,
                                       overwrite=overwrite, scaling=scaling))
    print_table(result["rows"])
    _print_kinds(result["rows"], result["kinds_note"])
    print_scaling(result["scaling"])
    _print_findings(result["findings"])
    typer.echo(f"report: {Path(out) / 'report.html'}")


def _print_kinds(rows, note: str | None) -> None:
    """The proponent kinds table, or the one line saying why there is none."""
    from factrace.report.kinds import print_kinds

    if note:
        typer.echo(note)
    print_kinds(rows)


def _print_findings(found) -> None:
    """The paper's findings, one line each: verdict (±2 combined se), claim, evidence."""
    for f in found:
        typer.echo(f"- {f.verdict}: {f.claim} ({f.evidence})")


@app.command()
@user_errors
def demo(
    out: Annotated[str, typer.Option(help="Output directory.")] = "demo_out",
    passages: Annotated[int, typer.Option(help="Passages in the fact world.")] = 3000,
    n_queries: Annotated[int, typer.Option(
        "--n-queries", help="Queries in the fact world (facts asked).")] = 300,
    tail_patch_queries: Annotated[int, typer.Option(
        "--tail-patch-queries", help="Tail-patch the first N queries.")] = 100,
    dim: Annotated[int, typer.Option(help="Projection dimension.")] = 1 << 14,
    seed: Annotated[int, typer.Option(help="Seed of the world, model and projection.")] = 0,
    quiet: Quiet = False, overwrite: Overwrite = False,
    lds: Annotated[int, typer.Option(
        help="Retrain the model on M random training subsets and report each method's linear "
        "datamodeling score (0: off; retrainings cached).")] = 0,
    lds_fraction: Annotated[float, typer.Option(
        help="Share of passages each LDS subset keeps (0.5: TRAK; 0.9: leave-10%-out).")] = 0.5,
    lds_noise_subsets: Annotated[int | None, typer.Option(
        help="Subsets retrained with a second seed for the noise floor (default: all).")] = None,
    engine: Annotated[str, typer.Option(help="Where LDS retrainings run: local | ray.")] = "local",
    workers: Annotated[int, typer.Option(help="LDS retrainings at once.")] = 2,
):
    """Fact world → tiny pretrained Llama → TrackStar and baselines → evaluation and report."""
    require("factrace demo", "baselines", "report")
    _quiet_libraries()
    from factrace.report import print_table
    from factrace.report.scaling import print_scaling
    from factrace.run.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(out=out, passages=passages, queries=n_queries, seed=seed, dim=dim,
                                 tail_patch_queries=tail_patch_queries, progress=not quiet,
                                 overwrite=overwrite, lds=lds, lds_fraction=lds_fraction,
                                 lds_noise_subsets=lds_noise_subsets, engine=engine,
                                 workers=workers))
    info = result["train_info"]
    typer.echo(f"pretrained model: fact accuracy {info.get('fact_accuracy', float('nan')):.3f}, "
               f"{result['model_dir']}")
    print_table(result["rows"])
    _print_kinds(result["rows"], result["kinds_note"])
    print_scaling(result["scaling"])
    _print_findings(result["findings"])
    if "lds" in result["metadata"]:
        d = result["metadata"]["lds"]
        typer.echo(f"LDS: {d['variant']}; output {d['output']}; noise floor "
                   f"{d.get('noise_floor', 'not measured')} ({d.get('noise_floor_from', '')})")
    t = result["timings"]
    typer.echo("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()))
    typer.echo(f"report: {Path(out) / 'report.html'}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``factrace`` script."""
    tune_process()
    try:
        app(args=argv, prog_name="factrace", standalone_mode=True)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
