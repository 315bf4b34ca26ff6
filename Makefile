# dicomrpc: `make serve` runs the archive, `make test` checks everything CI checks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The installs are reproducible: every package, its version and its hashes come from a lock
# (requirements/*.lock, written by `make lock` from pyproject.toml).
SERVER_STAMP := $(VENV)/.installed-server
TEST_STAMP := $(VENV)/.installed-test
LOCK_VENV := .venv-lock
PIP_COMPILE := $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	--strip-extras --no-emit-index-url --no-emit-find-links

.PHONY: install install-server serve test test-slow lint typecheck unit slow shared proto bench lock \
	clean docs

install: $(TEST_STAMP)

install-server: $(SERVER_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The server and its runtime dependencies only: what `make serve` needs.
$(SERVER_STAMP): pyproject.toml requirements/server.lock | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes -r requirements/server.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# The same plus the test, lint and type-checking tools.
$(TEST_STAMP): pyproject.toml requirements/test.lock | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes -r requirements/test.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# The OHIF viewer at http://127.0.0.1:8042/ is fetched once into the cache (npm, network);
# without either, the archive serves all the same and its root page says how to get it.
serve: install-server
	@$(BIN)/dicomrpc viewer fetch || true
	$(BIN)/dicomrpc serve --data ./data

lint: install
	$(BIN)/ruff check client server tests bench proto
	$(BIN)/ruff format --check client server tests bench proto

typecheck: install
	$(BIN)/mypy

# The generated tables of the DICOM Conformance Statement, rewritten from the code's tables
# (tests/test_conformance_doc.py fails while they differ).
docs: install
	$(BIN)/python -m dicomrpc_server.conformance docs/conformance.md

# The everyday tests: everything but those marked slow (minutes each, several processes,
# PostgreSQL clusters, a browser, gigabytes); `make test` stays within a few minutes.
unit: install
	$(BIN)/pytest -m "not slow"

# The slow tests (CI runs them after `make test`).
slow: install
	$(BIN)/pytest -m slow

# The integration tests of the archive's everyday work (store, retrieve, search, delete, the
# change feed, workitems and their events, DICOMweb) again on the shared storage: a PostgreSQL
# index with the files in a shared folder, then in S3 (moto's emulator). The servers of these
# tests name no storage, so `--server-index` gives them a database and store of their own.
SHARED_FOLDER_TESTS := $(addprefix tests/integration/,test_server.py test_search.py \
	test_retrieve.py test_workitems.py test_workitem_events.py test_dicomweb_http.py \
	test_dicomweb_workitems.py test_retrieve_http_pull.py test_dimse_store.py)
SHARED_S3_TESTS := $(addprefix tests/integration/,test_retrieve.py test_search.py \
	test_workitem_events.py test_dicomweb_workitems.py test_retrieve_http_pull.py \
	test_dimse_store.py)

shared: install
	$(BIN)/pytest -q --server-index=postgresql $(SHARED_FOLDER_TESTS)
	$(BIN)/pytest -q --server-index=postgresql-s3 $(SHARED_S3_TESTS)

test: lint typecheck unit

# What CI runs after `make test`: the slow tests, then the everyday suites on shared storage.
test-slow: slow shared

proto: install
	$(BIN)/python proto/generate.py

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/retrieve.py
	$(BIN)/python bench/workitems.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/dicomweb.py
	$(BIN)/python bench/auth.py
	$(BIN)/python bench/isolation.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/dimse.py

# Re-resolve the locks after a change of pyproject.toml's dependencies (needs the registry).
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || \
		($(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install --quiet pip-tools)
	$(PIP_COMPILE) --extra server -o requirements/server.lock pyproject.toml requirements/build.in
	$(PIP_COMPILE) --extra server --extra test -o requirements/test.lock pyproject.toml requirements/build.in

clean:
	rm -rf $(VENV) $(LOCK_VENV) build *.egg-info bench/.work
