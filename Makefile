# factrace: `make demo` runs the whole pipeline on the built-in fact world; `make test` runs the tests;
# `make docs` writes the API reference to docs/api/.
# Each creates ./.venv when missing. PyTorch is pinned to the 2.13.0 CPU wheel: an unpinned torch
# would pull a multi-GB CUDA build.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
TORCH  ?= torch==2.13.0
OUT    ?= demo_out

.PHONY: install test lint demo bench docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks

test: lint
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/factrace demo --out $(OUT) --overwrite

bench: $(STAMP)
	$(PY) benchmarks/encode.py

# the API reference, from the docstrings (pdoc, offline): docs/api/index.html
docs: $(STAMP)
	$(PY) docs/build_api.py --out docs/api

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache docs/api
