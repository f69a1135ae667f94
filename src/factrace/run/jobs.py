"""What every job that encodes a corpus needs: the model, the encoder and where to run."""

from __future__ import annotations

from dataclasses import dataclass, field

from factrace.config import EncoderConfig
from factrace.data.outputs import check_at_least
from factrace.data.sources import Source
from factrace.run.engines import make_engine
from factrace.run.progress import say_coverage
from factrace.run.worker import EncoderSpec

SHARD_ELEMENTS = 1 << 26
MIN_SHARD_ROWS, MAX_SHARD_ROWS = 256, 8192


def row_ranges(n_rows: int, rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each shard of ``rows`` corpus rows (the last one shorter)."""
    return [(start, min(start + rows, n_rows)) for start in range(0, n_rows, rows)]


@dataclass(kw_only=True)
class EncodingJob:
    """Options shared by ``scan`` and ``index build``."""

    model: str
    """Hugging Face model directory, or a GGUF file."""
    corpus: str | Source
    """Training corpus (JSONL, Parquet, Arrow, saved HF dataset, or a directory of them); a
    :class:`~factrace.data.sources.Source` when its fields are columns of other names."""
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
    shard_rows: int | None = None
    """Corpus rows per task and store shard: memory is bounded by one task's encodings. ``None``:
    as many rows as fit :data:`SHARD_ELEMENTS` float32 values (256 MiB), 256 to 8192 rows."""
    progress: bool = True

    def check_options(self) -> None:
        """Refuse counts below 1, before any model is loaded."""
        check_at_least(1, workers=self.workers, shard_rows=self.shard_rows,
                       train_examples=self.encoder.train_examples)

    def rows_per_shard(self, dim: int) -> int:
        # Encoding runs batch by batch within a shard, so a small shard wastes its last, partly
        # filled batch and sorts fewer examples by length (more padding).
        if self.shard_rows:
            return self.shard_rows
        return max(MIN_SHARD_ROWS, min(MAX_SHARD_ROWS, SHARD_ELEMENTS // dim))

    def make_engine(self):
        spec = EncoderSpec(str(self.model), self.optimizer_state, self.encoder)
        engine = make_engine(self.engine, spec, self.workers, self.ray_address,
                             self.gpus_per_worker)
        say_coverage(engine.encoder.coverage, self.progress)
        return engine
