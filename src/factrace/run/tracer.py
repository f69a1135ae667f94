"""``trace``: questions asked of a store, each answered with the method's own R.

A :class:`Tracer` is a store opened for a session: the store (verified once), its encoder (model,
configuration and fitted state) and its tasks. ``Tracer.trace(queries)`` chooses R_eval:

- ``task=NAME``: the named task's R_eval (its row norms were computed when it was added);
- otherwise the queries' own, exactly as ``scan --queries`` would, when there are enough of them
  for the automatic λ (its component k, plus one);
- fewer: the store's default task if it has one (the metadata says so), else the queries' own
  with a warning in the metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from factrace.data.io import Ranking, read_queries
from factrace.data.outputs import check_at_least, check_output_file
from factrace.data.records import Query
from factrace.encode.whitening import TaskScorer, TaskWhitening
from factrace.run.index import load_task, open_encoder_for
from factrace.run.scan import META_SUFFIX, ScanResult, to_rankings, write_with_metadata
from factrace.search.approx import ApproxIndex, recall_at_k
from factrace.search.store import EncodingStore
from factrace.search.topk import exact_topk


class Tracer:
    """A store, its encoder and its tasks, opened once for many questions."""

    def __init__(self, store: EncodingStore, encoder):
        self.store = store
        self.encoder = encoder
        self._tasks: dict[str, tuple[TaskWhitening, np.ndarray]] = {}

    @classmethod
    def open(cls, index: str, model: str | None = None, optimizer_state: str | None = None,
             device: str | None = None, progress: bool = False) -> Tracer:
        """Open ``index`` (shards hashed only if not verified before at their present size and
        time) with the model and optimizer state it was built with (or the ones given;
        ``progress``: say the encoder's coverage on stderr)."""
        store = EncodingStore.open(index, verify="once")
        return cls(store, open_encoder_for(store, model, optimizer_state, device, progress))

    @property
    def default_task(self) -> str | None:
        return self.store.manifest.get("default_task")

    def task(self, name: str) -> tuple[TaskWhitening, np.ndarray]:
        """The named task's R⁻¹ and row norms (loaded once)."""
        if name not in self._tasks:
            _, y, norms = load_task(self.store, name)
            self._tasks[name] = (self.encoder.task(y), norms)
        return self._tasks[name]

    def scorer(self, y: torch.Tensor, task: str | None = None) -> tuple[TaskScorer, dict]:
        """How queries ``y`` (rotated, ``[Q, d]``) are scored, and a record of the choice."""
        enc = self.encoder
        if enc.config.hessian != "mixed":
            whitening = enc.task(None)
            return whitening.scorer(y), {"r_eval": "none", **whitening.describe()}
        needed = enc.eval_examples_needed()
        if task is None and y.shape[0] < needed and self.default_task:
            task = self.default_task
            note = (f"{y.shape[0]} query examples are fewer than the {needed} the automatic λ "
                    f"needs; R_eval from the store's default task {task!r}")
        else:
            note = None
        if task is not None:
            whitening, norms = self.task(task)
            record = {"r_eval": f"task {task}", **whitening.describe()}
            if note:
                record["note"] = note
            return whitening.scorer(y, row_norms=norms), record
        whitening = enc.task(y)
        record = {"r_eval": "these queries", **whitening.describe()}
        if y.shape[0] < needed:
            record["note"] = (f"R_eval from only {y.shape[0]} query examples (the automatic λ "
                              f"needs {needed}); add a task with `factrace index task add`")
        return whitening.scorer(y, own=True), record

    def trace(self, queries: list[Query], top_k: int = 10, task: str | None = None,
              faiss: str | None = None, nprobe: int = 16, report_recall: bool = False
              ) -> tuple[list[Ranking], dict]:
        """Rank the store's rows for ``queries``: ``(rankings, metadata)``."""
        _, y = self.encoder.query_vectors(queries)
        scorer, choice = self.scorer(y, task)
        metadata = {"command": "trace", "index": str(self.store.path), "top_k": top_k,
                    "encoder": self.encoder.metadata(scorer.task), "whitening": choice,
                    "fingerprints": self.store.fingerprints, "search": "exact"}
        exact = None
        if faiss is None or report_recall:
            exact = to_rankings(queries, exact_topk(scorer, self.store, top_k))
        rankings = exact
        if faiss is not None:
            index = ApproxIndex.build(_ScaledRows(self.store, scorer), faiss, nprobe=nprobe)
            vectors = scorer.u.numpy() if not scorer.task.normalize else \
                (scorer.u / scorer.qn[:, None]).numpy()
            found = index.search(vectors, top_k)
            rankings = [Ranking(q.id, list(r.doc_ids), [float(s) for s in r.scores])
                        for q, r in zip(queries, found, strict=True)]
            metadata["search"] = f"faiss {index.spec} nprobe={index.nprobe}"
            metadata["faiss"] = {"requested": faiss, "built": index.spec, "nlist": index.nlist,
                                 "nprobe": index.nprobe, "notes": index.notes,
                                 "description": index.describe()}
            if report_recall:
                k = min(10, top_k)
                metadata["recall_at_10"] = recall_at_k([r.doc_ids for r in rankings],
                                                       [r.doc_ids for r in exact], k)
        return rankings, metadata


class _ScaledRows(EncodingStore):
    """A store's rows as vectors whose inner product with ``R⁻¹q / ‖R^{-1/2} q‖`` is the score
    (``row / ‖R^{-1/2} row‖``), shard by shard on access, for an approximate index."""

    def __init__(self, store: EncodingStore, scorer: TaskScorer, chunk_rows: int = 1024):
        super().__init__(store.path, store.manifest)
        self.scorer, self.chunk_rows = scorer, chunk_rows
        self.first_rows = np.concatenate([[0], np.cumsum(store.shard_rows)]).astype(int)

    def shard_encodings(self, index: int) -> np.ndarray:
        encodings = super().shard_encodings(index)
        scorer, first = self.scorer, int(self.first_rows[index])
        out = np.empty(encodings.shape, np.float32)
        for s in range(0, encodings.shape[0], self.chunk_rows):
            chunk = torch.from_numpy(np.asarray(encodings[s:s + self.chunk_rows], np.float32))
            if scorer.task.normalize:
                if scorer.row_norms is not None:
                    rn = scorer.row_norms[first + s:first + s + chunk.shape[0]]
                else:
                    rn = scorer.task.norms(chunk)
                chunk = chunk / rn.clamp(min=1e-30)[:, None]
            out[s:s + chunk.shape[0]] = chunk.numpy()
        return out


@dataclass
class TraceConfig:
    """A ``trace`` job against a built store."""

    index: str
    queries: str
    out: str | None = None
    top_k: int = 10
    task: str | None = None
    """Named task whose R_eval to use (default: the queries' own, or the store's default task
    when the queries are too few)."""
    model: str | None = None
    """Defaults to the model the store was built with."""
    optimizer_state: str | None = None
    """Defaults to the optimizer state the store was built with."""
    faiss: str | None = None
    """FAISS spec for approximate search, e.g. ``IVF256,Flat`` or ``IVF256,PQ16``."""
    nprobe: int = 16
    report_recall: bool = False
    """Also run exact search and report recall@10 of the approximate one."""
    device: str | None = None
    progress: bool = True
    overwrite: bool = False
    """Replace an existing ``out`` (otherwise refused before any work)."""


def trace(cfg: TraceConfig) -> ScanResult:
    check_at_least(1, top_k=cfg.top_k, nprobe=cfg.nprobe)
    if cfg.out:
        check_output_file(cfg.out, [META_SUFFIX], cfg.overwrite)
    queries = read_queries(cfg.queries)
    tracer = Tracer.open(cfg.index, cfg.model, cfg.optimizer_state, cfg.device, cfg.progress)
    if cfg.task is not None:
        tracer.task(cfg.task)  # a task that does not exist fails before any encoding
    rankings, metadata = tracer.trace(queries, cfg.top_k, cfg.task, cfg.faiss, cfg.nprobe,
                                      cfg.report_recall)
    metadata["queries"] = str(cfg.queries)
    if cfg.out:
        write_with_metadata(cfg.out, rankings, metadata)
    return ScanResult(rankings, metadata)
