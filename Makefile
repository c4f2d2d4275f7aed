# The two commands: `make run` (the whole stack, foreground) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: run test chaos lint typecheck proto envoy-config bench sim clean help
.PHONY: deps-prometheus observe-check dashboard

help:
	@echo "make run    - start Redis/Postgres (if needed), the four services and Envoy (dev mode)"
	@echo "make test   - stubs/protos/envoy checks, ruff, mypy and the test suite"
	@echo "make chaos  - the chaos tests at full size (1000 SDK sessions, 30 s Postgres outage, ...)"
	@echo "make bench  - the benchmark suite (writes docs/benchmarks.md)"
	@echo "make proto  - regenerate the Python and TypeScript stubs after editing protos/"

$(STAMP): pyproject.toml sdk/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./sdk -e '.[dev]'
	@# xds-protos ships an old copy of opentelemetry/proto/...; whichever wheel is
	@# unpacked last wins, so put opentelemetry-proto's own files back, always.
	$(PY) -m pip install --quiet --force-reinstall --no-deps "$$(grep -o 'opentelemetry-proto[^"]*' pyproject.toml)"
	@touch $(STAMP)

# a development stack: dev login, CORS and the map page (http://localhost:8081/)
run: $(STAMP) web-build
	$(BIN)/nearby run --dev $(ARGS)

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

test: lint typecheck deps-browser
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# TypeScript SDK and map page: `npm ci` from each lockfile, again only when the
# lockfile changes or node_modules is gone (the stamp lives inside it).
NODE_STAMPS := sdk-ts/node_modules/.ci-stamp web/node_modules/.ci-stamp
.PHONY: deps-node deps-browser web-build
deps-node: $(NODE_STAMPS)
%/node_modules/.ci-stamp: %/package-lock.json
	cd $* && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The SDK (typed .d.ts in sdk-ts/dist) and the map page (web/dist).
web-build: deps-node
	cd web && npm run build --silent

# Debian's chromium for the browser tests, installed once when missing.
deps-browser:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)

# The chaos tests alone, at full size: more sessions than make test gives them
# (200), a 30 s Postgres outage (3 s), 100 streams through a Redis restart (30),
# 100 frozen HTTP/2 clients (10).
CHAOS_SESSIONS ?= 1000
chaos: $(STAMP)
	NEARBY_CHAOS_SESSIONS=$(CHAOS_SESSIONS) NEARBY_CHAOS_PG_DOWN_S=30 NEARBY_CHAOS_STREAMS=100 \
	NEARBY_CHAOS_FROZEN=100 $(BIN)/pytest -q -s -p no:cacheprovider tests/test_chaos_*.py $(PYTEST_ARGS)

# Observability: Debian's prometheus/promtool (installed when missing), the
# rules checked and unit-tested, the committed dashboard checked against its
# generator. `make test` runs them before the suite.
deps-prometheus:
	@scripts/deps_prometheus.sh

observe-check: deps-prometheus $(STAMP)
	promtool check rules deploy/prometheus/recording.yml deploy/prometheus/alerts.yml
	cd deploy/prometheus && promtool test rules alerts_test.yml
	$(PY) deploy/grafana/generate.py --check

dashboard: $(STAMP)
	$(PY) deploy/grafana/generate.py

test: observe-check

# `make run ARGS=--prometheus` installs Debian's prometheus first when missing
ifneq ($(findstring --prometheus,$(ARGS)),)
run: deps-prometheus
endif

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

sim: $(STAMP)
	$(BIN)/nearby sim $(ARGS)

clean:
	rm -rf .nearby .mypy_cache .ruff_cache .pytest_cache
