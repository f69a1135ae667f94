"""What every job that encodes a corpus needs: the model, the encoder and where to run."""

from __future__ import annotations

from dataclasses import dataclass, field

from factrace.config import EncoderConfig
from factrace.run.engines import make_engine
from factrace.run.worker import EncoderSpec


@dataclass(kw_only=True)
class EncodingJob:
    """Options shared by ``scan`` and ``index build``."""

    model: str
    """Hugging Face model directory."""
    corpus: str
    """Training corpus (JSONL, Parquet, saved HF dataset, or a directory of them)."""
    optimizer_state: str | None = None
    """Optimizer state file (HF ``optimizer.pt``, torch state_dict or safetensors)."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """How examples are encoded (a variant plus overrides)."""
    engine: str = "local"
    """``local`` or ``ray``."""
    workers: int = 2
    """Ray actors (model replicas)."""
    ray_address: str | None = None
    """An existing Ray cluster; ``None`` starts a local Ray for the run."""
    gpus_per_worker: float = 0.0
    """GPUs per Ray actor."""
    shard_rows: int = 512
    """Corpus rows per task: memory is bounded by one task's encodings."""
    progress: bool = True

    def make_engine(self):
        spec = EncoderSpec(str(self.model), self.optimizer_state, self.encoder)
        return make_engine(self.engine, spec, self.workers, self.ray_address,
                           self.gpus_per_worker)
