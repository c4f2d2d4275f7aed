# The two commands: `make run` (the whole stack, foreground) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: run test chaos lint typecheck proto envoy-config bench sim clean help

help:
	@echo "make run    - start Redis/Postgres (if needed), the four services and Envoy"
	@echo "make test   - stubs/protos/envoy checks, ruff, mypy and the test suite"
	@echo "make chaos  - the chaos tests at full size (CHAOS_SESSIONS=1000 SDK sessions)"
	@echo "make bench  - the benchmark suite (writes docs/benchmarks.md)"
	@echo "make proto  - regenerate the Python stubs after editing protos/"

$(STAMP): pyproject.toml sdk/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./sdk -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/nearby run $(ARGS)

proto: $(STAMP) deps-node
	$(PY) scripts/gen_protos.py

docs-config: $(STAMP)
	$(PY) scripts/config_table.py

envoy-config: $(STAMP)
	$(PY) envoy/generate.py

lint: $(STAMP) deps-node
	$(PY) scripts/gen_protos.py --check
	$(PY) scripts/config_table.py --check
	cd protos && ../$(BIN)/buf lint && ../$(BIN)/buf format --diff --exit-code
	$(PY) envoy/generate.py --check
	$(BIN)/envoy --mode validate -c envoy/envoy.yaml --log-level warn
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# TypeScript SDK and map page: `npm ci` from their lockfiles, again only when a
# lockfile changes (the stamp), then the SDK's build (typed .d.ts) and the page's.
NODE_DIRS := sdk-ts web
NODE_STAMP := .nearby/node-deps-stamp
.PHONY: deps-node deps-browser
deps-node: $(NODE_STAMP)
$(NODE_STAMP): sdk-ts/package-lock.json web/package-lock.json
	@for d in $(NODE_DIRS); do (cd $$d && npm ci --no-audit --no-fund --loglevel=error) || exit 1; done
	@mkdir -p $(@D) && touch $@

# Debian's chromium for the browser tests, installed once when missing.
deps-browser:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)

# The chaos tests alone, with more sessions than make test gives them (200).
CHAOS_SESSIONS ?= 1000
chaos: $(STAMP)
	NEARBY_CHAOS_SESSIONS=$(CHAOS_SESSIONS) $(BIN)/pytest -q -s -p no:cacheprovider tests/test_chaos_*.py $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

sim: $(STAMP)
	$(BIN)/nearby sim $(ARGS)

clean:
	rm -rf .nearby .mypy_cache .ruff_cache .pytest_cache
