"""A GGUF file written from a Hugging Face Llama directory, the way llama.cpp's converter writes it.

Only what the tests need: float32 tensors under llama.cpp's names (``gguf``'s tensor name map),
the query and key weights permuted as ``convert_hf_to_gguf.py`` permutes them (llama.cpp's
rotary embedding pairs neighbouring dimensions, Hugging Face's pairs the two halves), the
hyperparameters, and a byte-level BPE tokenizer (``tokenizer.ggml.model = "gpt2"``) with its
merges and special tokens. Written independently of transformers' GGUF reader, so loading the
file back through it checks that reader against the directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """``LlamaModel.permute`` of llama.cpp's ``convert_hf_to_gguf.py``."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_llama_gguf(model_dir: str | Path, out: str | Path, name: str = "tiny-llama") -> Path:
    import gguf
    from transformers import LlamaForCausalLM

    model_dir, out = Path(model_dir), Path(out)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = model.config
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    special = {t["content"]: t["id"] for t in tok["added_tokens"] if t.get("special")}
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(name)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]) if getattr(
        cfg, "rope_parameters", None) else float(cfg.rope_theta))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_pad_token_id(cfg.pad_token_id)
    w.add_add_bos_token(True)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        array = tensor.detach().float().numpy().copy()
        if hf_name.endswith("q_proj.weight"):
            array = llama_cpp_permute(array, cfg.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            array = llama_cpp_permute(array, cfg.num_key_value_heads)
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        w.add_tensor(gguf_name, np.ascontiguousarray(array))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
