# `make run` and `make test` work on a fresh clone: they create .venv and install first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test lint sim simnet bench check-config clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/gatewayd run --config gatewayd.toml

sim: $(STAMP)
	$(VENV)/bin/gatewayd run --config gatewayd.toml --whatsapp sim

# Lint is part of the tests: ruff (rules and format) and mypy --strict, then the whole suite
# (unit, HTTP, subprocess and crash tests).
test: lint
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

clean:
	rm -rf $(VENV) data .pytest_cache
