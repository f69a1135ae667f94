import shutil
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


@pytest.fixture(scope="session")
def store(world, tmp_path_factory):
    """One encoding store of the world corpus (TrackStar, d = 256, 4 shards of 16 rows), built
    once; its ``IndexConfig`` is returned. Read it only: a test that alters a store works on
    ``store_copy``."""
    from factrace.config import variant_config
    from factrace.run.index import IndexConfig, build_index

    cfg = IndexConfig(model=world["model"], corpus=world["corpus"],
                      out=str(tmp_path_factory.mktemp("store") / "store"),
                      queries=world["queries"], optimizer_state=world["optimizer"],
                      encoder=variant_config("trackstar", dim=256, train_examples=40,
                                             batch_tokens=512),
                      shard_rows=16, progress=False)
    build_index(cfg)
    return cfg


@pytest.fixture
def store_copy(store, tmp_path) -> Path:
    """A copy of the shared store, this test's own to alter."""
    return Path(shutil.copytree(store.out, tmp_path / "store"))


@pytest.fixture(scope="session")
def eos_model(world, tmp_path_factory) -> str:
    """A copy of the world's model whose first greedy token after "Alba was born in" is its EOS
    (set in generation_config.json, which no store fingerprint covers): it answers that prompt
    with an empty completion."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world["model"])
    model = AutoModelForCausalLM.from_pretrained(world["model"])
    with torch.no_grad():
        ids = torch.tensor([tok("Alba was born in")["input_ids"]])
        first = int(model(ids).logits[0, -1].argmax())
    copy = tmp_path_factory.mktemp("eos") / "model"
    shutil.copytree(world["model"], copy)
    config = copy / "generation_config.json"
    settings = json.loads(config.read_text()) if config.exists() else {}
    config.write_text(json.dumps({**settings, "eos_token_id": first}))
    return str(copy)
