"""The explorer under load: 50 browsing clients and 4 askers at once, on the tiny world's store
(``FACTRACE_LOAD_SECONDS``: how long, 20 s by default; ``benchmarks/serve_load.py`` is the
full run against any store)."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("FACTRACE_LOAD_SECONDS", "20"))
#: Resident memory the server may gain between the middle and the end of the run.
FLAT = 50 * 2**20


def _driver():
    path = Path(__file__).parents[2] / "benchmarks" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("serve_load", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("serve_load", module)  # its dataclasses look their module up
    spec.loader.exec_module(sys.modules["serve_load"])
    return sys.modules["serve_load"]


@pytest.fixture(scope="module")
def load_explorer(serve_inputs):
    """An explorer of its own (its model session's calls are counted here alone)."""
    from factrace.serve import ServeConfig, load_explorer

    i = serve_inputs
    return load_explorer(ServeConfig(index=i["index"], rankings=[i["trackstar"], i["bm25"]],
                                     qrels=i["qrels"], queries=i["queries"]))


def test_browsing_and_asking_at_once_lose_and_mix_up_nothing(load_explorer, served,
                                                            monkeypatch):
    from factrace.serve import model

    drive = _driver()
    # two answers kept: the asks below (six distinct) keep running the model under load
    monkeypatch.setattr(model, "KEPT_ANSWERS", 2)
    session = load_explorer.session
    # a queue of 2 behind the running call: the fourth asker at once is answered 503
    with served(load_explorer, max_queue=2) as url:
        paths = drive.browse_paths(url)
        assert len(paths) >= 10 and any("/api/passages/" in p for p in paths)
        asks = drive.ask_mix(drive.first_prompts(url, 3), new_tokens=(2, 4), top_ks=(5,))
        assert len({a["prompt"] for a in asks}) == 3
        browse, answers = drive.expected(url, paths, asks)
        assert len({a["completion"] for a in answers}) > 1  # the answers tell asks apart
        calls = session.calls
        load = drive.run_load(url, browse, asks, answers, SECONDS, clients=50, askers=4,
                              rss=drive.rss_of)
    summary = load.summary()
    print(summary)
    assert not load.problems, load.problems
    assert all(s == 200 for (kind, s) in load.statuses if kind == "browse"), summary
    assert all(s in (200, 503) for (kind, s) in load.statuses if kind == "ask"), summary
    assert load.statuses["browse", 200] >= 50, summary
    assert load.statuses["ask", 200] >= 4, summary
    assert session.calls - calls >= 4  # the model ran under load, not only the kept answers
    assert load.rss["end"] - load.rss["middle"] < FLAT, summary
