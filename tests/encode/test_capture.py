"""Hooked, projected per-example gradients against autograd one example at a time."""

import pytest
import torch

import factrace.model.attention as attention
from factrace.config import EncoderConfig
from factrace.data.records import Passage, Query
from factrace.encode.encoder import Encoder
from factrace.errors import FactraceError
from factrace.model.optimizer_state import OptimizerState, ParamMoment
from reference import reference_projection
from tiny import ARCHITECTURES, tiny_loaded

PASSAGES = [Passage("a", "the cat sat on the mat"), Passage("b", "dogs"),
            Passage("c", "a longer passage about birds and their nests in spring")]
QUERIES = [Query("q1", "Paris is the capital of", " France"), Query("q2", "X was born in", " Y"),
           Query("q3", "a", " bb")]


def random_state(model, seed=0, rank_one=False) -> OptimizerState:
    g = torch.Generator().manual_seed(seed)
    moments = {}
    for name, p in model.named_parameters():
        if rank_one and p.dim() == 2:
            r = torch.rand(p.shape[0], 1, generator=g) + 0.5
            c = torch.rand(1, p.shape[1], generator=g) + 0.5
            v = r * c * 1e-4
        else:
            v = (torch.rand(p.shape, generator=g) + 0.1) * 1e-4
        moments[name] = ParamMoment(exp_avg_sq=v)
    return OptimizerState(moments, "test")


def correction_fn(encoder, state, mode):
    tracked = {tm.name: tm for tm in encoder.tracked}
    eps = encoder.config.epsilon

    def correct(name, g):
        tm = tracked[name]
        v = tm.weight_of(state[tm.param_name].exp_avg_sq.double())  # an expert's: its slice
        if mode == "exact":
            return g / (v.sqrt() + eps)
        r, c = v.sum(1), v.sum(0)
        vhat = torch.outer(r, c) / r.sum()
        return g / vhat.sqrt()
    return correct if mode != "none" else None


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("mode", ["factored", "exact", "none"])
def test_hooked_equals_autograd(arch, mode):
    loaded = tiny_loaded(arch)
    state = random_state(loaded.model)
    config = EncoderConfig(dim=64, second_moment=mode, hessian="none", normalize=False,
                           batch_tokens=10_000)
    enc = Encoder(loaded, config, state if mode != "none" else None)
    correct = correction_fn(enc, state, mode)
    examples = list(enc.tokenize_passages(PASSAGES)) + enc.tokenize_queries(QUERIES)
    got = {}
    batches = list(enc.project(examples))
    assert len(batches) == 1  # one padded batch mixing lengths
    for batch_ids, p in batches:
        got.update(zip(batch_ids, p.double(), strict=True))
    assert len(got) == len(examples) > 1
    for example in examples:
        want = reference_projection(enc, example, correct)
        assert rel_err(got[example.id], want) < 1e-4, (arch, mode, example.id)


def _factored_vs_exact(rank_one: bool) -> float:
    """Relative difference of the factored and exact corrections' raw projections."""
    loaded = tiny_loaded("llama")
    state = random_state(loaded.model, rank_one=rank_one)
    outs = {}
    for mode in ("factored", "exact"):
        enc = Encoder(loaded, EncoderConfig(dim=64, second_moment=mode, hessian="none",
                                            normalize=False), state)
        outs[mode] = enc.encode_passages(PASSAGES)[1]
    return rel_err(outs["factored"], outs["exact"])


def test_factored_equals_exact_when_rank_one():
    assert _factored_vs_exact(rank_one=True) < 1e-4


def test_factored_differs_from_exact_when_not_rank_one():
    """The comparison above can fail: with a full-rank V the two modes disagree."""
    assert _factored_vs_exact(rank_one=False) > 1e-3


