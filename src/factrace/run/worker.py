"""The per-shard work that every engine runs: one encoder, its fitted state, and shard tasks.

A :class:`ShardWorker` holds one model replica. Engines differ only in where workers live (in
this process, or as Ray actors) — the functions they run, and the order in which partial results
are merged, are the same, so every engine gives the same results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from factrace.config import EncoderConfig
from factrace.data.corpus import iter_corpus
from factrace.data.records import Passage, Query
from factrace.encode.encoder import Encoder
from factrace.encode.hessian import RAccumulator
from factrace.encode.second_moment import SquaredGradientSums
from factrace.encode.state import EncoderState
from factrace.encode.whitening import TaskScorer, TrainBasis
from factrace.run.process import tune_process
from factrace.search.topk import TopK, exact_topk

# Windows of one passage share its row's block of positions in the top-k tie order.
POSITIONS_PER_ROW = 1 << 16


@dataclass(frozen=True)
class EncoderSpec:
    """Everything a worker needs to build the same encoder anywhere."""

    model: str
    optimizer_state: str | None
    config: EncoderConfig

    def load(self) -> Encoder:
        return Encoder.load(self.model, self.optimizer_state, self.config)


def encode_rows(encoder: Encoder, corpus: str, start: int, stop: int
                ) -> tuple[list[str], np.ndarray]:
    """Store rows of corpus rows ``[start, stop)`` as float16 (how stores keep them)."""
    ids, rows = encoder.passage_rows(iter_corpus(corpus, start=start, stop=stop))
    if not ids:
        return [], np.zeros((0, encoder.dim), np.float16)
    return ids, rows.half().numpy()  # torch rounds as numpy does, vectorised


class ShardWorker:
    """One model replica and the tasks of a pipeline."""

    def __init__(self, spec: EncoderSpec, threads: int | None = None,
                 tune_process_settings: bool = False):
        if tune_process_settings:  # a process of its own (a Ray actor): factrace.run.process
            tune_process()
        if threads:
            torch.set_num_threads(threads)
        self.encoder = spec.load()

    # fitted state, set by the driver ------------------------------------------------------
    def squared_gradients(self, passages: list[Passage]) -> SquaredGradientSums:
        return self.encoder.squared_gradient_sums(self.encoder.tokenize_passages(passages))

    def set_second_moment(self, sums: SquaredGradientSums) -> None:
        self.encoder.set_estimated_second_moment(sums)

    def hessian_partial(self, passages: list[Passage] | None = None,
                        queries: list[Query] | None = None) -> RAccumulator:
        enc = self.encoder
        examples = enc.tokenize_queries(queries) if queries is not None else \
            enc.tokenize_passages(passages)
        return enc.accumulate(examples)

    def hessian_rows(self, passages: list[Passage]
                     ) -> tuple[RAccumulator, list[str], torch.Tensor]:
        """R_train's partial sum over ``passages`` and their projections (examples in input
        order), for a corpus pass that reuses them."""
        enc = self.encoder
        examples = list(enc.tokenize_passages(passages))
        acc = RAccumulator(enc.hessian_spans())
        ids, parts = [], []
        for batch_ids, p in enc.project(examples):
            acc.add(p)
            ids.extend(batch_ids)
            parts.append(p.cpu())
        order = [e.id for e in examples]
        if not parts:
            return acc, [], torch.empty(0, enc.dim)
        position = {i: n for n, i in enumerate(ids)}
        return acc, order, torch.cat(parts)[[position[i] for i in order]]

    def set_basis(self, basis: TrainBasis) -> None:
        self.encoder.basis = basis

    # encoding tasks -------------------------------------------------------------------------
    def set_state(self, state: EncoderState) -> None:
        self.encoder.set_state(state)

    def encode_rows(self, corpus: str, start: int, stop: int) -> tuple[list[str], np.ndarray]:
        return encode_rows(self.encoder, corpus, start, stop)

    def scan_rows(self, corpus: str, start: int, stop: int, scorer: TaskScorer,
                  k: int, keep_scores: bool = False) -> TopK:
        """Top-k/bottom-k of rows ``[start, stop)`` against the queries: a partial to merge
        (with every score when ``keep_scores``)."""
        ids, rows = self.encode_rows(corpus, start, stop)
        return exact_topk(scorer, [(ids, rows)] if ids else [], k,
                          row_offset=start * POSITIONS_PER_ROW, keep_scores=keep_scores)

