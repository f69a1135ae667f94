"""The Encoder: training passages and queries → TrackStar encodings ψ(z).

Stages, in the order of docs/design.md § "The method": gradient capture (hooks) → optimizer
correction → projection (:class:`ProjectedGradients` does these three in one backward) →
R_train's basis and the query-time R (:class:`~factrace.encode.whitening.TaskWhitening`) → unit
norm.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch

from factrace.config import EncoderConfig
from factrace.data.batching import Batch, token_budget_batches
from factrace.data.records import Passage, Query
from factrace.data.tokenize import TokenizedExample, tokenize_passages, tokenize_queries
from factrace.encode.budget import TokenBudget
from factrace.encode.capture import GradientSquares, ProjectedGradients
from factrace.encode.hessian import RAccumulator
from factrace.encode.projection import CPU_MAX_BLOCK, exact_blocks, plan_blocks
from factrace.encode.second_moment import SquaredGradientSums, corrections_from_state
from factrace.encode.state import EncoderState
from factrace.encode.whitening import TaskWhitening, TrainBasis
from factrace.errors import FactraceError, FactraceWarning
from factrace.model.load import (
    LoadedModel,
    file_fingerprint,
    load_model,
    model_fingerprint,
    pick_device,
    pick_dtype,
    tokenizer_fingerprint,
)
from factrace.model.modules import Coverage, coverage, discover
from factrace.model.optimizer_state import OptimizerState, load_optimizer_state

# Global R up to this dimension under hessian_structure="auto" (a float64 d × d is 512 MiB here).
AUTO_GLOBAL_MAX_DIM = 8192
# Examples buffered and sorted by length before batching.
SORT_WINDOW = 2048
_OUT_OF_MEMORY = object()
T = TypeVar("T")
# models whose untraced in-block weights were already warned about (once per model and process)
_WARNED: weakref.WeakSet = weakref.WeakSet()


def unit_normalize(p: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    return p / p.norm(dim=1, keepdim=True).clamp(min=1e-30)


class Encoder:
    """Turns examples into encodings with one model, one optimizer state and one configuration.

    Typical use::

        enc = Encoder.load("model_dir", "model_dir/optimizer.pt")
        enc.fit_hessian(train_passages, queries)    # R_train, R_eval → R^{-1/2}
        ids, psi = enc.encode_passages(passages)    # [n, d], unit norm
    """

    def __init__(self, loaded: LoadedModel, config: EncoderConfig | None = None,
                 optimizer_state: OptimizerState | None = None):
        self.loaded = loaded
        self.config = config or EncoderConfig()
        self.device = loaded.device
        self.tracked = discover(loaded.model, self.config.include, self.config.exclude,
                                self.config.only)
        #: which parameters are traced and which are not, by kind (in every output's metadata)
        self.coverage: Coverage = coverage(loaded.model, self.tracked)
        if self.coverage.warning() and loaded.model not in _WARNED:
            _WARNED.add(loaded.model)
            warnings.warn(self.coverage.warning(), FactraceWarning, stacklevel=2)
        if self.config.projection == "exact":
            self.blocks = exact_blocks(self.tracked)
            self.dim = sum(b.size for b in self.blocks)
        else:
            c = self.config
            self.blocks = plan_blocks(self.tracked, c.dim, c.layout, c.layer_groups, c.aspect,
                                      target=1 << 16,
                                      max_block=None if self.device.type == "cuda" else CPU_MAX_BLOCK)
            self.dim = sum(b.size for b in self.blocks)
        self.optimizer_state = optimizer_state
        self.second_moment_note = self.config.second_moment
        self._corrections = None
        if self.config.second_moment != "estimate":
            self._corrections = corrections_from_state(
                self.tracked, optimizer_state, self.config.second_moment, self.config.epsilon)
        #: R of the explicit encodings (:meth:`fit_hessian`)
        self.whitening: TaskWhitening | None = None
        # R_train's eigenbasis, which stores and scans score in (query-time R); fitted by
        # fit_basis, or the identity without R
        self.basis: TrainBasis | None = None
        if self.config.hessian == "none":
            self.basis = TrainBasis.identity(self.dim)
        self.max_length = self.config.max_length or loaded.max_length
        # one token budget per pass: the V estimate, R and the encodings take different
        # memory per token (encode/budget.py)
        self.budgets: dict[str, TokenBudget] = {}
        #: called with the ids of every batch projected (progress reporting)
        self.on_batch: Callable[[list[str]], None] | None = None
        # Shapes vary batch by batch: compile once for dynamic shapes.
        self.forward = (torch.compile(loaded.model, dynamic=True) if self.config.compile
                        else loaded.model)

    @classmethod
    def load(cls, model_dir: str | os.PathLike, optimizer_state: str | os.PathLike | None = None,
             config: EncoderConfig | None = None) -> Encoder:
        """Load a model directory (and optimizer state file) for ``config``."""
        config = config or EncoderConfig()
        device = pick_device(config.device)
        loaded = load_model(model_dir, device, pick_dtype(config.dtype, device))
        state = None
        if optimizer_state is not None and config.second_moment not in ("none", "estimate"):
            state = load_optimizer_state(optimizer_state, loaded.model)
        return cls(loaded, config, state)

    # tokenisation ------------------------------------------------------------------------
    def tokenize_passages(self, passages: Iterable[Passage]) -> Iterator[TokenizedExample]:
        return tokenize_passages(self.loaded.tokenizer, passages, self.max_length,
                                 self.config.overflow)

    def tokenize_queries(self, queries: Iterable[Query]) -> list[TokenizedExample]:
        return tokenize_queries(self.loaded.tokenizer, queries, self.max_length)

    def budget(self, kind: str = "encode") -> TokenBudget:
        """The token budget of one pass (``estimate`` or ``encode``)."""
        if kind not in self.budgets:
            self.budgets[kind] = TokenBudget(self.device, self.config.batch_tokens)
        return self.budgets[kind]

    def budget_report(self) -> dict:
        """Each pass's token budget as it stands (after a pass: where it adapted to), with the
        largest bytes per padded token measured and the largest peak a batch reached as a share
        of the memory usable when it began (0 when not measured)."""
        return {kind: {"tokens": b.tokens, "adaptive": b.adaptive,
                       "bytes_per_token": round(b.bytes_per_token),
                       "peak_share": round(b.peak_share, 3)}
                for kind, b in self.budgets.items()}

    def _batches(self, examples: Iterable[TokenizedExample], kind: str = "encode"):
        # Sorting windows of examples by length cuts padding; ψ does not depend on the batching,
        # and every batch carries its ids, so outputs come in length order within a window.
        for batch in token_budget_batches(examples, self.budget(kind), self.loaded.pad_id,
                                          sort_window=SORT_WINDOW):
            yield batch.to(self.device)

    def _split_on_oom(self, batch: Batch, step: Callable[[Batch], T],
                      kind: str = "encode") -> Iterator[tuple[Batch, T]]:
        """``step(batch)``, measured for the pass's token budget; a batch that runs out of
        device memory is split in two (and the budget lowered) until every part fits."""
        budget = self.budget(kind)
        tokens = batch.input_ids.numel()
        if len(batch.ids) == 1 and budget.fitting is not None and tokens > budget.fitting:
            # a CPU cannot split a batch that the kernel kills: refuse it before it runs
            raise FactraceError(
                f"{batch.ids[0]} ({tokens} tokens) needs about "
                f"{tokens * budget.bytes_per_token / 2**30:.1f} GiB, more than the memory "
                f"available allows ({budget.fitting} tokens); lower --max-length or free memory")
        try:
            with budget.measure(tokens):
                result = step(batch)
        except torch.OutOfMemoryError:
            result = _OUT_OF_MEMORY  # leave the except block: its traceback holds the tensors
        if result is not _OUT_OF_MEMORY:
            yield batch, result
            return
        if len(batch.ids) == 1:
            raise FactraceError(
                f"{batch.ids[0]} ({batch.input_ids.shape[1]} tokens) does not fit in "
                f"{self.device} memory even alone; lower --max-length or use --dtype bfloat16")
        budget.shrink(batch.input_ids.numel())
        for half in batch.split():
            yield from self._split_on_oom(half, step, kind)

    # optimizer correction --------------------------------------------------------------------
    def squared_gradient_sums(self, examples: Iterable[TokenizedExample]) -> SquaredGradientSums:
        """Row/column sums of per-example squared gradients over ``examples`` (a partial sum:
        merge several with :func:`merge_squared_sums`)."""
        collector = GradientSquares(self.loaded.model, self.tracked, self.forward)
        with collector:
            for batch in self._batches(examples, "estimate"):
                for _ in self._split_on_oom(batch, lambda b: collector.add_batch(
                        b, self.config.loss_reduction), "estimate"):
                    pass
        return collector.sums

    def set_estimated_second_moment(self, sums: SquaredGradientSums) -> None:
        """``estimate`` mode: use V estimated from ``sums`` (recorded as such everywhere)."""
        self._corrections = sums.corrections(self.tracked, self.config.epsilon)
        n = max(sums.examples.values(), default=0)
        self.second_moment_note = f"estimate (from {n} training examples; no optimizer state)"

    def fit_second_moment(self, examples: Iterable[TokenizedExample]) -> None:
        """``estimate`` mode: V from mean squared per-example gradients over ``examples``."""
        self.set_estimated_second_moment(self.squared_gradient_sums(examples))

    # projection ----------------------------------------------------------------------------
    def project(self, examples: Iterable[TokenizedExample]) -> Iterator[tuple[list[str], torch.Tensor]]:
        """Corrected, projected gradients ``p(z)`` per batch: ``(ids, [batch, d])`` float32 on
        the encoder's device, before R^{-1/2} and normalisation. Examples come back sorted by
        length within windows of ``SORT_WINDOW``: use the ids."""
        if self._corrections is None:
            raise RuntimeError("estimate mode: call fit_second_moment() before projecting")
        capture = ProjectedGradients(self.loaded.model, self.tracked, self.blocks,
                                     self.config.seed, self._corrections, self.device,
                                     forward=self.forward,
                                     projected=self.config.projection != "exact")
        with capture:
            for batch in self._batches(examples):
                for part, p in self._split_on_oom(
                        batch, lambda b: capture.project(b, self.config.loss_reduction)):
                    if self.on_batch is not None:
                        self.on_batch(part.ids)
                    yield part.ids, p.detach()

    # Hessian ------------------------------------------------------------------------------
    def hessian_spans(self) -> list[tuple[int, int]]:
        structure = self.config.hessian_structure
        if structure == "auto":
            structure = "global" if self.dim <= AUTO_GLOBAL_MAX_DIM else "block"
        if structure == "global":
            return [(0, self.dim)]
        return [(b.offset, b.size) for b in self.blocks]

    def accumulate(self, examples: Iterable[TokenizedExample]) -> RAccumulator:
        """``(1/N) Σ p pᵀ`` over ``examples`` (a partial sum: merge several with ``merge``)."""
        acc = RAccumulator(self.hessian_spans())
        for _, p in self.project(examples):
            acc.add(p)
        return acc

    def fit_hessian(self, train: Iterable[Passage] | None, queries: Iterable[Query] | None
                    ) -> TaskWhitening:
        """R for the explicit encodings of :meth:`encode_passages` / :meth:`encode_queries`:
        R_train's basis from ``train`` (passages), R_eval from ``queries`` — the same basis and
        query-time R that stores, scans and traces use, so ``psi_q @ psi.T`` are their scores."""
        c = self.config
        if c.hessian == "none":
            self.whitening = self.task(None)
            return self.whitening
        if train is None:
            raise FactraceError(f"--hessian {c.hessian} needs training passages for R_train")
        self.fit_basis(self.accumulate(self.tokenize_passages(train)))
        y = None
        if c.hessian == "mixed":
            if queries is None:
                raise FactraceError("--hessian mixed needs queries for R_eval")
            y = self.query_vectors(queries)[1]
        self.whitening = self.task(y)
        return self.whitening

    # query-time R (what stores and scans use) ------------------------------------------------
    def fit_basis(self, r_train: RAccumulator) -> TrainBasis:
        """R_train's eigenbasis (for ``train`` / ``mixed``; the identity without R)."""
        if self.config.hessian != "none":
            self.basis = TrainBasis.fit(r_train)
        return self.basis

    def _basis(self) -> TrainBasis:
        if self.basis is None:
            raise RuntimeError(f"--hessian {self.config.hessian}: call fit_basis() first")
        return self.basis

    def rows(self, examples: Iterable[TokenizedExample]) -> Iterator[tuple[list[str], torch.Tensor]]:
        """What a store keeps per batch: ``p`` in R_train's eigenbasis, unit norm unless the
        configuration says not (``(ids, [batch, d])``; score them with :meth:`task`)."""
        basis = self._basis()
        for ids, p in self.project(examples):
            yield ids, basis.rows(p) if self.config.normalize else basis.rotate(p)

    def passage_rows(self, passages: Iterable[Passage]) -> tuple[list[str], torch.Tensor]:
        """:meth:`rows` of all passages at once, in input order, on the CPU."""
        examples = list(self.tokenize_passages(passages))
        return _collect(self.rows(examples), [e.id for e in examples])

    def query_vectors(self, queries: Iterable[Query]) -> tuple[list[str], torch.Tensor]:
        """Queries' ``p`` in R_train's eigenbasis, in input order (``[n, d]`` on the CPU)."""
        return self.example_vectors(self.tokenize_queries(queries))

    def example_vectors(self, examples: list[TokenizedExample]) -> tuple[list[str], torch.Tensor]:
        """Tokenised examples' ``p`` in R_train's eigenbasis, in input order (``[n, d]`` on the
        CPU; ids must be unique)."""
        basis = self._basis()
        return _collect(((ids, basis.rotate(p)) for ids, p in self.project(examples)),
                        [e.id for e in examples])

    def task(self, y: torch.Tensor | None) -> TaskWhitening:
        """R⁻¹ of the configured mode with R_eval from query vectors ``y`` (``[T, d]``)."""
        c = self.config
        return TaskWhitening.fit(self._basis(), c.hessian, y, c.damping, c.lambda_, c.lambda_k,
                                 c.normalize)

    def eval_examples_needed(self) -> int:
        """Query examples an R_eval needs to stand for a task: its component k (where
        ``--lambda auto`` compares the spectra), plus one."""
        c = self.config
        if c.hessian != "mixed":
            return 0
        if c.lambda_k is not None:
            return c.lambda_k + 1
        return min(self.dim // 64, max(self._basis().n_train - 1, 0)) + 1

    def state(self) -> EncoderState:
        """The fitted state, as one value (saved with stores)."""
        from importlib.metadata import version

        estimated = self.config.second_moment == "estimate"
        return EncoderState(self._basis(), self.second_moment_note,
                            self._corrections if estimated else None,
                            {"factrace": version("factrace"), "dim": self.dim,
                             "dtype": str(next(self.loaded.model.parameters()).dtype),
                             "device": str(self.device)})

    def set_state(self, state: EncoderState) -> None:
        if state.basis.dim != self.dim:
            raise FactraceError(f"the saved encoder state has dimension {state.basis.dim}, "
                                f"this encoder {self.dim}")
        self.basis = state.basis
        if state.corrections is not None:
            self._corrections = state.corrections
        self.second_moment_note = state.second_moment_note

    # encodings ------------------------------------------------------------------------------
    def whiten_and_normalize(self, p: torch.Tensor) -> torch.Tensor:
        """R^{-1/2}, then unit norm (unless the configuration says not): ``[batch, d]``."""
        if self.whitening is None:
            if self.config.hessian != "none":
                raise RuntimeError(f"--hessian {self.config.hessian}: call fit_hessian() first")
            self.whitening = self.task(None)
        psi = self.whitening.factor(self._basis().rotate(p))
        return unit_normalize(psi) if self.config.normalize else psi

    def encode(self, examples: Iterable[TokenizedExample]) -> Iterator[tuple[list[str], torch.Tensor]]:
        """ψ per batch: ``(ids, [batch, d])`` float32 on the encoder's device."""
        for ids, p in self.project(examples):
            yield ids, self.whiten_and_normalize(p)

    def encode_passages(self, passages: Iterable[Passage]) -> tuple[list[str], torch.Tensor]:
        """All passages at once, in input order: ``(ids, [n, d])`` on the CPU (windows get
        ``<doc>#<n>`` ids)."""
        examples = list(self.tokenize_passages(passages))
        return _collect(self.encode(examples), [e.id for e in examples])

    def encode_queries(self, queries: Iterable[Query]) -> tuple[list[str], torch.Tensor]:
        """All queries at once, in input order: ``(ids, [n, d])`` on the CPU."""
        examples = self.tokenize_queries(queries)
        return _collect(self.encode(examples), [e.id for e in examples])

    # provenance ----------------------------------------------------------------------------
    def fingerprints(self) -> dict[str, str]:
        """What an encoding depends on, part by part (a store refuses any that differ)."""
        state = "none"
        if self.config.second_moment == "estimate":
            state = self.second_moment_note
        elif self.optimizer_state is not None:
            source = self.optimizer_state.source
            state = file_fingerprint(source) if os.path.isfile(source) else source
        return {
            "model": model_fingerprint(self.loaded),
            "tokenizer": tokenizer_fingerprint(self.loaded.tokenizer),
            "encoder": self.config.fingerprint(),
            "seed": str(self.config.seed),
            "dim": str(self.dim),
            "second_moment": f"{self.config.second_moment}:{state}",
            "hessian": self.basis_fingerprint(),
        }

    def basis_fingerprint(self) -> str:
        """Identity of R_train's eigenbasis (the stored rows are written in it)."""
        if self.basis is None:
            return "unfitted"
        if self.basis.is_identity:
            return "none"
        h = hashlib.sha256(f"{self.basis.spans}:{self.basis.n_train}".encode())
        for v in self.basis.values:
            h.update(np.ascontiguousarray(v, dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    def metadata(self, task: TaskWhitening | None = None) -> dict:
        """A human-readable record of how encodings were made, saved with every output
        (``task``: the query-time R the scores used)."""
        return {
            "config": self.config.to_dict(),
            "dim": self.dim,
            "projection": self.config.projection,
            "blocks": [{"name": b.name, "rows": b.rows, "cols": b.cols, "modules": len(b.modules)}
                       for b in self.blocks],
            "tracked_modules": len(self.tracked),
            "coverage": self.coverage.to_dict(),
            "second_moment": self.second_moment_note,
            "whitening": task.describe() if task is not None else (
                self.whitening.describe() if self.whitening else None),
            "device": str(self.device),
            "dtype": str(next(self.loaded.model.parameters()).dtype).removeprefix("torch."),
        }


def _collect(batches, order: list[str]) -> tuple[list[str], torch.Tensor]:
    """Concatenate batches and put the rows back in ``order`` (the examples' input order)."""
    ids, parts = [], []
    for batch_ids, psi in batches:
        ids.extend(batch_ids)
        parts.append(psi.cpu())
    if not parts:
        return [], torch.empty(0, 0)
    position = {i: n for n, i in enumerate(ids)}
    return list(order), torch.cat(parts)[[position[i] for i in order]]
