"""Loading a causal LM and its tokenizer: a local Hugging Face directory, or one GGUF file.

A GGUF file (llama.cpp's format: weights, possibly quantised, hyperparameters and tokenizer in
one file) is loaded through transformers' GGUF support: its weights are de-quantised to the
requested dtype, so the model is traced as the float model the file describes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from factrace.errors import FactraceError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def pick_device(name: str | None = None) -> torch.device:
    """``None``/``"auto"`` → CUDA when present, else CPU; otherwise the named device."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise FactraceError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FactraceError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"`` → float32 (bfloat16 on CUDA); otherwise the named dtype."""
    if name in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise FactraceError(f"unknown dtype {name!r} (use one of {', '.join(sorted(_DTYPES))})")
    return _DTYPES[name]


@dataclass
class LoadedModel:
    """A causal LM in eval mode, its tokenizer and where they came from (a model directory or a
    GGUF file; ``None`` for a model built in memory)."""

    model: torch.nn.Module
    tokenizer: object
    path: Path | None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def pad_id(self) -> int:
        return pad_token_id(self.tokenizer)

    @property
    def max_length(self) -> int:
        return context_length(self.model, self.tokenizer)


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, falling back to EOS, then 0 (padding is masked out anyway)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def context_length(model, tokenizer=None) -> int:
    """The model's context: ``max_position_embeddings`` (or ``n_positions``), capped by the
    tokenizer's ``model_max_length`` when that is set to a real number."""
    config = model.config
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    n = int(n) if n else 2048
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**7:
        n = min(n, limit)
    return n


GGUF_SUFFIX = ".gguf"
GGUF_MAGIC = b"GGUF"


def is_gguf(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a GGUF file (by its suffix, or by its first bytes)."""
    path = Path(path)
    if path.suffix.lower() == GGUF_SUFFIX:
        return True
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def load_model(model_path: str | os.PathLike, device=None, dtype=None) -> LoadedModel:
    """Load ``AutoModelForCausalLM`` and its tokenizer, offline, from a Hugging Face model
    directory or a GGUF file."""
    path = Path(model_path)
    device = pick_device(device) if not isinstance(device, torch.device) else device
    dtype = pick_dtype(dtype, device) if not isinstance(dtype, torch.dtype) else dtype
    if is_gguf(path):
        return load_gguf(path, device, dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        what = "a file" if path.is_file() else ("a directory" if path.is_dir() else "not there")
        raise FactraceError(f"{path}: not a Hugging Face model directory (no config.json) nor a "
                            f"{GGUF_SUFFIX} file ({what})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as e:
        raise FactraceError(f"{path}: could not load model or tokenizer: {e}".splitlines()[0]) from e
    model.to(device).eval()
    return LoadedModel(model, tokenizer, path)


def gguf_architecture(path: Path) -> str:
    """``general.architecture`` of a GGUF file, read without loading a tensor.

    Raises:
        FactraceError: the file is missing, is not GGUF, or its header cannot be read.
    """
    if not path.is_file():
        raise FactraceError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise FactraceError(f"{path}: not a GGUF file (it does not start with the bytes "
                            f"{GGUF_MAGIC.decode()})")
    try:
        from gguf import GGUFReader
    except ImportError as e:
        raise FactraceError(f"{path}: reading GGUF files needs the 'gguf' package "
                            "(pip install gguf)") from e
    try:
        reader = GGUFReader(path)
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except KeyError:
        raise FactraceError(f"{path}: the GGUF file names no architecture "
                            "(general.architecture)") from None
    except Exception as e:  # a damaged header fails anywhere in the parser
        raise FactraceError(f"{path}: corrupt or truncated GGUF file "
                            f"({type(e).__name__}: {e})".splitlines()[0]) from e


@contextlib.contextmanager
def _gguf_progress():
    """transformers shows a bar of its own while it de-quantises a GGUF file, which its switch
    for progress bars does not reach: make that bar follow the switch (``-q`` silences it)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None or logging.is_progress_bar_enabled():
        yield
        return
    gguf_utils.tqdm = lambda *args, **kwargs: bar(*args, **{**kwargs, "disable": True})
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def load_gguf(path: Path, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """A GGUF file's model (de-quantised to ``dtype``) and tokenizer, through transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    architecture = gguf_architecture(path)
    # transformers reads the configuration and the tokenizer files of the directory it is given
    # before the GGUF's own metadata; an empty one keeps a GGUF next to another model's files
    # from being mixed with them
    try:
        with tempfile.TemporaryDirectory(prefix="factrace-gguf-") as empty, _gguf_progress():
            file = str(path.resolve())
            tokenizer = AutoTokenizer.from_pretrained(empty, gguf_file=file, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(empty, gguf_file=file, dtype=dtype,
                                                         local_files_only=True)
    except ImportError as e:
        raise FactraceError(f"{path}: loading a GGUF file needs {e}".splitlines()[0]) from e
    except Exception as e:  # transformers raises ValueError, KeyError, ... for what it cannot map
        from transformers import __version__

        raise FactraceError(
            f"{path}: transformers {__version__} could not load this GGUF model (architecture "
            f"{architecture!r}): {type(e).__name__}: {e}".splitlines()[0]) from e
    model.config.name_or_path = str(path)
    model.to(device).eval()
    return LoadedModel(model, tokenizer, path)


def _hash_file_sampled(h, path: Path, samples: int = 64, chunk: int = 1 << 16) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        if size <= samples * chunk * 2:
            h.update(f.read())
            return
        for i in range(samples):
            f.seek((size - chunk) * i // (samples - 1))
            h.update(f.read(chunk))


def file_fingerprint(path: str | os.PathLike) -> str:
    """A fingerprint of one file's size and sampled bytes (every byte of a small file)."""
    h = hashlib.sha256()
    _hash_file_sampled(h, Path(path))
    return h.hexdigest()[:16]


def model_fingerprint(loaded: LoadedModel) -> str:
    """A fingerprint of the weights: sampled bytes of the weight files (every byte of small files;
    a GGUF file is the weight file) or, for a model built in memory, of every parameter."""
    h = hashlib.sha256()
    files = []
    if loaded.path is not None and loaded.path.is_file():
        files = [loaded.path]
    elif loaded.path is not None:
        files = sorted(p for p in loaded.path.iterdir() if p.suffix in (".safetensors", ".bin"))
    if files:
        for p in files:
            _hash_file_sampled(h, p)
    else:
        for name, param in loaded.model.state_dict().items():
            h.update(name.encode())
            h.update(param.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """A fingerprint of the vocabulary, merges and special tokens. The backend's truncation and
    padding settings are left out: calling the tokenizer with ``truncation=True`` (or saving it
    after) changes them, not what it tokenizes into."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        plain = Tokenizer.from_str(backend.to_str())
        plain.no_truncation()
        plain.no_padding()
        h.update(plain.to_str().encode())
    elif hasattr(tokenizer, "get_vocab"):
        for token, idx in sorted(tokenizer.get_vocab().items()):
            h.update(f"{token}\t{idx}\n".encode())
    else:
        h.update(type(tokenizer).__qualname__.encode())
    h.update(repr(sorted(map(str, getattr(tokenizer, "all_special_tokens", [])))).encode())
    return h.hexdigest()[:16]
