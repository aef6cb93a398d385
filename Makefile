# Every target creates .venv and installs what it needs first: a fresh clone needs nothing else.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8080
PYTHON ?= python3
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
# jsii prints a banner on Node 20 (end of life for it since 2026-10-30); it still works.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20

.PHONY: install dev test unit integration infra e2e lint synth lock bench agents clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

dev: install
	$(PY) -m quotagate_tools.local --port $(PORT) --demo-plan pro

test: install
	$(PY) -m pytest

# One test folder each (make test runs them all).
unit: install
	$(PY) -m pytest tests/unit

integration: install
	$(PY) -m pytest tests/integration

infra: install
	$(PY) -m pytest tests/infra

e2e: install
	$(PY) -m pytest tests/e2e

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy layers/core tools functions cdk_app

synth: install
	$(PY) -m cdk_app.app

# Re-resolve layers/requirements.txt into layers/requirements.lock (versions and wheel hashes).
lock: install
	$(PY) -m cdk_app.lock

# Claude Code and Codex CLI (pinned, from npm, cached in ~/.cache/quotagate-agents) through a local
# gateway: a table of what worked (see docs/calling.md, Coding agents).
agents: install
	$(PY) -m quotagate_tools.agents

bench: install
	uptime
	$(PY) bench/coldstart.py
	$(PY) bench/overhead.py
	$(PY) bench/latency.py
	$(PY) bench/latency.py --stream
	$(PY) bench/cost.py
	$(PY) bench/hotkeys.py --before --quick
	$(PY) bench/hotkeys.py

clean:
	rm -rf $(VENV) cdk.out .build .pytest_cache
