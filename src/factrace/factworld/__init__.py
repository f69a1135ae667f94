"""The synthetic fact world and the tiny-model pretraining used by the demo, benchmarks and tests.

- :func:`generate_world` writes a T-REx-like world (``corpus.jsonl``, ``queries.jsonl``,
  ``qrels.jsonl``) described by a :class:`WorldConfig`; :func:`iter_passages` streams its
  passages with their structural record of which facts each states.
- :func:`pretrain` trains a tokenizer and a tiny Llama on a corpus (:class:`PretrainConfig`),
  saving a Hugging Face model directory with ``optimizer.pt`` and ``train_info.json``;
  :func:`fact_accuracy` measures how many queries the model answers by greedy decoding.

Names are imported lazily, so generating a world does not import transformers. The function
``pretrain`` shares its name with its module: import it as
``from factrace.factworld.pretrain import pretrain``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "WorldConfig": "world",
    "World": "world",
    "build_world": "world",
    "iter_passages": "passages",
    "WorldPassage": "passages",
    "generate_world": "generate",
    "WorldFiles": "generate",
    "PretrainConfig": "pretrain",
    "fingerprint": "pretrain",
    "train_tokenizer": "tokenizer",
    "fact_accuracy": "accuracy",
    "greedy_hits": "accuracy",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # imported once
    return value
