"""Tiny random causal LMs built from configs, for tests (no hub, no files)."""

from __future__ import annotations

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from factrace.model.load import LoadedModel

VOCAB = 97
#: Dense families. All with grouped-query attention (2 key/value heads for 4 query heads) except
#: GPT-2 and GPT-NeoX, which have none; Gemma 2 and 3 tie the output head to the embeddings.
DENSE = ("llama", "gpt2", "gpt_neox", "qwen2", "mistral", "gemma2", "gemma3", "olmo2", "phi3",
         "qwen3")
#: Mixture-of-experts families (fused experts, 4 experts, top 2; Qwen2-MoE adds a shared expert).
#: GPT-OSS: expert weights stored transposed ([E, in, out]), with biases; router ``mlp.router``.
MOE = ("mixtral", "olmoe", "qwen2_moe", "qwen3_moe", "gpt_oss")
ARCHITECTURES = DENSE + MOE
EXPERTS = 4

_GQA = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=64)
# family: (config class, model class, options beyond _GQA)
_FAMILIES = {
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(head_dim=8, sliding_window=4)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(head_dim=8, sliding_window=4, layer_types=None)),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=8)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(num_local_experts=EXPERTS, num_experts_per_tok=2)),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(num_experts=EXPERTS, num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(num_experts=EXPERTS, num_experts_per_tok=2, moe_intermediate_size=48,
                       shared_expert_intermediate_size=40)),
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM",
                dict(num_local_experts=EXPERTS, num_experts_per_tok=2, head_dim=8,
                     layer_types=None)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(num_experts=EXPERTS, num_experts_per_tok=2, moe_intermediate_size=48,
                       head_dim=8)),
}


def tiny_model(arch: str = "llama", layers: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "llama":
        cfg = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=64, **common)
        model = LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=64, **common)
        model = Qwen2ForCausalLM(cfg)
    elif arch == "mistral":
        cfg = MistralConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                            num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=64, sliding_window=None, **common)
        model = MistralForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=layers, n_head=4, n_positions=64,
                         attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, **common)
        model = GPT2LMHeadModel(cfg)
    elif arch == "gpt_neox":
        cfg = GPTNeoXConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                            num_attention_heads=4, max_position_embeddings=64,
                            hidden_dropout=0.0, attention_dropout=0.0, **common)
        model = GPTNeoXForCausalLM(cfg)
    elif arch in _FAMILIES:
        import transformers

        config_name, model_name, extra = _FAMILIES[arch]
        options = {**_GQA, **extra}
        if "layer_types" in options:  # one sliding-window layer, then full attention
            options["layer_types"] = (["sliding_attention", "full_attention"] * layers)[:layers]
        cfg = getattr(transformers, config_name)(num_hidden_layers=layers, **options, **common)
        model = getattr(transformers, model_name)(cfg)
    else:
        raise ValueError(arch)
    # Random init gives tiny gradients in deep positions; larger weights make the test sharper
    # (and routers, which some families initialise to zero, route each token differently).
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    return model.eval()


class CharTokenizer:
    """A minimal tokenizer: one id per character (mod the vocabulary), BOS = 1, pad = 0."""

    pad_token_id = 0
    eos_token_id = 2
    bos_token_id = 1
    all_special_ids = [0, 1, 2]
    model_max_length = 64

    def __call__(self, text: str, add_special_tokens: bool = True, **_):
        ids = [3 + (ord(ch) % (VOCAB - 3)) for ch in text]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def tiny_loaded(arch: str = "llama", layers: int = 2, seed: int = 0) -> LoadedModel:
    return LoadedModel(tiny_model(arch, layers, seed), CharTokenizer(), None)
