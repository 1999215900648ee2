# The README's two commands. Both create .venv when it is missing and install the project from its own files.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The local Dagster instance (SQLite) that `make run` records its runs in; `dagster dev` reads the same one.
export DAGSTER_HOME ?= $(CURDIR)/data/dagster_home
export DAGSTER_DISABLE_TELEMETRY ?= 1
export FIFTYONE_DO_NOT_TRACK ?= true

.PHONY: run test test-vision install install-dev install-vision dev check clean-venv

run: $(VENV)/.installed
	@mkdir -p "$(DAGSTER_HOME)"
	$(BIN)/vlm-gist run

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The `vlm-gist vision-serve` tests need the optional extra `vision` (torch's CPU wheel, installed from the
# local disk, and transformers): this target installs it into the same venv and runs them, and a missing
# extra fails them instead of skipping them. `make test` skips them when the extra is not installed.
test-vision: $(VENV)/.installed-vision
	VLM_GIST_REQUIRE_VISION=1 $(BIN)/python -m pytest vlm_gist_dagster_tests/vision_server $(PYTEST_ARGS)

# `dagster dev` on the same instance as `make run`, to browse lineage, runs and the leaderboard.
dev: $(VENV)/.installed
	@mkdir -p "$(DAGSTER_HOME)"
	$(BIN)/vlm-gist dev

# Static checks: the definitions load, formatting and lint (ruff), types (mypy; config in pyproject.toml).
check: $(VENV)/.installed-dev
	$(BIN)/dg check defs
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

# Browser tests (Playwright driving Debian's Chromium: `apt-get install -y chromium` as root), not part of
# `make test`. Without Chromium they fail with that command. Screenshots: $$VLM_GIST_BROWSER_ARTIFACTS.
.PHONY: test-browser
test-browser: $(VENV)/.installed-browser
	VLM_GIST_BROWSER_TESTS=1 $(BIN)/python -m pytest vlm_gist_dagster_tests/browser $(PYTEST_ARGS)

# The production path on a real PostgreSQL (deploy/dagster.yaml, the run queue, a real dagster-daemon, pools,
# automation), not part of `make test`: each test starts a throwaway cluster with initdb/pg_ctl in a temp
# directory. Needs Debian's PostgreSQL server binaries (`apt-get install -y postgresql` as root, or
# $$VLM_GIST_PG_BIN); without them the tests fail with that command.
.PHONY: test-postgres
test-postgres: $(VENV)/.installed-dev
	VLM_GIST_POSTGRES_TESTS=1 $(BIN)/python -m pytest vlm_gist_dagster_tests/postgres $(PYTEST_ARGS)

$(VENV)/.installed-browser: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev,browser]'
	@touch $@ $(VENV)/.installed-dev $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev
install-vision: $(VENV)/.installed-vision

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $@ $(VENV)/.installed

$(VENV)/.installed-vision: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev,vision]'
	@touch $@ $(VENV)/.installed-dev $(VENV)/.installed

clean-venv:
	rm -rf $(VENV)
