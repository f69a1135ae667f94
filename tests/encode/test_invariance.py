"""ψ does not depend on batch size, padding side, or sum-vs-mean loss."""

import torch
from test_capture import PASSAGES, QUERIES, random_state

from factrace.config import EncoderConfig
from factrace.data.batching import collate
from factrace.encode.capture import ProjectedGradients
from factrace.encode.encoder import Encoder, unit_normalize
from tiny import tiny_loaded


def _encoder(loaded, **kw):
    base = dict(dim=64, second_moment="factored", hessian="none", normalize=True)
    base.update(kw)
    return Encoder(loaded, EncoderConfig(**base), random_state(loaded.model))


def _examples(enc):
    return list(enc.tokenize_passages(PASSAGES)) + enc.tokenize_queries(QUERIES)


def test_batch_size_does_not_change_psi():
    loaded = tiny_loaded("llama")
    big = _encoder(loaded, batch_tokens=100_000)
    small = _encoder(loaded, batch_tokens=1)  # one example per batch
    ids_a, a = big.encode_passages(PASSAGES)
    ids_b, b = small.encode_passages(PASSAGES)
    assert ids_a == ids_b
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_padding_side_does_not_change_p():
    loaded = tiny_loaded("llama")
    enc = _encoder(loaded)
    examples = _examples(enc)
    capture = ProjectedGradients(loaded.model, enc.tracked, enc.blocks, 0, enc._corrections,
                                 enc.device)
    with capture:
        right = capture.project(collate(examples, 0, "right"))
        left = capture.project(collate(examples, 0, "left"))
    torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-6)


def test_sum_and_mean_loss_give_the_same_psi():
    loaded = tiny_loaded("gpt2")
    _, s = _encoder(loaded, loss_reduction="sum").encode_queries(QUERIES)
    _, m = _encoder(loaded, loss_reduction="mean").encode_queries(QUERIES)
    torch.testing.assert_close(s, m, rtol=1e-4, atol=1e-6)
    # …while the raw projections differ by the per-example token counts (the test can fail)
    enc = _encoder(loaded, loss_reduction="mean")
    raw = torch.cat([p for _, p in enc.project(enc.tokenize_queries(QUERIES))])
    assert not torch.allclose(unit_normalize(raw), raw)


def test_psi_is_unit_norm_and_grad_dot_is_not():
    loaded = tiny_loaded("llama")
    _, psi = _encoder(loaded).encode_passages(PASSAGES)
    torch.testing.assert_close(psi.norm(dim=1), torch.ones(len(psi)))
    _, raw = _encoder(loaded, normalize=False).encode_passages(PASSAGES)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(len(raw)))
