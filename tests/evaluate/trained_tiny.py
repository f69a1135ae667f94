"""A tiny Llama trained on a handful of facts (the known answer of the tail-patch tests)."""

import contextlib
import math

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from factrace.data.batching import collate
from factrace.data.records import Passage
from factrace.data.tokenize import tokenize_passage
from factrace.model.loss import forward_logits, per_example_loss
from tiny import CharTokenizer

FACTS = {
    "alice": "Alice was born in Paris.",
    "bob": "Bob was born in Tokyo.",
    "carol": "Carol was born in Lima.",
    "dave": "Dave was born in Oslo.",
}
UNRELATED = {
    "apples": "Green apples are sour.",
    "rivers": "Rivers flow to the sea.",
}
PEAK_LR = 1e-2
FINAL_LR = 1e-3
STEPS = 60


def build_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(config)


def train(model, texts, steps: int = STEPS) -> torch.optim.AdamW:
    """Full-batch AdamW on the mean token cross-entropy of ``texts``, cosine decay from
    ``PEAK_LR`` to ``FINAL_LR``, so the saved groups hold the final learning rate."""
    tokenizer = CharTokenizer()
    examples = [tokenize_passage(tokenizer, Passage(str(i), t), 64)[0] for i, t in enumerate(texts)]
    batch = collate(examples, 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, betas=(0.9, 0.95),
                                  weight_decay=0.1)
    low = FINAL_LR / PEAK_LR

    def cosine(step: int) -> float:
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * min(step + 1, steps) / steps))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = per_example_loss(forward_logits(model, batch), batch.input_ids, batch.loss_mask,
                                "mean").mean()
        loss.backward()
        optimizer.step()
        schedule.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    return optimizer


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread: these models are so small that a second thread only adds
    synchronisation, which on a busy machine costs more than the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
