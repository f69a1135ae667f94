"""`estimate` mode: V from mean squared per-example gradients, with no optimizer state."""

import pytest
import torch
from test_capture import PASSAGES

from factrace.config import EncoderConfig
from factrace.data.records import Passage
from factrace.encode.encoder import Encoder
from factrace.encode.second_moment import factored_from_sums
from reference import autograd_gradients
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


@pytest.mark.parametrize("arch", ["gpt2", "mixtral"])
def test_estimated_sums_match_autograd_squares(arch):
    """Mean squared per-example gradients; for experts (mixtral, routed to one expert per token
    here) with batches of one example each, so that some experts see no token of a batch and
    their zero gradient there must still count."""
    loaded = tiny_loaded(arch)
    batch_tokens, exclude = 10_000, ()
    if arch == "mixtral":
        for layer in loaded.model.model.layers:
            layer.mlp.gate.top_k = 1
        # a batch per example; the routers left out: with one expert per token the normalised
        # routing weight is 1 and their gradient is rounding noise
        batch_tokens, exclude = 1, ("*.mlp.gate",)
    enc = Encoder(loaded, EncoderConfig(dim=64, second_moment="estimate", hessian="none",
                                        batch_tokens=batch_tokens, exclude=exclude))
    passages = PASSAGES + [Passage("d", "xy"), Passage("e", "z")]
    examples = list(enc.tokenize_passages(passages))
    enc.fit_second_moment(examples)
    sq, hits = {}, {}
    for e in examples:  # one example per batch: the example's gradients are the batch's
        for name, g in autograd_gradients(loaded.model, e, enc.tracked).items():
            sq[name] = sq.get(name, 0) + g**2
            hits[name] = hits.get(name, 0) + bool(g.any())
    if arch == "mixtral":  # an expert that some batches use and others leave out
        assert any(0 < hits[tm.name] < len(examples) for tm in enc.tracked if tm.expert >= 0)
    for tm in enc.tracked:
        v = sq[tm.name] / len(examples)
        want = factored_from_sums(v.sum(1), v.sum(0), enc.config.epsilon)
        got = enc._corrections[tm.name]
        torch.testing.assert_close(got.row, want.row, rtol=1e-4, atol=0, msg=tm.name)
        torch.testing.assert_close(got.col, want.col, rtol=1e-4, atol=0)
