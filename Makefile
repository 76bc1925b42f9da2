# Two commands on a fresh machine:
#   make serve   set up .venv and start lossd on 127.0.0.1:8000
#   make test    set up .venv, lint, type-check and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
DEVICE ?= auto

.PHONY: setup serve test lint typecheck pytest bench

$(VENV)/.installed: pyproject.toml constraints.txt client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]" -e ./client
	touch $@

setup: $(VENV)/.installed

serve: setup
	$(PY) -m lossd serve --host $(HOST) --port $(PORT) --device $(DEVICE)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy service
	$(VENV)/bin/mypy --strict client/lossd_client

pytest: setup
	$(PY) -m pytest

test: lint typecheck pytest
