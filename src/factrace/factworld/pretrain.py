"""Pretrain a tiny Llama on a fact-world corpus, the way a Hugging Face Trainer would.

:func:`pretrain` trains a byte-level BPE tokenizer on the corpus, then a small
``LlamaForCausalLM`` with AdamW (param groups exactly as ``Trainer.create_optimizer`` builds
them) under a warmup + cosine learning-rate schedule. Each passage is one sequence,
``tok(text)`` = BOS + passage, padded per batch; padding is ignored by the loss. Queries are
asked as BOS + prompt, the same format.

The output directory is a Hugging Face model directory (config, safetensors weights,
tokenizer) plus ``optimizer.pt`` (the optimizer ``state_dict``, Trainer convention),
``train_info.json`` (what was trained, how, and how well) and ``checkpoints/step-<N>/``: the
same, part-way through the run (:attr:`PretrainConfig.checkpoints`). It is keyed by a
fingerprint of the corpus, the queries, the configuration and :data:`CODE_VERSION`: calling again with the same
inputs returns at once. Training writes into a temporary directory that is renamed when
complete, so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from factrace.data.batching import collate
from factrace.data.corpus import iter_corpus
from factrace.data.io import read_queries
from factrace.data.tokenize import TokenizedExample
from factrace.errors import FactraceError
from factrace.factworld.accuracy import fact_accuracy
from factrace.factworld.tokenizer import train_tokenizer

CODE_VERSION = "1"
"""Bumped whenever a change here changes the trained model; part of the cache fingerprint."""

INFO_FILE = "train_info.json"
OPTIMIZER_FILE = "optimizer.pt"


@dataclass(frozen=True)
class PretrainConfig:
    """Tokenizer, model and optimisation of the tiny pretraining run. Defaults fit the demo
    world (about 3,000 passages) in a couple of minutes on two CPU cores."""

    vocab_size: int = 3072
    """Byte-level BPE vocabulary size (special tokens included)."""
    hidden_size: int = 128
    """Model width."""
    num_layers: int = 2
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads (no grouped-query attention)."""
    intermediate_size: int = 512
    """Width of the gated MLP."""
    max_length: int = 128
    """Longest training sequence in tokens, BOS included; longer passages are truncated."""
    epochs: int = 12
    """Passes over the corpus (facts stated once need many passes to be learnt)."""
    batch_size: int = 32
    """Passages per optimizer step."""
    learning_rate: float = 3e-3
    """Peak learning rate."""
    warmup_steps: int = 30
    """Linear warmup steps before the cosine decay."""
    min_lr_ratio: float = 0.1
    """The cosine decays to ``learning_rate * min_lr_ratio`` (not to zero, so the final
    learning rate, used by tail-patch, is meaningful)."""
    weight_decay: float = 0.01
    """AdamW weight decay of the decay group (biases and norm weights get none)."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables)."""
    seed: int = 0
    """Seed of the weight initialisation and of the batch order."""
    checkpoints: tuple[float, ...] = (0.25, 0.5)
    """Fractions of the run's optimizer steps after which the weights, the tokenizer, the
    optimizer state and ``train_info.json`` (steps and tokens seen so far) are also kept, in
    ``checkpoints/step-<N>/`` of the output: the same run, no extra training (the scaling
    study's tokens axis)."""
    num_threads: int = 2
    """CPU threads torch may use while training. Not part of the cache fingerprint: the trained
    weights do not depend on it. On a machine whose cores are busy with other work, 1 thread
    is much faster than 2 (threads waiting on each other at every small operation)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoints", tuple(self.checkpoints))  # as read from JSON
        if self.epochs < 1 or self.batch_size < 1:
            raise FactraceError("epochs and batch_size must be at least 1")
        if self.hidden_size % self.num_heads:
            raise FactraceError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if any(not 0 < f < 1 for f in self.checkpoints):
            raise FactraceError(f"checkpoints are fractions of the run in (0, 1); got "
                                f"{self.checkpoints}")
        if self.vocab_size < 260:
            raise FactraceError(
                f"vocab_size must be at least 260 (bytes + specials), got {self.vocab_size}"
            )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(corpus_path: Path, queries_path: Path | None, config: PretrainConfig) -> str:
    """Hash of everything the trained directory depends on."""
    settings = dataclasses.asdict(config)
    del settings["num_threads"]  # how fast, not what is trained
    parts = {
        "code_version": CODE_VERSION,
        "config": settings,
        "corpus": _sha256_file(corpus_path),
        "queries": _sha256_file(queries_path) if queries_path is not None else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def build_model(config: PretrainConfig, tokenizer) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama whose special tokens match ``tokenizer``."""
    torch.manual_seed(config.seed)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_length,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(model_config)


