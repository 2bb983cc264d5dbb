# `make run` and `make test` work on a fresh clone: they create .venv and install first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test sim check-config clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/gatewayd run --config gatewayd.toml

sim: $(STAMP)
	$(VENV)/bin/gatewayd run --config gatewayd.toml --whatsapp sim

test: $(STAMP)
	$(VENV)/bin/pytest

check-config: $(STAMP)
	$(VENV)/bin/gatewayd check-config gatewayd.toml

clean:
	rm -rf $(VENV) data .pytest_cache
