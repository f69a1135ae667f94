"""Coverage: every parameter of the model counted once, by kind, against counts computed from
the models' configurations; untraceable weights inside the blocks named in a warning."""

import json
import warnings

import pytest
import torch
from torch import nn

from factrace.config import variant_config
from factrace.encode.encoder import Encoder
from factrace.errors import FactraceWarning
from factrace.model.load import LoadedModel
from factrace.model.modules import COVERAGE_KINDS, coverage, discover
from tiny import ARCHITECTURES, VOCAB, CharTokenizer, tiny_loaded, tiny_model

H, FF, L, HEADS, KV = 32, 48, 2, 4, 2  # tiny.py's dimensions
KV_DIM = H // HEADS * KV


def _config(**overrides):
    return variant_config("trackstar", dim=64, hessian="none", second_moment="estimate",
                          **overrides)


def _parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())  # each shared tensor once


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_kinds_add_up_to_the_model(arch):
    model = tiny_model(arch)
    tracked = discover(model)
    c = coverage(model, tracked)
    assert c.total == _parameters(model)
    assert sum(k["parameters"] for k in c.kinds.values()) == c.total
    assert sum(k["tensors"] for k in c.kinds.values()) == len(list(model.parameters()))
    assert sum(k["share"] for k in c.kinds.values()) == pytest.approx(1.0)
    assert c.kinds["tracked"]["parameters"] == sum(t.d_out * t.d_in for t in tracked)
    assert c.kinds["tracked"]["tensors"] == len(tracked)
    assert set(c.kinds) == set(COVERAGE_KINDS)
    assert c.unseen == () and c.warning() is None


def test_llama_counts_from_its_config():
    c = coverage(model := tiny_model("llama"), discover(model))
    per_layer = H * H + 2 * KV_DIM * H + H * H + 3 * H * FF  # q, k, v, o; gate, up, down
    assert c.kinds["tracked"]["parameters"] == L * per_layer
    assert c.kinds["embeddings"]["parameters"] == VOCAB * H
    assert c.kinds["untracked_linear"]["parameters"] == VOCAB * H  # lm_head, not tied
    assert c.kinds["untracked_linear"]["names"] == ["lm_head.weight"]
    assert c.kinds["norms"]["parameters"] == (2 * L + 1) * H
    assert c.kinds["biases"]["parameters"] == 0
    assert "model.layers.*.self_attn.q_proj.weight" in c.kinds["tracked"]["names"]
    line = c.line()
    assert line.startswith("coverage: ") and "\n" not in line
    assert f"in {L} blocks" in line and "other linear weights 3.1k" in line


def test_gpt2_tied_head_and_biases_from_its_config():
    c = coverage(model := tiny_model("gpt2"), discover(model))
    assert c.kinds["embeddings"]["parameters"] == VOCAB * H + 64 * H  # tokens (= head) + positions
    assert "transformer.wte.weight = lm_head.weight" in c.kinds["embeddings"]["names"]
    assert c.kinds["untracked_linear"]["parameters"] == 0
    # c_attn 3H, attention c_proj H, c_fc 4H, mlp c_proj H
    assert c.kinds["biases"]["parameters"] == L * (3 * H + H + 4 * H + H)
    assert c.kinds["norms"]["parameters"] == (2 * L + 1) * 2 * H


def test_excluded_linears_are_counted_but_not_warned_about():
    model = tiny_model("llama")
    tracked = discover(model, exclude=["*.mlp.*"])
    c = coverage(model, tracked)
    assert c.kinds["untracked_linear"]["parameters"] == VOCAB * H + L * 3 * H * FF
    assert c.warning() is None


def test_encoder_records_coverage_and_stays_quiet_on_a_dense_model():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FactraceWarning)
        enc = Encoder(tiny_loaded("qwen2"), _config())
    meta = json.loads(json.dumps(enc.metadata()))
    assert meta["coverage"]["parameters"] == _parameters(enc.loaded.model)
    assert meta["coverage"]["untracked_in_blocks"] == []


MOE = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=4)),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(num_experts=4)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(num_experts=4, moe_intermediate_size=FF, shared_expert_intermediate_size=40)),
}


def _moe(family: str):
    import transformers

    config_name, model_name, extra = MOE[family]
    if not hasattr(transformers, model_name):
        pytest.skip(f"this transformers has no {model_name}")
    torch.manual_seed(0)
    cfg = getattr(transformers, config_name)(
        vocab_size=VOCAB, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
        num_attention_heads=HEADS, num_key_value_heads=KV, num_experts_per_tok=2,
        max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0, **extra)
    return getattr(transformers, model_name)(cfg).eval()


@pytest.mark.parametrize("family", sorted(MOE))
def test_fused_experts_are_counted_and_named_in_a_warning(family):
    model = _moe(family)
    experts = [(n, p) for n, p in model.named_parameters() if ".experts." in n and p.dim() == 3]
    if not experts:
        pytest.skip(f"{family}: this transformers keeps its experts as modules")
    with pytest.warns(FactraceWarning) as caught:
        enc = Encoder(LoadedModel(model, CharTokenizer(), None), _config())
    assert len(caught) == 1
    message = str(caught[0].message)
    c = enc.coverage
    assert c.total == _parameters(model)
    assert sum(k["parameters"] for k in c.kinds.values()) == c.total
    # every fused expert weight and the router (a plain parameter of a router module), by name
    E = 4
    expected = L * (E * 2 * FF * H + E * H * FF + E * H)  # gate_up, down, router
    assert c.unseen_parameters == expected
    assert c.kinds["untracked_matrix"]["parameters"] == expected
    for name in ("model.layers.*.mlp.experts.gate_up_proj", "model.layers.*.mlp.experts.down_proj",
                 "model.layers.*.mlp.gate.weight"):
        assert name in c.unseen
        assert name in message
    assert "\n" not in message
    assert enc.metadata()["coverage"]["untracked_in_blocks"] == list(c.unseen)
    # the warning comes once per model, however many encoders it serves
    with warnings.catch_warnings():
        warnings.simplefilter("error", FactraceWarning)
        Encoder(enc.loaded, _config(seed=1))


def test_a_custom_weight_inside_one_block_is_named_exactly():
    model = tiny_model("llama")
    model.model.layers[1].mlp.register_parameter("mix", nn.Parameter(torch.zeros(4, H)))
    with pytest.warns(FactraceWarning, match=r"model\.layers\.1\.mlp\.mix \(128 parameters"):
        enc = Encoder(LoadedModel(model, CharTokenizer(), None), _config())
    assert enc.coverage.unseen == ("model.layers.1.mlp.mix",)
    assert enc.coverage.total == _parameters(model)
