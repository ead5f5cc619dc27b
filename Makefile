# Two commands for a new user:  `make run` (set up + start the app)   `make test` (set up + run the tests)
# `make setup` installs requirements.txt, then histo_core itself in editable mode (`pip install -e .`).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8501

.PHONY: setup run test test-fast test-browser lint bench clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/python serve.py --server.port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest

# Two pytest workers (pytest-xdist): the fast tests are single-threaded, so on 2 cores this halves the time.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not browser" -n 2

# ruff (lint + format check) over the repository, mypy over histo_core, the declared layers (import-linter
# contracts in pyproject.toml: no cycles, no import of a higher layer, no Streamlit in histo_core) and the
# 500-line rule (.ci/max_lines.py)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	PYTHONPATH=$(CURDIR) $(BIN)/lint-imports --no-cache --no-logo
	$(BIN)/python .ci/max_lines.py --max 500 histo_core pages app.py serve.py

test-browser: $(STAMP)
	HISTO_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -m browser

bench: $(STAMP)
	$(BIN)/python benchmarks/train_speed.py --json
	$(BIN)/python benchmarks/infer_speed.py --json
	$(BIN)/python benchmarks/pcam_memory.py --json --tiles 10000,20000
	$(BIN)/python benchmarks/busy_machine.py --json --epochs 5

clean:
	rm -rf $(VENV) .pytest_cache
