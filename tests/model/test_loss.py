"""The per-example loss against a token-by-token reference in float64."""

import math

import pytest
import torch

from factrace.model.loss import per_example_loss, token_logprobs


def _reference_logprobs(logits, ids):
    out = torch.zeros(ids.shape, dtype=torch.float64)
    for b in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            row = logits[b, t - 1].double()
            out[b, t] = row[ids[b, t]] - math.log(row.exp().sum())
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logprobs_match_reference(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 7, 11, generator=g) * 3).to(dtype)
    ids = torch.randint(0, 11, (3, 7), generator=g)
    got = token_logprobs(logits, ids)
    assert got.dtype == torch.float32 and got.shape == ids.shape
    assert torch.all(got[:, 0] == 0)
    torch.testing.assert_close(got.double(), _reference_logprobs(logits.float(), ids),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_per_example_loss_masks_and_reduces(reduction):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 5, generator=g, requires_grad=True)
    ids = torch.randint(0, 5, (2, 6), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.float32)
    ref = -(_reference_logprobs(logits.detach(), ids) * mask).sum(1)
    if reduction == "mean":
        ref = ref / mask.sum(1)
    loss = per_example_loss(logits, ids, mask, reduction)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    # the gradient reaches only the positions that predict a masked token
    loss.sum().backward()
    predicts_masked = torch.zeros(2, 6, dtype=torch.bool)
    predicts_masked[:, :-1] = mask[:, 1:] > 0
    assert torch.all(logits.grad[~predicts_masked] == 0)
    assert torch.all(logits.grad[predicts_masked].abs().sum(-1) > 0)
