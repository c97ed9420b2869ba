# routines: developer and CI entry points. Run from the repo root.
#   make venv     create .venv and install the project with its dev extra
#   make images   start Docker if needed; build routines-base:bookworm and routines-sandbox:latest
#   make lint     ruff + mypy + lint-imports (the layers: [tool.importlinter] in pyproject.toml)
#   make test     the test suite (installs the venv and builds the images first if needed)
#   make test-unit  tests/unit alone: the pure core, in seconds, with no Docker and no network
#   make serve    run the bot
#   make bench    measure per-run container overhead

SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
PIP    := $(VENV)/bin/pip --disable-pip-version-check

.PHONY: venv images service-image lint test test-unit serve bench

venv:
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e '.[dev,postgres]'

images:
	.ci/docker-up.sh
	.ci/build-images.sh

# Optional: the bot itself as an image (routines:latest).
service-image:
	.ci/docker-up.sh
	BUILD_SERVICE=1 .ci/build-images.sh

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: venv images
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(VENV)/bin/python -m pytest tests/unit $(PYTEST_ARGS)

serve:
	$(MAKE) venv
	$(MAKE) images
	$(VENV)/bin/routines serve

bench:
	$(VENV)/bin/python bench/run_overhead.py
