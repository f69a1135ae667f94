"""The per-example loss ``L(z) = Σ_t m_t · CE(logits_{t-1}, y_t)`` (docs/design.md § "Loss")."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each token given the tokens before it.

    ``logits``: ``[batch, tokens, vocab]``; returns ``[batch, tokens]`` with column 0 set to 0
    (the first token has no prediction).
    """
    # Position t predicts token t+1. Rolling the labels instead of slicing the logits keeps the
    # [batch, tokens, vocab] tensor whole (no copy forward, no zero-filled slice backward); the
    # last position's wrapped-around label is dropped below.
    batch, tokens = input_ids.shape
    labels = input_ids.roll(-1, dims=1)
    nll = F.cross_entropy(logits.reshape(batch * tokens, -1).float(), labels.reshape(-1),
                          reduction="none").view(batch, tokens)
    return F.pad(-nll[:, :-1], (1, 0))


def per_example_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor, reduction: str = "sum"
) -> torch.Tensor:
    """Masked cross-entropy per example, ``[batch]``: the sum over target tokens (``"sum"``) or
    their mean (``"mean"``)."""
    nll = -token_logprobs(logits, input_ids) * loss_mask
    total = nll.sum(dim=1)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / loss_mask.sum(dim=1).clamp(min=1)
    raise ValueError(f"reduction must be 'sum' or 'mean', not {reduction!r}")


def forward_logits(model, batch) -> torch.Tensor:
    """Logits ``[batch, tokens, vocab]`` of a padded :class:`~factrace.data.batching.Batch`.

    Position ids count real tokens only, so left- and right-padded batches give the same logits.
    """
    attention = batch.attention_mask
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    out = model(input_ids=batch.input_ids, attention_mask=attention, position_ids=positions,
                use_cache=False)
    return out.logits


@torch.no_grad()
def target_logprob(model, batch) -> torch.Tensor:
    """``log p(target | prompt)`` per example, ``[batch]``: the sum of the masked tokens'
    log-probabilities (``p`` is the product of the target tokens' probabilities)."""
    logits = forward_logits(model, batch)
    return (token_logprobs(logits, batch.input_ids) * batch.loss_mask).sum(dim=1)
