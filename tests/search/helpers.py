"""Helpers for the search tests: random unit-norm encodings and small stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from factrace.store import StoreWriter

FINGERPRINTS = {"model": "m-abc", "tokenizer": "t-1", "projection_seed": "0", "r": "r-9"}


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    """``[n, dim]`` float32 rows of unit norm."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def shard_data(sizes: list[int], dim: int, seed: int = 0) -> list[tuple[list[str], np.ndarray]]:
    """Shards of the given sizes with ids ``doc-0, doc-1, ...`` in row order."""
    x = unit_rows(sum(sizes), dim, seed)
    shards, start = [], 0
    for size in sizes:
        shards.append(([f"doc-{i}" for i in range(start, start + size)], x[start : start + size]))
        start += size
    return shards


def write_store(path: Path, shards, dim: int, fingerprints=FINGERPRINTS, finish=True) -> Path:
    writer = StoreWriter.create_or_resume(path, fingerprints, dim, {"d": dim, "layout": "layers"})
    for index, (ids, encodings) in enumerate(shards):
        writer.write_shard(index, ids, encodings)
    if finish:
        writer.finish()
    return path