def decay_parameter_names(model: torch.nn.Module) -> list[str]:
    """Names of the parameters that get weight decay, as ``Trainer.get_decay_parameter_names``
    decides (everything but biases and norm weights)."""
    from transformers import Trainer

    return Trainer.get_decay_parameter_names(None, model)


def build_optimizer(model: torch.nn.Module, config: PretrainConfig) -> torch.optim.AdamW:
    """AdamW with the two param groups of ``Trainer.create_optimizer``: [decay, no decay], each
    in ``model.named_parameters()`` order."""
    decay = set(decay_parameter_names(model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": config.weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
    )


def learning_rate_at(step: int, total_steps: int, config: PretrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine decay to
    ``learning_rate * min_lr_ratio`` at the last step."""
    peak = config.learning_rate
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    decay_steps = max(1, total_steps - 1 - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    floor = peak * config.min_lr_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Batches of passage indices for one epoch: shuffled, then sorted by length within windows
    of 50 batches so that padding stays small, then the batches shuffled."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lengths.__getitem__)
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


@dataclass(frozen=True)
class TokenizedCorpus:
    """Token ids of every passage, concatenated: passage i is ``ids[offsets[i]:offsets[i + 1]]``
    (4 bytes a token, whatever the corpus size)."""

    ids: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> list[int]:
        return np.diff(self.offsets).tolist()


def tokenize_corpus(
    texts: Iterable[str], tokenizer, max_length: int, chunk: int = 4096
) -> TokenizedCorpus:
    """``tok(text)`` (BOS + passage) of every text, truncated to ``max_length`` tokens."""
    pieces: list[np.ndarray] = []
    lengths: list[int] = []
    batch: list[str] = []

    def flush() -> None:
        for ids in tokenizer(batch)["input_ids"]:
            pieces.append(np.asarray(ids[:max_length], dtype=np.int32))
            lengths.append(len(pieces[-1]))
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) == chunk:
            flush()
    if batch:
        flush()
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    return TokenizedCorpus(ids, offsets)


def training_inputs(sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (padding → -100): the
    batch :func:`~factrace.data.batching.collate` makes, as a Hugging Face model trains on it."""
    batch = collate([TokenizedExample(str(i), tuple(int(t) for t in seq), (1,) * len(seq))
                     for i, seq in enumerate(sequences)], pad_id)
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
            "labels": batch.input_ids.masked_fill(~batch.loss_mask, -100)}


def train(
    model,
    optimizer,
    sequences: TokenizedCorpus,
    pad_id: int,
    config: PretrainConfig,
    progress: bool = True,
    keep: Callable[[dict], None] | None = None,
) -> dict:
    """Train in place for ``config.epochs`` epochs; return step count, final learning rate and
    the mean loss of the last epoch. ``keep`` is called with the step count, tokens seen and
    learning rate so far after each step of ``config.checkpoints`` (model and optimizer as they
    are then)."""
    rng = random.Random(f"factworld-pretrain:{config.seed}")
    lengths = sequences.lengths()
    per_epoch = math.ceil(len(sequences) / config.batch_size)
    total = per_epoch * config.epochs
    kept = {max(1, round(f * total)) for f in config.checkpoints} - {total}
    model.train()
    step, lr, epoch_losses, tokens = 0, 0.0, [], 0
    bar = tqdm(total=total, desc="pretraining", unit="step", disable=not progress)
    for _ in range(config.epochs):
        epoch_losses = []
        for batch in epoch_batches(lengths, config.batch_size, rng):
            lr = learning_rate_at(step, total, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            inputs = training_inputs([sequences[i] for i in batch], pad_id)
            loss = model(**inputs).loss
            loss.backward()
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            epoch_losses.append(loss.item())
            tokens += int(inputs["attention_mask"].sum())
            step += 1
            if keep is not None and step in kept:
                keep({"steps": step, "tokens_seen": tokens, "final_learning_rate": lr})
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{epoch_losses[-1]:.3f}", lr=f"{lr:.2e}")
    bar.close()
    return {
        "steps": step,
        "final_learning_rate": lr,
        "final_train_loss": sum(epoch_losses) / max(1, len(epoch_losses)),
        "tokens_seen": tokens,
    }


def _check_out_dir(out: Path, fp: str) -> bool:
    """True if ``out`` already holds this very run; error if it holds something else."""
    info_path = out / INFO_FILE
    if info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        return info.get("fingerprint") == fp
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FactraceError(
            f"{out} exists and is not a factworld model directory; choose another output path"
        )
    return False


def pretrain(
    corpus_path: str | Path,
    queries_path: str | Path | None,
    out_dir: str | Path,
    config: PretrainConfig = PretrainConfig(),
    progress: bool = True,
) -> Path:
    """Pretrain a tiny Llama on ``corpus_path`` into ``out_dir`` and return ``out_dir``.

    If ``out_dir`` already holds a run with the same fingerprint it is returned untouched; a
    run made from other inputs is replaced. ``queries_path`` (optional) is only used to measure
    fact accuracy after training.
    """
    corpus_path, out = Path(corpus_path), Path(out_dir)
    queries_path = Path(queries_path) if queries_path is not None else None
    for path in (corpus_path, queries_path):
        if path is not None and not path.is_file():
            raise FactraceError(f"{path}: no such file")
    fp = fingerprint(corpus_path, queries_path, config)
    if _check_out_dir(out, fp):
        return out

    started = time.perf_counter()
    queries = read_queries(queries_path) if queries_path is not None else []

    def texts() -> Iterator[str]:
        return (passage.text for passage in iter_corpus(corpus_path))

    threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        tokenizer = train_tokenizer(texts(), config.vocab_size, config.max_length)
        sequences = tokenize_corpus(texts(), tokenizer, config.max_length)
        if not len(sequences):
            raise FactraceError(f"{corpus_path}: the corpus is empty")
        model = build_model(config, tokenizer)
        optimizer = build_optimizer(model, config)
        snapshots: list[Snapshot] = []

        def keep(stats: dict) -> None:
            snapshots.append(Snapshot({k: v.detach().clone() for k, v in
                                       model.state_dict().items()},
                                      copy.deepcopy(optimizer.state_dict()), stats))

        stats = train(model, optimizer, sequences, tokenizer.pad_token_id, config, progress,
                      keep)
        accuracy = fact_accuracy(model, tokenizer, queries) if queries else None
    finally:
        torch.set_num_threads(threads)
    info = {
        "fingerprint": fp,
        "code_version": CODE_VERSION,
        "corpus": str(corpus_path),
        "queries": str(queries_path) if queries_path is not None else None,
        "n_passages": len(sequences),
        "n_queries": len(queries),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        **stats,
        "epochs": config.epochs,
        "betas": [config.adam_beta1, config.adam_beta2],
        "eps": config.adam_epsilon,
        "weight_decay": config.weight_decay,
        "fact_accuracy": accuracy,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "config": dataclasses.asdict(config),
        "checkpoints": [snapshot.name for snapshot in snapshots],
    }
    _save(out, model, tokenizer, optimizer, info, snapshots)
    return out


@dataclass(frozen=True)
class Snapshot:
    """The model and optimizer part-way through the run (:attr:`PretrainConfig.checkpoints`)."""

    weights: dict
    optimizer: dict
    stats: dict

    @property
    def name(self) -> str:
        """Its directory inside the run's: ``checkpoints/step-<N>``."""
        return f"checkpoints/step-{self.stats['steps']}"


def _save_snapshot(root: Path, snapshot: Snapshot, model, tokenizer, info: dict) -> None:
    folder = root / snapshot.name
    model.save_pretrained(folder, state_dict=snapshot.weights)
    tokenizer.save_pretrained(folder)
    torch.save(snapshot.optimizer, folder / OPTIMIZER_FILE)
    record = {**snapshot.stats, "n_parameters": info["n_parameters"],
              "checkpoint_of": info["fingerprint"], "total_steps": info["steps"],
              "betas": info["betas"], "eps": info["eps"], "weight_decay": info["weight_decay"]}
    (folder / INFO_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _save(out: Path, model, tokenizer, optimizer, info: dict,
          snapshots: Sequence[Snapshot] = ()) -> None:
    """Write everything into a temporary sibling directory, then swap it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        for snapshot in snapshots:
            _save_snapshot(tmp, snapshot, model, tokenizer, info)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
