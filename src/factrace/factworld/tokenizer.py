"""A byte-level BPE tokenizer trained on the fact-world corpus.

Saved as a Hugging Face fast tokenizer, so ``AutoTokenizer.from_pretrained(model_dir)`` loads
it. ``tok(text)`` prepends the BOS token (a template post-processor), which is how factrace
tokenises both passages (``tok(text)``) and queries (``tok(prompt)`` followed by
``tok(target, add_special_tokens=False)``); the model is trained on exactly that format.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS_TOKEN = "<|endoftext|>"
"""Begins every sequence; also the EOS token (one document-boundary token, as in GPT-2)."""
PAD_TOKEN = "<pad>"
"""Pads batches; never contributes to a loss."""


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 3072, model_max_length: int = 128
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with ``vocab_size`` entries on ``texts``.

    Token ids 0 and 1 are the BOS/EOS and PAD tokens. ``model_max_length`` is recorded in the
    tokenizer config (sequences the model was trained on are at most this long).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=BOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
    )
