"""Tail-patch: the causal influence of retrieved passages on a fact (docs/design.md §
"Influence: tail-patch").

For each query and each of its top-k passages separately, start from the final weights and the
final optimizer state, take ONE AdamW step on that passage's training loss, and measure

    Δ = p_after(target | prompt) − p_before(target | prompt)

with ``p`` the product of the target tokens' probabilities. Δ is averaged over the k passages of
a query, then over queries, and reported as a mean with its standard error.

Choices, stated once:

- The step's loss is the passage's *mean* token cross-entropy, as a pretraining step on a batch of
  that one passage computes it. With Adam's restored moments the scale of the gradient matters,
  so a summed loss would take a different step.
- The optimizer is AdamW with the hyper-parameters of the saved groups (betas, eps, weight decay,
  amsgrad, ...) and, unless ``lr`` is given, their learning rate, which is the final learning
  rate of training. Weight decay therefore moves every step a little, whatever the passage.
- The model stays in eval mode (no dropout) for the step and the measurements.
- Weights and optimizer state are snapshotted once (tensor copies, never a model copy) and copied
  back in place after every step, so each step starts from exactly the same point and the model
  and optimizer are bit-for-bit as they were when :func:`tail_patch` returns.
- Memory: the snapshot holds one more copy of the weights and of both Adam moments.
- Precision: load the model in float32. In bfloat16 a single step at a final learning rate is
  mostly rounded away, so Δ measures rounding; a warning says so.
- A windowed passage id ``<doc>#<n>`` trains on that window of ``<doc>``'s text, cut the way
  :func:`~factrace.data.tokenize.tokenize_passage` cuts it; a plain id trains on the passage
  truncated to the model's context.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch

from factrace.data.batching import Batch, collate
from factrace.data.records import Passage, Query
from factrace.data.tokenize import TokenizedExample, tokenize_passage, tokenize_query
from factrace.errors import FactraceError
from factrace.evaluate.metrics import RankingsLike, bare_id, mean_stderr, ranked_ids
from factrace.model.load import LoadedModel
from factrace.model.loss import forward_logits, per_example_loss, target_logprob
from factrace.model.optimizer_state import restore_adamw

PassageTexts = Mapping[str, str] | Mapping[str, Passage] | Callable[[str], str]


@dataclass
class TailPatchResult:
    """Tail-patch scores of one method's rankings.

    Attributes:
        mean: mean over queries of the per-query mean Δ.
        stderr: its standard error (``std(ddof=1) / sqrt(n)``; 0 for fewer than two queries).
        per_query: query id → mean Δ over its top-k passages.
        per_passage: query id → ``[(passage id, Δ), ...]`` in ranking order.
        p_before: query id → ``p(target | prompt)`` at the final checkpoint.
        seconds_per_query: wall-clock seconds per query, averaged.
        lr: the learning rate of the step.
        step: which step was taken: ``"AdamW"`` (from the saved optimizer state) or ``"SGD"``
            (no optimizer state; one plain gradient step of ``lr``).
        k: the number of passages patched per query (fewer when a ranking is shorter).
    """

    mean: float
    stderr: float
    per_query: dict[str, float]
    per_passage: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    p_before: dict[str, float] = field(default_factory=dict)
    seconds_per_query: float = 0.0
    lr: float = 0.0
    k: int = 10
    step: str = "AdamW"

    def describe(self) -> str:
        """The step in words, for reports."""
        source = "the saved optimizer state" if self.step == "AdamW" else "no optimizer state"
        return f"one {self.step} step, learning rate {self.lr:g} ({source})"

    @property
    def n_queries(self) -> int:
        return len(self.per_query)

    def to_dict(self) -> dict:
        """A JSON-ready dictionary of every field."""
        out = asdict(self)
        out["per_passage"] = {q: [[d, v] for d, v in pairs] for q, pairs in self.per_passage.items()}
        return out


class TrainingState:
    """Snapshot of the weights and AdamW state, restored in place (no model copy).

    Holds one clone of every parameter and of every per-parameter optimizer tensor (moments and
    step); :meth:`restore` copies them back and drops any state the step created.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.params = snapshot_params(optimizer)
        self.lrs = [g["lr"] for g in optimizer.param_groups]
        with torch.no_grad():
            self.weights = [p.detach().clone() for p in self.params]
            self.state = {
                p: {key: _clone(value) for key, value in optimizer.state[p].items()}
                for p in self.params
                if p in optimizer.state
            }

    @torch.no_grad()
    def restore(self) -> None:
        """Put weights, optimizer state and learning rates back as they were."""
        for p, saved in zip(self.params, self.weights, strict=True):
            p.copy_(saved)
            p.grad = None
        for p in self.params:
            if p not in self.state:
                self.optimizer.state.pop(p, None)
                continue
            live = self.optimizer.state[p]
            for key, saved in self.state[p].items():
                if isinstance(saved, torch.Tensor) and isinstance(live.get(key), torch.Tensor):
                    live[key].copy_(saved)
                else:
                    live[key] = _clone(saved)
            for key in set(live) - set(self.state[p]):
                del live[key]
        for group, lr in zip(self.optimizer.param_groups, self.lrs, strict=True):
            group["lr"] = lr