def test_parameters_untouched_after_encoding():
    loaded = tiny_loaded("gpt2")
    model = loaded.model
    frozen = "transformer.h.0.attn.c_attn.weight"
    for name, p in model.named_parameters():
        p.requires_grad_(name != frozen)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    enc = Encoder(loaded, EncoderConfig(dim=64, second_moment="none", hessian="none"))
    seen = []

    def spy(_module, _args, _output):
        seen.append([p.requires_grad for p in model.parameters()])

    handle = model.transformer.h[0].register_forward_hook(spy)
    enc.encode_passages(PASSAGES)
    handle.remove()
    assert seen and not any(any(flags) for flags in seen), "weights required grad while encoding"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bfloat16_model_projects_in_bfloat16_close_to_autograd(arch, monkeypatch):
    # A bfloat16 model's x and δ are bfloat16: the first projection runs in bfloat16 there, the
    # per-example products and sums in float32. Reference: the same bfloat16 model's autograd
    # weight gradients, projected densely in float64, with the same attention kernel (the switch
    # to eager attention is tested in tests/model/test_attention.py).
    monkeypatch.setattr(attention, "EAGER_MAX_WIDTH", 0)
    loaded = tiny_loaded(arch)
    loaded.model.to(torch.bfloat16)
    state = random_state(loaded.model)
    config = EncoderConfig(dim=64, second_moment="factored", hessian="none", normalize=False,
                           batch_tokens=10_000)
    enc = Encoder(loaded, config, state)
    examples = list(enc.tokenize_passages(PASSAGES)) + enc.tokenize_queries(QUERIES)
    got = {}
    for batch_ids, p in enc.project(examples):
        assert p.dtype == torch.float32
        got.update(zip(batch_ids, p.double(), strict=True))
    correct = correction_fn(enc, state, "factored")
    for example in examples:
        want = reference_projection(enc, example, correct)
        assert rel_err(got[example.id], want) < 2e-2, (arch, example.id)


@pytest.mark.parametrize("aspect", [0.25, 8.0])
def test_tall_and_wide_blocks_equal_autograd(aspect):
    loaded = tiny_loaded("llama")
    state = random_state(loaded.model)
    config = EncoderConfig(dim=14 * 64, layout="modules", aspect=aspect, hessian="none",
                           normalize=False, batch_tokens=10_000)
    enc = Encoder(loaded, config, state)
    rows, cols = enc.blocks[0].rows, enc.blocks[0].cols
    assert (rows > cols) == (aspect > 1) and rows * cols == 64
    correct = correction_fn(enc, state, "factored")
    examples = list(enc.tokenize_passages(PASSAGES)) + enc.tokenize_queries(QUERIES)
    got = {}
    for batch_ids, p in enc.project(examples):
        got.update(zip(batch_ids, p.double(), strict=True))
    for example in examples:
        assert rel_err(got[example.id], reference_projection(enc, example, correct)) < 1e-4


def test_a_linear_seeing_only_some_tokens_is_refused():
    """Experts kept as separate modules see only their routed tokens, and which ones no hook on
    the module can tell: such a module is refused, not traced wrongly."""
    loaded = tiny_loaded("llama")
    mlp = loaded.model.model.layers[0].mlp
    mlp.extra = torch.nn.Linear(32, 32)
    own = mlp.forward

    def forward(x):
        out = own(x)
        return out + torch.nn.functional.pad(mlp.extra(x[:, :1]), (0, 0, 0, x.shape[1] - 1))
    mlp.forward = forward
    enc = Encoder(loaded, EncoderConfig(dim=64, second_moment="none", hessian="none"))
    with pytest.raises(FactraceError, match=r"layers\.0\.mlp\.extra: saw 2 tokens .*--exclude"):
        enc.encode_passages(PASSAGES[:2])
    enc = Encoder(loaded, EncoderConfig(dim=64, second_moment="none", hessian="none",
                                        exclude=["*.extra"]))
    assert enc.encode_passages(PASSAGES[:2])[1].shape == (2, 64)


def test_experts_and_routers_run_their_own_forward_again_after_encoding():
    loaded = tiny_loaded("mixtral")
    mlp = loaded.model.model.layers[0].mlp
    mlp.gate.forward = mlp.gate.forward  # a forward some other wrapper set on the instance
    before = loaded.model(torch.tensor([[1, 5, 9, 14]])).logits
    enc = Encoder(loaded, EncoderConfig(dim=64, second_moment="none", hessian="none"))
    enc.encode_passages(PASSAGES[:2])
    assert "forward" not in mlp.experts.__dict__
    assert mlp.gate.__dict__["forward"] == type(mlp.gate).forward.__get__(mlp.gate)
    torch.testing.assert_close(loaded.model(torch.tensor([[1, 5, 9, 14]])).logits, before)
