"""Fitting what the corpus pass needs: an estimated V (``estimate`` mode) and R_train's
eigenbasis (everything of R that does not depend on the queries; R_eval and λ are applied at
query time, :mod:`factrace.encode.whitening`).

R_train is estimated on training passages sampled evenly over the corpus. Work is split into fixed chunks whose partial sums are merged in chunk order, so every engine
and worker count gives the same R bit for bit.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from factrace.data.corpus import iter_corpus
from factrace.data.records import Passage
from factrace.encode.second_moment import merge_squared_sums
from factrace.run.progress import progress_bar, progress_step
from factrace.store.ids import passage_of

CHUNK = 64


def sample_passages(corpus: str, n_rows: int, n: int) -> list[Passage]:
    """``n`` passages at evenly spaced rows of the corpus (all of them when ``n ≥ n_rows``)."""
    if n >= n_rows:
        return list(iter_corpus(corpus))
    wanted = set(np.linspace(0, n_rows - 1, n).round().astype(int).tolist())
    return [p for i, p in enumerate(iter_corpus(corpus)) if i in wanted]


def _chunks(items: list, size: int = CHUNK) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


#: The R_train pass's projections are kept for the corpus pass when they cover the whole
#: corpus (it has at most ``--train-examples`` passages) and take at most this many bytes.
KEEP_BYTES = 1 << 30


@dataclass
class Kept:
    """Every corpus passage's projection, from the R_train pass: ``ids`` (examples, in corpus
    order), ``rows`` (the corpus row of each) and ``p`` ``[n, d]`` float32."""

    ids: list[str]
    rows: list[int]
    p: torch.Tensor

    def shards(self, encoder, ranges: list[tuple[int, int]]):
        """``(ids, float16 store rows)`` per corpus range, exactly as ``encode_rows`` gives."""
        rows = torch.tensor(self.rows)
        for start, stop in ranges:
            mask = (rows >= start) & (rows < stop)
            index = mask.nonzero().squeeze(1)
            stored = encoder.basis.rows(self.p[index]) if encoder.config.normalize \
                else encoder.basis.rotate(self.p[index])
            yield [self.ids[i] for i in index.tolist()], stored.half().numpy()


def fit(engine, corpus: str, n_rows: int, progress: bool = True) -> tuple[dict, Kept | None]:
    """Fit the engine's workers (V estimate, then R_train's eigenbasis); returns what was done
    and each step's wall time (``timings``), for records, and the R_train pass's projections
    when they cover the whole corpus (so the corpus pass need not encode it again:
    :class:`Kept`)."""
    cfg = engine.encoder.config
    timings: dict[str, float] = {}
    record: dict = {"timings": timings}
    needs_sample = cfg.second_moment == "estimate" or cfg.hessian != "none"
    sample = sample_passages(corpus, n_rows, max(cfg.train_examples, cfg.estimate_examples)) \
        if needs_sample else []
    n_estimate = min(cfg.estimate_examples, len(sample)) if cfg.second_moment == "estimate" \
        else 0
    n_train = min(cfg.train_examples, len(sample)) if cfg.hessian != "none" else 0
    steps = ([f"V from {n_estimate} passages (--estimate-examples)"] if n_estimate else []) + \
        ([f"R_train from {n_train} passages (--train-examples)"] if n_train else [])
    if steps and progress:
        # every step encodes its passages once more: say so before spending the time
        print(f"plan: {', '.join(steps)}, then the corpus pass over {n_rows} passages "
              f"({(n_estimate + n_train) / max(n_rows, 1):.2f} corpus passes before it)",
              file=sys.stderr, flush=True)
    if cfg.second_moment == "estimate":
        t = time.perf_counter()
        chunks = _chunks(sample[:cfg.estimate_examples])
        parts = list(progress_bar(engine.map("squared_gradients", [(c,) for c in chunks]),
                                  total=len(chunks), desc="estimating V", enabled=progress))
        engine.broadcast("set_second_moment", merge_squared_sums(parts))
        record["second_moment"] = engine.encoder.second_moment_note
        timings["estimate_s"] = time.perf_counter() - t
    if cfg.hessian == "none":
        return record, None
    train_chunks = _chunks(sample[:cfg.train_examples])
    keep = (n_train >= n_rows and getattr(engine, "name", "") == "local"
            and n_rows * engine.encoder.dim * 4 <= KEEP_BYTES)
    t = time.perf_counter()
    if keep:
        kept = Kept([], [], torch.empty(0))
        parts, row_of = [], {p.id: i for i, p in enumerate(sample)}
        accumulators = []
        for acc, ids, p in progress_bar(engine.map("hessian_rows", [(c,) for c in train_chunks]),
                                        total=len(train_chunks), desc="R_train",
                                        enabled=progress):
            accumulators.append(acc)
            kept.ids += ids
            kept.rows += [row_of[passage_of(i, row_of)[0]] for i in ids]
            parts.append(p)
        r_train = _merge(accumulators)
        kept.p = torch.cat(parts)
    else:
        kept = None
        r_train = _merge(progress_bar(
            engine.map("hessian_partial", [(c, None) for c in train_chunks]),
            total=len(train_chunks), desc="R_train", enabled=progress))
    seconds = timings["r_train_s"] = time.perf_counter() - t
    if progress and n_train:
        then = ("the corpus pass reuses these encodings" if kept is not None else
                f"the corpus pass should take about {seconds * n_rows / n_train:.0f} s")
        print(f"R_train: {n_train} passages in {seconds:.0f} s; {then}", file=sys.stderr,
              flush=True)
    t = time.perf_counter()
    with progress_step(f"R_train's eigenbasis (d = {engine.encoder.dim})", progress):
        basis = engine.encoder.fit_basis(r_train)
        engine.broadcast("set_basis", basis)
    timings["basis_s"] = time.perf_counter() - t
    record["train_examples"] = basis.n_train
    return record, kept


def _merge(parts):
    total = None
    for part in parts:
        total = part if total is None else total.merge(part)
    return total
