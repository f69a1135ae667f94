"""A torch.compile'd forward gives the encodings of the eager model (hooks stay eager)."""

import pytest
import torch
from test_capture import PASSAGES, QUERIES

from factrace.config import EncoderConfig
from factrace.encode.encoder import Encoder
from tiny import tiny_loaded


@pytest.mark.slow  # torch.compile's code generation: about a minute on a small CPU
def test_compiled_forward_gives_the_same_encodings():
    loaded = tiny_loaded("llama")
    out = {}
    for compiled in (False, True):
        # estimate mode: both collectors (squared gradients, then projections) run compiled
        enc = Encoder(loaded, EncoderConfig(dim=64, second_moment="estimate", hessian="none",
                                            compile=compiled))
        assert (enc.forward is not loaded.model) == compiled
        enc.fit_second_moment(enc.tokenize_passages(PASSAGES))
        _, psi = enc.encode_passages(PASSAGES)
        _, q = enc.encode_queries(QUERIES)
        out[compiled] = torch.cat([psi, q])
    assert out[True].norm(dim=1).min() > 0.99  # unit norm: every example got its gradients
    torch.testing.assert_close(out[True], out[False], rtol=1e-4, atol=1e-5)
    assert EncoderConfig(compile=True).fingerprint() == EncoderConfig().fingerprint()
