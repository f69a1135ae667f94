"""``factrace scan --scores-out`` then ``factrace eval --lds``, as a user runs them: generated
subsets written, outputs from the user's own retrainings read back, bad input refused in one
line before anything is written."""

import json

import numpy as np
import pytest
from test_lds import brute_lds

from factrace.cli import main
from factrace.evaluate.lds import read_subsets
from factrace.search.full import read_scores

FAST = ["--dim", "64", "--train-examples", "16", "-q"]


def _eval(*argv):
    return main(["eval", "--lds", *map(str, argv)])


@pytest.fixture(scope="module")
def scored(world, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lds-cli")
    scores = folder / "trackstar.npz"
    argv = ["scan", "--model", world["model"], "--optimizer-state", world["optimizer"],
            "--corpus", world["corpus"], "--queries", world["queries"],
            "--out", str(folder / "r.jsonl"), "--scores-out", str(scores), *FAST]
    assert main(argv) == 0
    return folder, scores


def _outputs(path, subsets, query_ids, rng, seeds=(0,)):
    """Outputs of a made-up retraining: log-probabilities, one row per (subset, query, seed)."""
    rows = [{"subset": s.id, "query_id": q, "output": float(-rng.random() * 5), "seed": seed}
            for s in subsets for q in query_ids for seed in seeds]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {(r["subset"], r["query_id"]): r["output"] for r in rows}


def test_generate_subsets_then_evaluate_outputs(scored, capsys):
    folder, scores = scored
    subsets_path = folder / "subsets.jsonl"
    assert _eval("--scores", scores, "--lds-subsets", 6, "--subsets-out", subsets_path) == 0
    subsets = read_subsets(subsets_path)
    full = read_scores(scores)
    passages = {d.split("#")[0] for d in full.doc_ids}
    assert len(subsets) == 6 and all(len(s.passages) == round(len(passages) / 2)
                                     for s in subsets)
    rng = np.random.default_rng(0)
    outputs = _outputs(folder / "outputs.jsonl", subsets, full.query_ids, rng)
    capsys.readouterr()
    assert _eval("--scores", scores, "--subsets", subsets_path, "--outputs",
                 folder / "outputs.jsonl", "--out", folder / "lds.json") == 0
    printed = capsys.readouterr().out
    record = json.loads((folder / "lds.json").read_text())
    expected = brute_lds(full.scores.astype(np.float64).tolist(), full.doc_ids, full.query_ids,
                         subsets, outputs)
    got = record["methods"]["trackstar"]
    assert got["mean"] == pytest.approx(expected, abs=1e-9)
    assert f"trackstar  {got['mean']:.3f} ± {got['stderr']:.3f}" in printed
    assert "random-subsets (TRAK): 6 subsets keeping 50%" in printed
    # the same outputs given as losses flip the sign
    losses = folder / "losses.jsonl"
    losses.write_text("".join(json.dumps({**r, "output": -r["output"]}) + "\n" for r in map(
        json.loads, (folder / "outputs.jsonl").read_text().splitlines())))
    assert _eval("--scores", scores, "--subsets", subsets_path, "--outputs", losses,
                 "--output-kind", "loss", "--out", folder / "loss.json") == 0
    flipped = json.loads((folder / "loss.json").read_text())["methods"]["trackstar"]["mean"]
    assert flipped == pytest.approx(got["mean"], abs=1e-12)


def test_missing_pairs_and_bad_options_are_one_line_errors(scored, capsys):
    folder, scores = scored
    subsets_path = folder / "subsets2.jsonl"
    assert _eval("--scores", scores, "--lds-subsets", 3, "--seed", 1,
                 "--subsets-out", subsets_path) == 0
    subsets = read_subsets(subsets_path)
    query_ids = read_scores(scores).query_ids
    _outputs(folder / "part.jsonl", subsets[:2], query_ids, np.random.default_rng(1))
    out = folder / "never.json"
    cases = [
        (("--scores", scores, "--subsets", subsets_path, "--outputs", folder / "part.jsonl",
          "--out", out), f"no output for subset 's002' and query {query_ids[0]!r}"),
        (("--subsets", subsets_path, "--outputs", folder / "part.jsonl"), "--scores"),
        (("--scores", scores, "--outputs", folder / "part.jsonl"), "--subsets"),
        (("--scores", scores, "--subsets", subsets_path), "--outputs"),
        (("--scores", scores, "--lds-subsets", 1, "--subsets-out", out), "at least 2 subsets"),
        (("--scores", scores, "--lds-subsets", 4, "--lds-fraction", 1.2, "--subsets-out", out),
         "fraction"),
        (("--scores", folder / "nothing.npz", "--subsets", subsets_path, "--outputs",
          folder / "part.jsonl"), "no such file"),
        (("--scores", scores, "--subsets", subsets_path, "--outputs", folder / "part.jsonl",
          "--output-kind", "prob"), "--output-kind"),
        (("--scores", scores, "--rankings", folder / "r.jsonl", "--subsets", subsets_path,
          "--outputs", folder / "part.jsonl"), "--rankings"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert _eval(*argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err, (argv, err)
    assert not out.exists()
    capsys.readouterr()
    assert main(["eval", "--qrels", str(folder / "q.jsonl")]) == 2
    assert "eval needs --rankings" in capsys.readouterr().err


def test_trace_scores_out_and_demo_lds_options(store, scored, tmp_path, capsys):
    _, scanned = scored
    path = tmp_path / "traced.npz"
    assert main(["trace", "--index", store.out, "--queries", store.queries, "--out",
                 str(tmp_path / "t.jsonl"), "--scores-out", str(path), "-q"]) == 0
    traced = read_scores(path)
    assert traced.scores.shape == (len(read_scores(scanned).query_ids), len(traced.doc_ids))
    for argv, message in [(["--lds", "1"], "at least 2 subsets"),
                          (["--lds", "4", "--lds-fraction", "1"], "fraction"),
                          (["--lds", "4", "--engine", "spark"], "unknown engine"),
                          (["--lds", "4", "--workers", "0"], "--workers must be at least 1")]:
        capsys.readouterr()
        assert main(["demo", "--out", str(tmp_path / "demo"), *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "demo").exists()
