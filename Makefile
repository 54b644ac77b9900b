# One-word habits: make run, make test, make lint, make bench.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install run test lint format bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# checkov (tests/test_infra.py), apart: its pins would downgrade the test tools.
$(VENV)-checkov/.installed: requirements-checkov.txt
	$(PYTHON) -m venv $(VENV)-checkov
	$(VENV)-checkov/bin/pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	touch $@

# The Azure Storage emulator (Azurite) for the backup tests and benchmarks.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed $(VENV)-checkov/.installed node_modules/.installed

## The handler with a local OpenBao on http://127.0.0.1:8200, data in .data/
run: $(VENV)/.installed
	VAULTFN_EAGER_START=$${VAULTFN_EAGER_START:-true} $(PY) -m vault_handler

## Lint, then every test (real OpenBao, no mocks of it)
test: install lint
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## The handler vs bare OpenBao, backups vs a naive copy, telemetry on vs off (bench/RESULTS.md)
bench: install
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(PY) bench/run.py
	$(PY) bench/backup.py
	$(PY) bench/telemetry.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
