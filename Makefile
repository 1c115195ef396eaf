PYTHON ?= python3
# make run serves from .venv, which holds the runtime alone; the test kit (and
# the benchmarks' tools) live in .venv-test. Both install exact versions with
# their hashes from the locks requirements.txt and requirements-test.txt (make lock writes them).
RUN_VENV := .venv
TEST_VENV := .venv-test
LATEST_VENV := .venv-latest
UV_VENV := .venv-uv
RUNTIME_LOCK := requirements.txt
TEST_LOCK := requirements-test.txt
# The tool that writes the locks and installs them, pinned like everything
# else: it installs the test kit on a fresh clone in seconds, where pip took
# fifty.
UV_TOOL := uv==0.13.9
UV := $(UV_VENV)/bin/uv
# Every lock covers every platform, for Python 3.11 and later (requires-python).
COMPILE := $(UV) pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes --quiet --custom-compile-command "make lock"

.PHONY: test test-latest run lock schema screenshots bench profile clean

# A venv ($1) holding exactly a lock ($2) and the project itself, editable;
# $3: more options for the lock's install. uv makes the venv too (with pip, as
# `python -m venv` would, in a third of its time).
define install
	test -x $(1)/bin/python || $(UV) venv --quiet --seed --allow-existing --python $(PYTHON) $(1)
	$(UV) pip install --quiet --python $(1)/bin/python --require-hashes --no-deps $(3) -r $(2)
	$(UV) pip install --quiet --python $(1)/bin/python --no-deps -e .
	touch $@
endef

# Reinstall only when a lock changes (a newer uv alone changes nothing). The
# runtime is compiled to bytecode as it installs: `make run` may run where the
# environment forbids writing it (PYTHONDONTWRITEBYTECODE), and every start
# would compile it again. The test kit is not: `make test` writes what it imports.
$(RUN_VENV)/.installed: $(RUNTIME_LOCK) pyproject.toml | $(UV_VENV)/.installed
	$(call install,$(RUN_VENV),$(RUNTIME_LOCK),--compile-bytecode)

$(TEST_VENV)/.installed: $(TEST_LOCK) pyproject.toml | $(UV_VENV)/.installed
	$(call install,$(TEST_VENV),$(TEST_LOCK))

# The suite in TEST_WORKERS processes (pytest-xdist), each with its own
# PostgreSQL server, browser and services; the tests of one xdist_group mark
# run in one of them. The 15 slowest are listed at the end. Five on two cores:
# while tests wait on a lease or a timeout, a fifth can keep the cores busy
# (idle core-seconds over whole runs: 28 to 42 with four; 15, 16 and 34 with five).
TEST_WORKERS ?= 5
# The venv the suite runs in: make test-latest points it elsewhere.
SUITE_VENV ?= $(TEST_VENV)
# Each worker and each service a test starts imports the project: compiled once
# and kept (__pycache__, ignored by git), even where the environment says not to.
test: export PYTHONDONTWRITEBYTECODE =
# In a venv the suite has not run in yet, one collection beside mypy compiles
# the modules, rewrites the tests' asserts and fills Hypothesis's caches once,
# which every worker would otherwise do at the same time: on a fresh clone,
# 10 to 17 s sooner at the first test.
test: $(SUITE_VENV)/.installed
	$(SUITE_VENV)/bin/ruff check src tests bench
	test $(SUITE_VENV)/.warmed -nt $(SUITE_VENV)/.installed || { \
	    $(SUITE_VENV)/bin/python -m pytest -q --collect-only -p no:xdist -p no:cacheprovider >/dev/null 2>&1 \
	    && touch $(SUITE_VENV)/.warmed; } & \
	$(SUITE_VENV)/bin/mypy --strict src; typed=$$?; wait; exit $$typed
	$(SUITE_VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15

# Serve the API on http://127.0.0.1:8080, data in ./data/ (see "Configuration" in README.md).
run: $(RUN_VENV)/.installed
	$(RUN_VENV)/bin/migration-api serve

$(UV_VENV)/.installed:
	test -x $(UV_VENV)/bin/python || $(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install --quiet '$(UV_TOOL)'
	touch $@

# Move both locks to the newest versions pyproject.toml's ranges allow; the test
# kit's lock keeps the runtime's versions. Commit them once make test passes.
lock: $(UV_VENV)/.installed
	$(COMPILE) --upgrade -o $(RUNTIME_LOCK)
	$(COMPILE) --upgrade --extra dev --extra bench --constraint $(RUNTIME_LOCK) -o $(TEST_LOCK)

# The suite against the newest versions the ranges allow, in a venv of its own,
# locks untouched: drift found on purpose, before it reaches an install.
build/latest.txt: $(UV_VENV)/.installed pyproject.toml
	mkdir -p build
	$(COMPILE) --upgrade --extra dev --extra bench -o $@

$(LATEST_VENV)/.installed: build/latest.txt
	$(call install,$(LATEST_VENV),build/latest.txt)

test-latest: $(LATEST_VENV)/.installed
	$(MAKE) test SUITE_VENV=$(LATEST_VENV)

# Rewrite schema.yaml from the served OpenAPI document; a test fails while they differ.
schema: $(RUN_VENV)/.installed
	$(RUN_VENV)/bin/python -m entrypoints.http.schema_file schema.yaml

# The console screenshots the README shows, taken by the journey tests in Debian's Chromium.
README_SHOTS := migration overview migration-390
screenshots: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python -m pytest -q tests/browser/test_journey.py -k "newcomer or phone"
	mkdir -p docs/screenshots
	for shot in $(README_SHOTS); do cp build/screenshots/$$shot.png docs/screenshots/; done

# Figures only, no pass or fail: see docs/benchmarks.md. Uses wrk when installed.
bench: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python bench/run.py $(BENCH_ARGS)
	$(TEST_VENV)/bin/python bench/fleets.py $(FLEETS_ARGS)
	$(TEST_VENV)/bin/python bench/streams.py $(STREAMS_ARGS)
	$(TEST_VENV)/bin/python bench/copies.py $(COPY_ARGS)

# Where the service spends a phase's time: make profile PHASE=list
profile: $(TEST_VENV)/.installed
	PATH=$(CURDIR)/$(TEST_VENV)/bin:$$PATH $(TEST_VENV)/bin/python bench/profile.py $(PHASE)

clean:
	rm -rf $(RUN_VENV) $(TEST_VENV) $(LATEST_VENV) $(UV_VENV) .pytest_cache .mypy_cache .hypothesis
