# imgmig developer entry points. Every target creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install fmt lint type test check demo report-demo bench chaos clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "imgmig needs Python 3.11 or newer (found " + sys.version.split()[0] + ")")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c 'import pipeline, aiohttp, anyio, pytest' 
	@touch $(STAMP)

install: $(STAMP)

fmt: $(STAMP)
	$(BIN)/ruff format pipeline tests bench
	$(BIN)/ruff check --fix pipeline tests bench

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/ruff format --check pipeline tests bench
	$(BIN)/lint-imports --no-cache

type: $(STAMP)
	$(BIN)/mypy

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: lint type test

demo: $(STAMP)
	$(BIN)/python -m pipeline.run.demo

# the demo, then its first run (the one that copies) as one HTML page: build/report-demo.html
report-demo: demo
	$(BIN)/python -m pipeline report jobs/demo.toml --html build/report-demo.html --run \
	  $$($(BIN)/python -m pipeline status jobs/demo.toml --json | $(BIN)/python -c 'import json, sys; print(json.load(sys.stdin)["runs"][0]["run_id"])')

bench: $(STAMP)
	$(BIN)/python -m bench

# the chaos scenarios plus a 10-minute soak, with the soak's figures printed (make test runs a 4-minute soak)
chaos: $(STAMP)
	IMGMIG_SOAK_SECONDS=$${IMGMIG_SOAK_SECONDS:-600} $(BIN)/python -m pytest -m chaos -s $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
