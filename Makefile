# dlenv developer targets. `make chainermn` runs the main job; `make test` runs every test tier.
VENV   ?= .venv
PYTHON ?= python3
DLENV  := $(VENV)/bin/dlenv
PYTEST := $(VENV)/bin/pytest

.PHONY: help venv host chainermn test unit integration e2e e2e-all golden relock lint lint-imports clean-images

help:
	@echo "make chainermn   build the chainermn image (installs Docker and the venv first)"
	@echo "make test        all tests: unit, integration and the chainermn e2e build (needs root for Docker)"
	@echo "make unit        engine-free tests: unit, golden Dockerfiles and component goldens, import contracts"
	@echo "make e2e-all     build and verify the all-in-one CPU stack (heavy: ~5 GB of wheels; not in make test)"
	@echo "make golden      regenerate tests/golden/*.Dockerfile and tests/golden/exports/* on purpose"
	@echo "make relock      refresh every catalog lock, the goldens and the recorded buildah ids (maintainers)"
	@echo "make lint        hadolint on every rendered Dockerfile"

$(DLENV): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	@touch $(DLENV)

venv: $(DLENV)

host:
	scripts/setup-host.sh

chainermn: venv host
	$(DLENV) build chainermn

test: venv host lint-imports
	DLENV_REQUIRE_ENGINE=1 $(PYTEST) tests -v -rs --durations=25

# Engine-free: tests/unit and the top-level tests (goldens, packaging, project, verify logic).
unit: venv lint-imports
	$(PYTEST) tests/unit tests/test_*.py -q

# The dependency rule of ARCHITECTURE.md (contracts in pyproject.toml).
lint-imports: venv
	$(VENV)/bin/lint-imports

integration: venv host
	DLENV_REQUIRE_ENGINE=1 $(PYTEST) tests/integration -v -rs

e2e: venv host
	DLENV_REQUIRE_ENGINE=1 $(PYTEST) tests/e2e -v -rs

# Not part of `make test`: pytest does not recurse into tests/e2e_all (pyproject norecursedirs).
e2e-all: venv host
	DLENV_REQUIRE_ENGINE=1 $(PYTEST) tests/e2e_all -v -rs -s

golden: venv
	$(VENV)/bin/python scripts/regen-golden.py
	$(VENV)/bin/python scripts/regen-export-golden.py

# Refresh the shipped locks (pins the archive dropped move; the rest stay), then the goldens and buildah ids.
relock: venv host
	$(VENV)/bin/python scripts/relock.py $(RELOCK_ARGS)

lint: venv
	$(VENV)/bin/python scripts/lint-dockerfiles.py
