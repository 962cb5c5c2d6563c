# The project's entry points. Each target installs what it needs first (scripts/bootstrap).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Extra options for the local gateway, e.g. `make run LOCALGW_ARGS="--port 9000"` (python -m localgw --help).
LOCALGW_ARGS ?=

.PHONY: test run lint

## make test: install everything the suite needs (venv, redis-server, wscat), then run the whole suite.
test:
	scripts/bootstrap test
	$(PY) -m pytest $(PYTEST_ARGS)

## make run: serve the app locally at ws://localhost:8000/api with an embedded Redis (REDIS_URL overrides).
run:
	scripts/bootstrap run
	$(PY) -m localgw $(LOCALGW_ARGS)

## make lint: ruff, as CI runs it.
lint:
	scripts/bootstrap run
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
