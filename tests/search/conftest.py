"""Fixtures for the search tests."""

from __future__ import annotations

import pytest

from factrace.store import EncodingStore

from .helpers import shard_data, write_store


@pytest.fixture
def small_store(tmp_path) -> EncodingStore:
    """A 3-shard store of 700 rows, dim 32."""
    path = write_store(tmp_path / "store", shard_data([300, 250, 150], 32), 32)
    return EncodingStore.open(path)
