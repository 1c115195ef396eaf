PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test run schema screenshots bench profile clean

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The suite in TEST_WORKERS processes (pytest-xdist), each with its own
# PostgreSQL server, browser and services; the tests of one xdist_group mark
# run in one of them. The 15 slowest are listed at the end.
TEST_WORKERS ?= 4
# Each worker and each service a test starts imports the project: compiled once
# and kept (__pycache__, ignored by git), even where the environment says not to.
test: export PYTHONDONTWRITEBYTECODE =
test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy --strict src
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15

# Serve the API on http://127.0.0.1:8080, data in ./data/ (see "Configuration" in README.md).
run: $(STAMP)
	$(BIN)/migration-api serve

# Rewrite schema.yaml from the served OpenAPI document; a test fails while they differ.
schema: $(STAMP)
	$(BIN)/python -m entrypoints.http.schema_file schema.yaml

# The console screenshots the README shows, taken by the journey tests in Debian's Chromium.
README_SHOTS := migration overview migration-390
screenshots: $(STAMP)
	$(BIN)/python -m pytest -q tests/browser/test_journey.py -k "newcomer or phone"
	mkdir -p docs/screenshots
	for shot in $(README_SHOTS); do cp build/screenshots/$$shot.png docs/screenshots/; done

$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

# Figures only, no pass or fail: see docs/benchmarks.md. Uses wrk when installed.
bench: $(VENV)/.bench-installed
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/fleets.py $(FLEETS_ARGS)
	$(BIN)/python bench/streams.py $(STREAMS_ARGS)
	$(BIN)/python bench/copies.py $(COPY_ARGS)

# Where the service spends a phase's time: make profile PHASE=list
profile: $(VENV)/.bench-installed
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/profile.py $(PHASE)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .hypothesis
