"""A tiny Hugging Face model directory on disk: BPE tokenizer, Llama, HF-Trainer optimizer.pt."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

WORDS = ("alba bruno corin dela ember fiora gant hollis ivo juno kestrel lumen mira nolan orla "
         "pim quill rhea sable tamsin ulric vela wren").split()
PLACES = "Orvane Tesk Mirrow Calden Ysolde Brant".split()


def write_corpus(path: Path, n: int = 60, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        who, where = rng.choice(WORDS).title(), rng.choice(PLACES)
        extra = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
        rows.append({"id": f"d{i}", "text": f"{who} was born in {where}. {extra}."})
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return rows


def write_queries(path: Path, n: int = 6) -> list[dict]:
    rows = [{"id": f"q{i}", "prompt": f"{WORDS[i].title()} was born in",
             "target": f" {PLACES[i % len(PLACES)]}"} for i in range(n)]
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return rows


def make_model_dir(root: Path, corpus_rows: list[dict], seed: int = 0, width: int = 32) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Trainer

    out = root / "model"
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([r["text"] for r in corpus_rows], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=48)
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=width, intermediate_size=2 * width,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=48, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = list(model.named_parameters())
    opt = torch.optim.AdamW([{"params": [p for n, p in named if n in decay], "weight_decay": 0.01},
                             {"params": [p for n, p in named if n not in decay],
                              "weight_decay": 0.0}], lr=3e-3)
    texts = [r["text"] for r in corpus_rows]
    for step in range(8):
        batch = fast(texts[step * 4:(step + 1) * 4], return_tensors="pt", padding=True,
                     truncation=True, max_length=48)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    torch.save(opt.state_dict(), out / "optimizer.pt")
    return out
