import pytest
from hfdir import make_model_dir, write_corpus, write_queries


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    rows = write_corpus(root / "corpus.jsonl")
    write_queries(root / "queries.jsonl")
    model = make_model_dir(root, rows)
    return {"root": root, "corpus": str(root / "corpus.jsonl"),
            "queries": str(root / "queries.jsonl"), "model": str(model),
            "optimizer": str(model / "optimizer.pt"), "rows": rows}
