"""The Trainer callback and the checkpoint marker behind it (see :mod:`factrace.integrations`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from factrace.errors import FactraceError
from factrace.model.optimizer_state import SECOND_MOMENT_FILE
from factrace.store import manifest as mf

#: The marker of a checkpoint written for factrace.
MARKER = "factrace.json"


def _inner(optimizer):
    """The torch optimizer inside an accelerate/Trainer wrapper."""
    while hasattr(optimizer, "optimizer") and optimizer.optimizer is not optimizer:
        optimizer = optimizer.optimizer
    return optimizer


def save_second_moment(directory: str | Path, model: torch.nn.Module, optimizer) -> dict:
    """Write ``optimizer``'s second moment of ``model``'s parameters, by name, to
    ``directory/factrace_optimizer.safetensors`` (Adam/AdamW ``exp_avg_sq``; Adafactor's
    factored ``exp_avg_sq_row``/``exp_avg_sq_col``), with Adam's step and β2 in its metadata.
    Returns what was written (for the marker)."""
    from safetensors.torch import save

    optimizer = _inner(optimizer)
    names = {id(p): n for n, p in model.named_parameters()}
    tensors: dict[str, torch.Tensor] = {}
    steps, betas = set(), set()
    for group in optimizer.param_groups:
        beta2 = group["betas"][1] if "betas" in group else None
        for param in group["params"]:
            state = optimizer.state.get(param) or {}
            name = names.get(id(param))
            if name is None or not state:
                continue
            if "exp_avg_sq" in state:
                tensors[f"{name}.exp_avg_sq"] = state["exp_avg_sq"].detach().float().cpu()
            elif "exp_avg_sq_row" in state and "exp_avg_sq_col" in state:
                tensors[f"{name}.exp_avg_sq_row"] = state["exp_avg_sq_row"].detach().float().cpu()
                tensors[f"{name}.exp_avg_sq_col"] = state["exp_avg_sq_col"].detach().float().cpu()
            else:
                continue
            step = state.get("step")
            if step is not None:
                steps.add(float(step.item() if isinstance(step, torch.Tensor) else step))
            if beta2 is not None:
                betas.add(float(beta2))
    if not tensors:
        raise FactraceError(f"{type(optimizer).__name__} keeps no second moment factrace can "
                            "correct with (Adam, AdamW or Adafactor state)")
    meta = {"optimizer": type(optimizer).__name__,
            "step": str(steps.pop()) if len(steps) == 1 else "",
            "beta2": str(betas.pop()) if len(betas) == 1 else ""}
    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)
    sha = mf.write_bytes_atomic(Path(directory) / SECOND_MOMENT_FILE, data)
    return {"file": SECOND_MOMENT_FILE, "sha256": sha, "parameters": len(
        {k.rsplit(".exp_avg_sq", 1)[0] for k in tensors}), **meta}


def mark_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer,
                    tokenizer=None, step: int | None = None) -> Path:
    """Make a checkpoint directory one factrace takes as ``--model`` and ``--optimizer-state``:
    the second moment (:func:`save_second_moment`), the tokenizer when given and not saved yet,
    and ``factrace.json`` (written last: a directory with it is complete)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None and not any((directory / f).is_file() for f in
                                         ("tokenizer.json", "tokenizer_config.json")):
        tokenizer.save_pretrained(directory)
    moment = save_second_moment(directory, model, optimizer)
    marker = {"step": step, "second_moment": moment}
    mf.write_bytes_atomic(directory / MARKER, (json.dumps(marker, indent=1) + "\n").encode())
    return directory


class FactraceCallback(TrainerCallback):
    """Marks every checkpoint the Trainer saves for factrace (:func:`mark_checkpoint`) and, at
    the end of training, the final model (``OUTPUT_DIR/factrace-final``); then, when asked,
    builds a store of ``corpus`` at ``index`` from it (resumed if interrupted; an existing
    complete store of the same model gets ``corpus`` added if it lacks it) and scans
    ``queries`` into ``scan_out``. ``encoder``: an :class:`~factrace.config.EncoderConfig` for
    those (default: factrace's defaults)."""

    def __init__(self, index: str | None = None, corpus: str | None = None,
                 queries: str | None = None, scan_out: str | None = None,
                 checkpoints: bool = True, final: bool = True, encoder=None,
                 progress: bool = False):
        if index is not None and corpus is None:
            raise FactraceError("FactraceCallback(index=...) needs corpus=...")
        if (queries is None) != (scan_out is None) or (queries and corpus is None):
            raise FactraceError("FactraceCallback scans with queries=, scan_out= and corpus=")
        self.index, self.corpus, self.queries, self.scan_out = index, corpus, queries, scan_out
        self.checkpoints, self.final, self.encoder = checkpoints, final, encoder
        self.progress = progress
        self.marked: list[Path] = []

    def on_save(self, args, state, control, model=None, optimizer=None, processing_class=None,
                **kwargs: Any):
        if self.checkpoints and state.is_world_process_zero:
            directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.marked.append(mark_checkpoint(directory, model, optimizer, processing_class,
                                               state.global_step))

    def on_train_end(self, args, state, control, model=None, optimizer=None,
                     processing_class=None, **kwargs: Any):
        if not (self.final and state.is_world_process_zero):
            return
        final = Path(args.output_dir) / "factrace-final"
        model.save_pretrained(final)
        if processing_class is not None:
            processing_class.save_pretrained(final)
        self.marked.append(mark_checkpoint(final, model, optimizer, None, state.global_step))
        if self.index is not None:
            self._store(final)
        if self.queries is not None:
            self._scan(final)

    def _store(self, final: Path) -> None:
        from factrace.run.index import AddConfig, IndexConfig, add_to_index, build_index
        from factrace.store.encodings import EncodingStore

        done = (Path(self.index) / mf.MANIFEST).is_file() and \
            mf.read_manifest(Path(self.index)).get("complete")
        if done:
            store = EncodingStore.open(self.index, verify=False)
            if str(Path(self.corpus).resolve()) not in {
                    str(Path(c).resolve()) for c in store.corpora if c}:
                add_to_index(AddConfig(index=self.index, corpus=self.corpus, model=str(final),
                                       optimizer_state=str(final), progress=self.progress))
            return
        build_index(IndexConfig(model=str(final), corpus=self.corpus, out=self.index,
                                optimizer_state=str(final), progress=self.progress,
                                **({"encoder": self.encoder} if self.encoder else {})))

    def _scan(self, final: Path) -> None:
        from factrace.run.scan import ScanConfig, scan

        scan(ScanConfig(model=str(final), corpus=self.corpus, queries=self.queries,
                        out=self.scan_out, optimizer_state=str(final), progress=self.progress,
                        **({"encoder": self.encoder} if self.encoder else {})))
