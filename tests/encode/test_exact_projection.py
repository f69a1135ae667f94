"""``projection="exact"``: ψ from the whole corrected per-example gradient, against autograd."""

import pytest
import torch
from test_capture import PASSAGES, QUERIES, correction_fn, random_state, rel_err

from factrace.config import EncoderConfig
from factrace.encode.encoder import Encoder
from factrace.errors import FactraceError
from reference import autograd_gradients
from tiny import tiny_loaded


def reference_gradient(enc, example, correct) -> torch.Tensor:
    """The corrected gradients of every tracked module, flattened and concatenated in order."""
    grads = autograd_gradients(enc.loaded.model, example, enc.tracked)
    parts = [correct(tm.name, grads[tm.name]) if correct else grads[tm.name] for tm in enc.tracked]
    return torch.cat([g.reshape(-1) for g in parts])


@pytest.mark.parametrize("arch", ["llama", "gpt2", "mixtral"])
@pytest.mark.parametrize("mode", ["factored", "exact", "none"])
def test_exact_projection_is_the_corrected_gradient(arch, mode):
    loaded = tiny_loaded(arch)
    state = random_state(loaded.model)
    config = EncoderConfig(projection="exact", second_moment=mode, hessian="none",
                           normalize=False, batch_tokens=10_000)
    enc = Encoder(loaded, config, state if mode != "none" else None)
    assert enc.dim == sum(tm.d_out * tm.d_in for tm in enc.tracked)
    correct = correction_fn(enc, state, mode)
    examples = list(enc.tokenize_passages(PASSAGES)) + enc.tokenize_queries(QUERIES)
    got = {}
    for batch_ids, p in enc.project(examples):
        assert p.shape[1] == enc.dim
        got.update(zip(batch_ids, p.double(), strict=True))
    for example in examples:
        want = reference_gradient(enc, example, correct)
        assert rel_err(got[example.id], want) < 1e-4, (arch, mode, example.id)


def test_exact_scores_are_gradient_cosines():
    loaded = tiny_loaded("llama")
    state = random_state(loaded.model)
    enc = Encoder(loaded, EncoderConfig(projection="exact", hessian="none"), state)
    _, psi = enc.encode_passages(PASSAGES)
    _, psi_q = enc.encode_queries(QUERIES)
    correct = correction_fn(enc, state, "factored")
    g = torch.stack([reference_gradient(enc, e, correct)
                     for e in list(enc.tokenize_passages(PASSAGES))])
    gq = torch.stack([reference_gradient(enc, e, correct) for e in enc.tokenize_queries(QUERIES)])
    want = torch.nn.functional.normalize(gq, dim=1) @ torch.nn.functional.normalize(g, dim=1).T
    assert torch.allclose((psi_q @ psi.T).double(), want, atol=1e-5)


@pytest.mark.parametrize("options", [dict(hessian="mixed"), dict(hessian="train"),
                                     dict(hessian="none", dim=64)])
def test_exact_projection_refuses_r_and_dim(options):
    with pytest.raises(FactraceError, match="--projection exact"):
        EncoderConfig(projection="exact", **options)
