"""Which attention kernel a batch's forward and backward run with.

On CPU, PyTorch's fused (flash) attention backward in bfloat16 and float16 is slow for short
sequences — many rows of few tokens, the usual shape of a passage batch: at widths up to
:data:`EAGER_MAX_WIDTH` tokens the plain-matmul ("eager") attention of Hugging Face models takes
about 0.6-0.75 of its time, above that it is slower (benchmarks/README.md). Both compute the same
softmax attention. CUDA devices and float32 keep the model's own choice.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

EAGER_MAX_WIDTH = 128


def prefers_eager(model, width: int) -> bool:
    """Whether a batch ``width`` tokens wide should run with eager attention on ``model``."""
    if width > EAGER_MAX_WIDTH or not hasattr(model, "set_attn_implementation"):
        return False
    param = next(model.parameters(), None)
    return (param is not None and param.device.type == "cpu"
            and param.dtype in (torch.bfloat16, torch.float16)
            and getattr(model.config, "_attn_implementation", None) == "sdpa")


@contextmanager
def eager_attention(model):
    """``model`` on eager attention for the body (when it can switch), then as it was."""
    current = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if current in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(current)


@contextmanager
def attention_for_width(model, width: int):
    """Switch ``model`` to eager attention for this batch where that is faster; restore after."""
    if not prefers_eager(model, width):
        yield
        return
    with eager_attention(model):
        yield
