"""`estimate` mode: V from mean squared per-example gradients, with no optimizer state."""

import torch
from test_capture import PASSAGES

from factrace.config import EncoderConfig
from factrace.encode.encoder import Encoder
from factrace.encode.second_moment import factored_from_sums
from reference import autograd_gradient
from tiny import tiny_loaded


def test_estimate_runs_without_state_and_says_so():
    loaded = tiny_loaded("llama")
    enc = Encoder(loaded, EncoderConfig(dim=64, second_moment="estimate", hessian="none"))
    enc.fit_second_moment(enc.tokenize_passages(PASSAGES))
    ids, psi = enc.encode_passages(PASSAGES)
    assert psi.shape == (3, 64) and torch.isfinite(psi).all()
    assert "estimate" in enc.metadata()["second_moment"]
    assert "no optimizer state" in enc.metadata()["second_moment"]
    assert "estimate" in enc.fingerprints()["second_moment"]


def test_estimated_sums_match_autograd_squares():
    loaded = tiny_loaded("gpt2")
    enc = Encoder(loaded, EncoderConfig(dim=64, second_moment="estimate", hessian="none",
                                        batch_tokens=10_000))
    examples = list(enc.tokenize_passages(PASSAGES))
    enc.fit_second_moment(examples)
    transposed = {tm.name: tm.transposed for tm in enc.tracked}
    sq = {}
    for e in examples:
        for name, g in autograd_gradient(loaded.model, e, list(transposed), transposed).items():
            sq[name] = sq.get(name, 0) + g**2
    for tm in enc.tracked:
        v = sq[tm.name] / len(examples)
        want = factored_from_sums(v.sum(1), v.sum(0), enc.config.epsilon)
        got = enc._corrections[tm.name]
        torch.testing.assert_close(got.row, want.row, rtol=1e-4, atol=0)
        torch.testing.assert_close(got.col, want.col, rtol=1e-4, atol=0)
