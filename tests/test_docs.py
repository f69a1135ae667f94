"""The documentation: every citation of docs/design.md names one of its sections, and the API
reference builds from the docstrings (docs/build_api.py, what `make docs` runs) without the
network."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
CITATION = re.compile(r'docs/design\.md(\s*§\s*"([^"\n]+)")?')


def headings() -> set[str]:
    return {line.lstrip("#").strip() for line in DESIGN.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")}


def citations() -> list[tuple[str, str | None]]:
    """``(file:line, section or None)`` of each mention of docs/design.md in the package."""
    found = []
    for path in sorted((ROOT / "src" / "factrace").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for match in CITATION.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{path.relative_to(ROOT)}:{line}", match.group(2)))
    return found


def test_every_design_citation_names_a_section_that_exists():
    known = headings()
    found = citations()
    assert len(found) >= 10  # the docstrings of the method, the evaluation and the formats
    unnamed = [where for where, section in found if section is None]
    missing = [(where, section) for where, section in found
               if section is not None and section not in known]
    assert not unnamed, f"cite a section: docs/design.md § \"<heading>\" at {unnamed}"
    assert not missing, f"no such heading in docs/design.md: {missing}"


def test_no_docstring_cites_a_design_file_that_is_not_there():
    stale = [str(path.relative_to(ROOT)) for path in (ROOT / "src").rglob("*.py")
             if "DESIGN.md" in path.read_text(encoding="utf-8")]
    assert not stale


@pytest.mark.slow
def test_the_api_reference_builds_offline(tmp_path):
    out = tmp_path / "api"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           # any attempt to reach the network fails at once
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "build_api.py"), "--out",
                             str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "index.html").is_file()
    top = (out / "factrace.html").read_text(encoding="utf-8")
    for name in ("Encoder", "Tracer", "scan", "build_index", "trace", "attribution_metrics"):
        assert f'id="{name}"' in top, name
    for module in ("data/io", "data/sources", "encode/encoder", "encode/whitening",
                   "store/locations", "evaluate/metrics", "run/tracer"):
        assert (out / "factrace" / f"{module}.html").is_file(), module
    pages = "".join(p.read_text(encoding="utf-8") for p in out.rglob("*.html"))
    assert "Optimizer correction" in pages  # docstrings are rendered, citations included
    assert not re.search(r'<(script|link)[^>]+(src|href)="https?://', pages)  # nothing fetched