def snapshot_params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """Every parameter the optimizer updates, in group order."""
    return [p for g in optimizer.param_groups for p in g["params"]]


def _clone(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def passage_example(loaded: LoadedModel, doc_id: str, passages: PassageTexts) -> TokenizedExample:
    """The tokens the step trains on for passage ``doc_id`` (a window for ``<doc>#<n>``)."""
    text = lookup_text(passages, doc_id)
    if text is not None:
        return tokenize_passage(loaded.tokenizer, Passage(doc_id, text), loaded.max_length,
                                overflow="truncate")[0]
    bare = bare_id(doc_id)
    text = lookup_text(passages, bare) if bare != doc_id else None
    if text is None:
        raise FactraceError(f"tail-patch: no text for passage {doc_id!r}; pass the corpus the "
                            "rankings were made from")
    windows = tokenize_passage(loaded.tokenizer, Passage(bare, text), loaded.max_length)
    for window in windows:
        if window.id == doc_id:
            return window
    raise FactraceError(f"tail-patch: passage {bare!r} has {len(windows)} window(s) at context "
                        f"{loaded.max_length}, so {doc_id!r} does not exist")


def lookup_text(passages: PassageTexts, doc_id: str) -> str | None:
    """The text of passage ``doc_id`` from a mapping or a function, ``None`` if it has none."""
    if callable(passages) and not isinstance(passages, Mapping):
        try:
            value = passages(doc_id)
        except KeyError:
            return None
    else:
        value = passages.get(doc_id)
    return value.text if isinstance(value, Passage) else value


def training_step(loaded: LoadedModel, optimizer: torch.optim.Optimizer, batch: Batch) -> None:
    """One AdamW step on the mean token cross-entropy of ``batch`` (one passage), eval mode."""
    params = snapshot_params(optimizer)
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            logits = forward_logits(loaded.model, batch)
            loss = per_example_loss(logits, batch.input_ids, batch.loss_mask, "mean").mean()
            loss.backward()
        optimizer.step()
    finally:
        optimizer.zero_grad(set_to_none=True)
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def target_probability(loaded: LoadedModel, query_batch: Batch) -> float:
    """``p(target | prompt)``: the product of the target tokens' probabilities, as a float."""
    return math.exp(float(target_logprob(loaded.model, query_batch).double().item()))


def tail_patch(
    loaded: LoadedModel,
    optimizer_path: str | os.PathLike | None,
    queries: Sequence[Query],
    rankings: RankingsLike,
    passages: PassageTexts,
    k: int = 10,
    lr: float | None = None,
    n_queries: int | None = None,
    progress: bool = True,
) -> TailPatchResult:
    """Tail-patch scores of ``rankings`` (docs/design.md § "Influence: tail-patch").

    Args:
        loaded: the final checkpoint, in eval mode.
        optimizer_path: its AdamW state (a Hugging Face Trainer ``optimizer.pt`` or a torch
            ``state_dict``), read by :func:`~factrace.model.optimizer_state.restore_adamw`;
            ``None`` (no optimizer state saved): one plain SGD step of ``lr`` instead.
        queries: the queries, in file order.
        rankings: :class:`~factrace.data.io.Ranking` objects or query id → passage ids, best first.
        passages: passage id → text (or :class:`Passage`), or a function that returns the text
            (or raises KeyError).
        k: passages patched per query (the top ``k`` of its ranking).
        lr: learning rate of the step; ``None`` keeps the saved groups' (final) learning rate.
        n_queries: evaluate only the first ``n_queries`` queries in file order.
        progress: show a progress bar.

    Returns:
        The mean Δ over queries and its standard error, with per-query and per-passage values.
        A query whose ranking is empty scores 0. On return (or on an error) the model's weights
        are exactly as they were.

    Raises:
        FactraceError: a selected query has no ranking, or a ranked passage has no text.
    """
    from tqdm.auto import tqdm

    if k < 1:
        raise ValueError("k must be at least 1")
    if optimizer_path is None and lr is None:
        raise FactraceError("tail-patch without optimizer state takes one SGD step: give its "
                            "learning rate (--lr), or the AdamW state (--optimizer-state)")
    if optimizer_path is not None and os.path.isdir(optimizer_path):
        # a checkpoint: the step needs the whole AdamW state the Trainer saved
        optimizer_path = os.path.join(optimizer_path, "optimizer.pt")
    if optimizer_path is not None and not os.path.isfile(optimizer_path):
        raise FactraceError(f"{optimizer_path}: optimizer state file not found; tail-patch "
                            "needs the AdamW state saved at the end of training (or, without "
                            "it, --lr for an SGD step)")
    ranked = ranked_ids(rankings)
    selected = list(queries)[:n_queries] if n_queries is not None else list(queries)
    absent = [q.id for q in selected if q.id not in ranked]
    if absent:
        raise FactraceError(f"tail-patch: no ranking for query {absent[0]!r} ({len(absent)} of "
                            f"{len(selected)} selected queries have none); rank every query or "
                            "lower n_queries")
    if optimizer_path is None:
        optimizer = torch.optim.SGD([p for p in loaded.model.parameters()], lr=lr)
    else:
        optimizer = restore_adamw(loaded.model, optimizer_path)
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    step_lr = float(optimizer.param_groups[0]["lr"])
    low = sorted({str(p.dtype) for p in snapshot_params(optimizer) if p.element_size() < 4})
    if low:
        warnings.warn(f"tail-patch on {', '.join(low)} weights: one small step is largely rounded "
                      "away; load the model in float32", stacklevel=2)
    loaded.model.eval()
    snapshot = TrainingState(optimizer)
    device = loaded.device
    result = TailPatchResult(0.0, 0.0, {}, lr=step_lr, k=k,
                             step="SGD" if optimizer_path is None else "AdamW")
    started = time.perf_counter()
    try:
        for query in tqdm(selected, desc="tail-patch", unit="query", disable=not progress):
            deltas = _patch_query(loaded, optimizer, snapshot, query, ranked[query.id][:k],
                                  passages, device, result)
            result.per_passage[query.id] = deltas
            result.per_query[query.id] = (
                math.fsum(d for _, d in deltas) / len(deltas) if deltas else 0.0
            )
    finally:
        snapshot.restore()
    elapsed = time.perf_counter() - started
    stats = mean_stderr(list(result.per_query.values()))
    result.mean, result.stderr = stats.mean, stats.stderr
    result.seconds_per_query = elapsed / len(selected) if selected else 0.0
    return result


def _patch_query(
    loaded: LoadedModel,
    optimizer: torch.optim.Optimizer,
    snapshot: TrainingState,
    query: Query,
    doc_ids: Iterable[str],
    passages: PassageTexts,
    device: torch.device,
    result: TailPatchResult,
) -> list[tuple[str, float]]:
    """Δ for each passage of one query; the model is restored after every step."""
    query_batch = collate([tokenize_query(loaded.tokenizer, query, loaded.max_length)],
                          loaded.pad_id).to(device)
    before = target_probability(loaded, query_batch)
    result.p_before[query.id] = before
    deltas = []
    for doc_id in doc_ids:
        example = passage_example(loaded, doc_id, passages)
        batch = collate([example], loaded.pad_id).to(device)
        training_step(loaded, optimizer, batch)
        after = target_probability(loaded, query_batch)
        snapshot.restore()
        deltas.append((doc_id, after - before))
    return deltas
