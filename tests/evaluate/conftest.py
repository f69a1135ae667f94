"""Fixtures of the evaluation tests."""

from pathlib import Path

import pytest
import torch
from trained_tiny import FACTS, UNRELATED, build_model, one_thread, train

from factrace.model.load import LoadedModel
from tiny import CharTokenizer


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> tuple[LoadedModel, Path]:
    """(loaded model, path of its saved AdamW state), trained on FACTS and UNRELATED."""
    with one_thread():
        model = build_model()
        optimizer = train(model, list(FACTS.values()) + list(UNRELATED.values()))
    path = tmp_path_factory.mktemp("trained") / "optimizer.pt"
    torch.save(optimizer.state_dict(), path)
    return LoadedModel(model, CharTokenizer(), None), path


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield
