"""Eager attention for short batches of reduced-precision CPU models: same encodings, restored."""

import torch

import factrace.model.attention as attention
from factrace.config import EncoderConfig
from factrace.data.records import Passage
from factrace.encode.encoder import Encoder
from tiny import tiny_loaded

PASSAGES = [Passage("a", "the cat sat on the mat"), Passage("b", "dogs bark"),
            Passage("c", "a longer passage about birds and their nests in spring")]


def _projections(loaded):
    enc = Encoder(loaded, EncoderConfig(dim=64, second_moment="none", hessian="none",
                                        normalize=False, batch_tokens=10_000))
    out = {}
    for ids, p in enc.project(list(enc.tokenize_passages(PASSAGES))):
        out.update(zip(ids, p, strict=True))
    return torch.stack([out[p.id] for p in PASSAGES])


def test_eager_only_where_it_is_faster():
    model = tiny_loaded("llama").model
    assert model.config._attn_implementation == "sdpa"
    assert not attention.prefers_eager(model, 16)  # float32
    model.to(torch.bfloat16)
    assert attention.prefers_eager(model, 16)
    assert not attention.prefers_eager(model, attention.EAGER_MAX_WIDTH + 1)


def test_switched_attention_is_as_accurate_as_fused(monkeypatch):
    # Reference: the float32 model. bfloat16 itself costs a few percent; eager attention must
    # cost no more than the fused kernel does.
    loaded = tiny_loaded("llama")
    reference = _projections(loaded).double()
    loaded.model.to(torch.bfloat16)
    seen = []
    original = loaded.model.set_attn_implementation

    def record(impl, **kw):
        seen.append(impl)
        return original(impl, **kw)

    monkeypatch.setattr(loaded.model, "set_attn_implementation", record)
    switched = _projections(loaded).double()
    assert seen == ["eager", "sdpa"]
    assert loaded.model.config._attn_implementation == "sdpa"
    monkeypatch.setattr(attention, "EAGER_MAX_WIDTH", 0)
    fused = _projections(loaded).double()
    assert seen == ["eager", "sdpa"]  # no switch this time

    def error(p):
        return float(((p - reference).norm(dim=1) / reference.norm(dim=1)).mean())

    assert error(switched) < 0.1 and error(fused) < 0.1
    assert error(switched) < 1.5 * error(fused) + 0.005, (error(switched), error(fused))
