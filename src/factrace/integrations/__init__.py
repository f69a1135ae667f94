"""factrace where models are trained: a Hugging Face ``Trainer`` callback, and its two-line
equivalent for a training loop of one's own.

With the Trainer::

    from factrace.integrations import FactraceCallback
    trainer = Trainer(..., callbacks=[FactraceCallback()])

Every checkpoint the Trainer saves then also holds what factrace needs beside the model and the
tokenizer: the optimizer's second moment by parameter name (``factrace_optimizer.safetensors``)
and a ``factrace.json`` marker. ``factrace index build --model CKPT --optimizer-state CKPT``
takes such a directory as it is. ``FactraceCallback(index=..., corpus=...)`` also builds (or
resumes, or extends) a store from the final model when training ends, and ``queries=...,
scan_out=...`` scans them.

In a loop of one's own, at each checkpoint::

    model.save_pretrained(ckpt); tokenizer.save_pretrained(ckpt)
    mark_checkpoint(ckpt, model, optimizer, step=step)
"""

from factrace.integrations.trainer import FactraceCallback, mark_checkpoint, save_second_moment

__all__ = ["FactraceCallback", "mark_checkpoint", "save_second_moment"]
