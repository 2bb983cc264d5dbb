# `make run` and `make test` work on a fresh clone: they create .venv and install first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test lint sim simnet bench check-config clean dashboard dist

# The dashboard (dashboard/, Vite + React) is built into the package's static directory when
# its sources changed: `npm ci` when the lockfile did, then `npm run build` (type check, build,
# and the gzipped size budget). Node is needed only here: the wheel carries the built app.
DASHBOARD_BUILT := gatewayd/static/index.html
DASHBOARD_DEPS := dashboard/node_modules/.package-lock.json
DASHBOARD_SOURCES := $(shell find dashboard/src dashboard/public dashboard/scripts -type f 2>/dev/null) \
	$(wildcard dashboard/*.json dashboard/*.ts dashboard/index.html)

$(DASHBOARD_DEPS): dashboard/package-lock.json
	cd dashboard && npm ci --no-audit --no-fund --loglevel=error
	touch $(DASHBOARD_DEPS)

$(DASHBOARD_BUILT): $(DASHBOARD_DEPS) $(DASHBOARD_SOURCES)
	cd dashboard && npm run build || { rm -f ../$(DASHBOARD_BUILT); exit 1; }

dashboard: $(DASHBOARD_BUILT)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP) $(DASHBOARD_BUILT)
	$(VENV)/bin/gatewayd run --config gatewayd.toml

sim: $(STAMP) $(DASHBOARD_BUILT)
	$(VENV)/bin/gatewayd run --config gatewayd.toml --whatsapp sim

# Lint is part of the tests: ruff (rules and format) and mypy --strict (the dashboard's
# TypeScript is checked by its build), then the whole suite (unit, HTTP, subprocess, crash and
# browser tests).
test: lint $(DASHBOARD_BUILT)
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check gatewayd tests bench tools
	$(VENV)/bin/ruff format --check gatewayd tests bench tools
	$(VENV)/bin/mypy --strict gatewayd

# The simulated WhatsApp network as its own process, for `gatewayd run --whatsapp sim=URL`.
simnet: $(STAMP)
	$(VENV)/bin/gatewayd simnet --listen 127.0.0.1:4000 --state data/simnet.json

bench: $(STAMP)
	$(VENV)/bin/python bench/inbound.py

check-config: $(STAMP)
	$(VENV)/bin/gatewayd check-config gatewayd.toml

# A wheel with the built dashboard inside (in $(DIST)/): installing it needs no Node.
DIST ?= dist
dist: $(STAMP) $(DASHBOARD_BUILT)
	rm -rf $(DIST)
	$(VENV)/bin/pip wheel --quiet --no-deps --wheel-dir $(DIST) .

clean:
	rm -rf $(VENV) data .pytest_cache gatewayd/static dashboard/node_modules dist
