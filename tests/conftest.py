import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A tiny corpus, queries and a briefly trained Llama directory with optimizer.pt."""
    from hfdir import make_model_dir, write_corpus, write_queries

    root = tmp_path_factory.mktemp("world")
    rows = write_corpus(root / "corpus.jsonl")
    write_queries(root / "queries.jsonl")
    model = make_model_dir(root, rows)
    return {"root": root, "corpus": str(root / "corpus.jsonl"),
            "queries": str(root / "queries.jsonl"), "model": str(model),
            "optimizer": str(model / "optimizer.pt"), "rows": rows}
