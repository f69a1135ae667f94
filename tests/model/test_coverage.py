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
from tiny import ARCHITECTURES, EXPERTS, MOE, VOCAB, CharTokenizer, tiny_loaded, tiny_model

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
    assert c.kinds["tracked"]["tensors"] == len({t.param_name for t in tracked})  # experts share
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


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a not in ("gpt2", "gpt_neox")])
def test_grouped_query_attention_is_tracked_at_its_own_shapes(arch):
    model = tiny_model(arch)
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    shapes = {t.name.rpartition(".")[2]: (t.d_out, t.d_in) for t in discover(model)
              if t.layer == 0 and t.part == "attention"}
    head = getattr(model.config, "head_dim", None) or H // HEADS
    if arch == "phi3":  # one fused qkv_proj Linear: q, then k and v of the fewer heads
        assert shapes["qkv_proj"] == (head * HEADS + 2 * head * KV, H)
    else:
        assert shapes["k_proj"] == shapes["v_proj"] == (head * KV, H)
        assert shapes["q_proj"] == (head * HEADS, H)


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_tied_embeddings_are_counted_once_and_the_head_is_not_tracked(arch):
    model = tiny_model(arch)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    tracked = discover(model)
    c = coverage(model, tracked)
    assert c.total == _parameters(model)
    assert len(list(model.named_parameters(remove_duplicate=False))) > c.kinds["tracked"][
        "tensors"] + sum(k["tensors"] for n, k in c.kinds.items() if n != "tracked")
    assert c.kinds["embeddings"]["parameters"] == VOCAB * H  # the shared tensor, once
    assert c.kinds["embeddings"]["tensors"] == 1
    assert c.kinds["embeddings"]["names"] == ["model.embed_tokens.weight = lm_head.weight"]
    assert c.kinds["untracked_linear"]["parameters"] == 0
    assert not any("lm_head" in t.name or "embed" in t.name for t in tracked)
    assert c.unseen == () and c.warning() is None


@pytest.mark.parametrize("family", MOE)
def test_fused_experts_and_routers_are_tracked_and_not_warned_about(family):
    model = tiny_model(family)
    E = EXPERTS
    experts = [(n, p) for n, p in model.named_parameters() if ".experts." in n]
    biases = [(n, p) for n, p in experts if n.endswith("_bias")]  # GPT-OSS: [E, out]
    assert all(p.dim() == 3 - bool(n in dict(biases)) and p.shape[0] == E for n, p in experts)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FactraceWarning)
        enc = Encoder(LoadedModel(model, CharTokenizer(), None), _config())
    c = enc.coverage
    assert c.total == _parameters(model)
    assert sum(k["parameters"] for k in c.kinds.values()) == c.total
    assert c.unseen == () and c.warning() is None and c.unseen_parameters == 0
    assert c.kinds["untracked_matrix"]["parameters"] == 0
    assert all(n.replace(".0.", ".*.") in c.kinds["biases"]["names"] for n, _ in biases
               if ".layers.0." in n)
    head = getattr(model.config, "head_dim", None) or H // HEADS
    attention = 2 * head * HEADS * H + 2 * head * KV * H  # q, o; k, v
    moe = E * H + E * (2 * FF * H + H * FF)  # router [E, H]; per expert gate_up, down
    shared = 3 * H * 40 + H if family == "qwen2_moe" else 0  # shared expert MLP and its gate
    router = "router" if family == "gpt_oss" else "gate"
    assert c.kinds["tracked"]["parameters"] == L * (attention + moe + shared)
    for name in ("model.layers.*.mlp.experts.gate_up_proj", "model.layers.*.mlp.experts.down_proj",
                 f"model.layers.*.mlp.{router}.weight"):
        assert name in c.kinds["tracked"]["names"]
    # one tracked weight per expert and fused parameter, [out, in] each, in the MLP part
    kinds = {}
    for t in enc.tracked:
        kinds.setdefault(t.kind, []).append(t)
    assert len(kinds["experts"]) == L * E * 2 and len(kinds["router"]) == L
    up = next(t for t in kinds["experts"] if t.name == "model.layers.1.mlp.experts.gate_up_proj.3")
    assert (up.d_out, up.d_in, up.expert, up.experts, up.layer, up.part) == (2 * FF, H, 3, E, 1,
                                                                            "mlp")
    assert up.param_name == "model.layers.1.mlp.experts.gate_up_proj"
    assert up.owner == "model.layers.1.mlp.experts"
    # and --exclude takes experts out by name: counted as weights left out, not warned about
    fewer = discover(model, exclude=["*.experts.*", f"*.mlp.{router}"])
    assert not any(t.kind in ("experts", "router") for t in fewer)
    c = coverage(model, fewer)
    assert c.kinds["untracked_linear"]["parameters"] == VOCAB * H + L * moe
    assert c.unseen == () and c.warning() is None


def test_a_custom_weight_inside_one_block_is_named_exactly():
    model = tiny_model("llama")
    model.model.layers[1].mlp.register_parameter("mix", nn.Parameter(torch.zeros(4, H)))
    with pytest.warns(FactraceWarning, match=r"model\.layers\.1\.mlp\.mix \(128 parameters"):
        enc = Encoder(LoadedModel(model, CharTokenizer(), None), _config())
    assert enc.coverage.unseen == ("model.layers.1.mlp.mix",)
    assert enc.coverage.total == _parameters(model)
