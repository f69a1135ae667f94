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
ARCHITECTURES = ("llama", "gpt2", "gpt_neox", "qwen2", "mistral")


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
    else:
        raise ValueError(arch)
    # Random init gives tiny gradients in deep positions; larger weights make the test sharper.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
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
