"""Padding and token-budget batching of variable-length examples."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from factrace.data.tokenize import TokenizedExample


@dataclass
class Batch:
    """Padded token batch.

    ``input_ids``, ``attention_mask``: ``[batch, tokens]`` (long); ``loss_mask``: ``[batch, tokens]``
    (bool, token j is a target, predicted from position j - 1). Padding has ``attention_mask = 0``
    and ``loss_mask = False``.
    """

    ids: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor

    def split(self) -> tuple[Batch, Batch]:
        """Two batches of the first and the last half of the rows (at least two rows)."""
        if len(self.ids) < 2:
            raise ValueError("a batch of one example cannot be split")
        h = len(self.ids) // 2
        return tuple(Batch(self.ids[rows], self.input_ids[rows], self.attention_mask[rows],
                           self.loss_mask[rows]) for rows in (slice(0, h), slice(h, None)))

    def to(self, device) -> Batch:
        return Batch(
            self.ids,
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            self.loss_mask.to(device, non_blocking=True),
        )


def collate(examples: list[TokenizedExample], pad_id: int, padding_side: str = "right") -> Batch:
    """Pad examples to the longest one, on the right (default) or the left."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', not {padding_side!r}")
    width = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    loss_mask = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, e in enumerate(examples):
        n = len(e)
        cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
        input_ids[row, cols] = torch.tensor(e.input_ids, dtype=torch.long)
        attention[row, cols] = 1
        loss_mask[row, cols] = torch.tensor(e.loss_mask, dtype=torch.bool)
    return Batch([e.id for e in examples], input_ids, attention, loss_mask)


def token_budget_batches(
    examples: Iterable[TokenizedExample],
    batch_tokens: int | Callable[[], int],
    pad_id: int,
    *,
    max_batch_size: int | None = None,
    sort_window: int = 0,
    padding_side: str = "right",
) -> Iterator[Batch]:
    """Group examples into batches whose padded size ``batch × longest`` stays within
    ``batch_tokens`` (an example longer than the budget gets a batch of its own). A callable
    ``batch_tokens`` is asked again before every batch (a budget that adapts as batches run).

    ``sort_window > 0`` buffers that many examples and sorts them by length before batching, which
    cuts padding; the order of examples across batches then differs from the input order, so
    callers that need it keep the ids (every batch carries them).
    """
    budget = batch_tokens if callable(batch_tokens) else (lambda: batch_tokens)
    if budget() < 1:
        raise ValueError("batch_tokens must be positive")
    buffer: list[TokenizedExample] = []

    def flush(items: list[TokenizedExample]) -> Iterator[Batch]:
        if sort_window:
            items = sorted(items, key=len)
        group: list[TokenizedExample] = []
        longest = 0
        limit = budget()
        for e in items:
            new_longest = max(longest, len(e))
            full = max_batch_size is not None and len(group) >= max_batch_size
            if group and (new_longest * (len(group) + 1) > limit or full):
                yield collate(group, pad_id, padding_side)
                group, new_longest, limit = [], len(e), budget()
            group.append(e)
            longest = new_longest
        if group:
            yield collate(group, pad_id, padding_side)

    window = max(sort_window, 1) if sort_window else 0
    for e in examples:
        buffer.append(e)
        if window and len(buffer) >= window:
            yield from flush(buffer)
            buffer = []
        elif not window and len(buffer) >= 4096:
            # Without sorting, batches only depend on the order: flush all but the tail group.
            yield from flush(buffer)
            buffer = []
    if buffer:
        yield from flush(buffer)
