"""Encoding cost relative to a plain training step, measured side by side in one run.

A tiny Llama (about 5M parameters) and encyclopedia-length passages of the fact world. For the
same token batches, it times (a) a plain training step: forward + backward with weight gradients
(no optimizer update), and (b) factrace's encoding (`layers` layout, `factored` correction,
d = 2^14): forward + backward to activations only + projection, and (c) the floor: the same
activation-only backward with nothing captured or projected. They alternate batch by batch, so
machine noise hits all alike. Prints the ratios encode / train-step and encode / floor.

    python benchmarks/encode.py [--passages 2000] [--dim 16384] [--threads 2]
    python benchmarks/encode.py --device cuda --dtype bfloat16 --dim 65536 --batch-tokens 65536
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from factrace.encode.capture import HookCollector
from factrace.run.process import tune_process


def build(tmp: Path, n_passages: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    from factrace.data.corpus import iter_corpus
    from factrace.factworld.generate import generate_world
    from factrace.factworld.tokenizer import train_tokenizer
    from factrace.factworld.world import WorldConfig

    files = generate_world(tmp / "world", WorldConfig(n_passages=n_passages, seed=seed))
    passages = list(iter_corpus(files.corpus))
    tokenizer = train_tokenizer((p.text for p in passages), vocab_size=4096, model_max_length=256)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=688,
                         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8,
                         max_position_embeddings=256, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer, passages


def random_state(model):
    from factrace.model.optimizer_state import OptimizerState, ParamMoment

    g = torch.Generator().manual_seed(0)
    return OptimizerState({n: ParamMoment(exp_avg_sq=torch.rand(p.shape, generator=g) * 1e-6 + 1e-9)
                           for n, p in model.named_parameters()}, "benchmark")


def training_and_encoding_steps(model, capture) -> dict:
    """Two steps on one batch each: ``train``, a plain training step (forward + backward with
    weight gradients, no optimizer update), and ``encode``, factrace's encoding through
    ``capture`` (a :class:`~factrace.encode.capture.ProjectedGradients`)."""
    from factrace.model.loss import forward_logits, per_example_loss

    def train_step(batch):
        for p in model.parameters():
            p.requires_grad_(True)
        logits = forward_logits(model, batch)
        per_example_loss(logits, batch.input_ids, batch.loss_mask).sum().backward()
        model.zero_grad(set_to_none=True)

    def encode_step(batch):
        with capture:
            capture.project(batch)

    return {"train": train_step, "encode": encode_step}


def time_alternating(steps: dict, batches, repeats: int = 1, sync=lambda: None) -> dict:
    """Seconds each step took over ``batches`` (``repeats`` times), the steps alternating
    batch by batch so that machine noise hits all alike; each step is run once first."""
    seconds = dict.fromkeys(steps, 0.0)
    for step in steps.values():  # warm-up every path
        step(batches[0])
    for _ in range(repeats):
        for batch in batches:
            for name, step in steps.items():
                sync()
                t = time.perf_counter()
                step(batch)
                sync()
                seconds[name] += time.perf_counter() - t
    return seconds


class Floor(HookCollector):
    """The same activation-only backward as encoding, with nothing captured: the floor."""

    def on_forward(self, module, x, place):
        pass

    def on_backward(self, module, delta, place):
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=1 << 14)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    ap.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tune_process()  # as the factrace command does; every step runs under it

    from factrace.config import EncoderConfig
    from factrace.data.batching import token_budget_batches
    from factrace.encode.capture import ProjectedGradients
    from factrace.encode.encoder import Encoder
    from factrace.model.load import LoadedModel

    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer, passages = build(Path(tmp), args.passages)
    model.to(args.device, getattr(torch, args.dtype))
    loaded = LoadedModel(model, tokenizer, None)
    config = EncoderConfig(dim=args.dim, layout="layers", second_moment="factored",
                           hessian="none", batch_tokens=args.batch_tokens)
    enc = Encoder(loaded, config, random_state(model))
    batches = [b.to(enc.device) for b in token_budget_batches(
        enc.tokenize_passages(passages), args.batch_tokens, loaded.pad_id)]
    sync = torch.cuda.synchronize if enc.device.type == "cuda" else (lambda: None)
    n_params = sum(p.numel() for p in model.parameters())
    n_tokens = int(sum(b.attention_mask.sum() for b in batches))
    capture = ProjectedGradients(model, enc.tracked, enc.blocks, 0, enc._corrections, enc.device)

    paired = training_and_encoding_steps(model, capture)
    floor = Floor(model, enc.tracked)

    def floor_step(batch):
        with floor:
            floor.forward_backward(batch)

    steps = {"train": paired["train"], "floor": floor_step, "encode": paired["encode"]}
    seconds = time_alternating(steps, batches, args.repeats, sync)
    t_train, t_encode = seconds["train"], seconds["encode"]
    result = {
        "params": n_params, "passages": len(passages), "examples": sum(len(b.ids) for b in batches),
        "tokens": n_tokens, "batches": len(batches), "dim": enc.dim, "blocks": len(enc.blocks),
        "threads": args.threads, "device": str(enc.device), "dtype": args.dtype,
        "train_step_s": round(t_train, 3), "floor_s": round(seconds["floor"], 3),
        "encode_s": round(t_encode, 3),
        "encode_tokens_per_s": round(n_tokens * args.repeats / t_encode),
        "ratio_encode_over_train_step": round(t_encode / t_train, 3),
        "ratio_floor_over_train_step": round(seconds["floor"] / t_train, 3),
        "ratio_encode_over_floor": round(t_encode / seconds["floor"], 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
