# dicomrpc: `make serve` runs the archive, `make test` checks everything CI checks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint typecheck unit proto bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

serve: install
	$(BIN)/dicomrpc serve --data ./data

lint: install
	$(BIN)/ruff check client server tests bench proto
	$(BIN)/ruff format --check client server tests bench proto

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest

test: lint typecheck unit

proto: install
	$(BIN)/python proto/generate.py

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/retrieve.py
	$(BIN)/python bench/workitems.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/dicomweb.py

clean:
	rm -rf $(VENV) build *.egg-info bench/.work
