# `make demo` / `make test` create or reuse .venv; the install is skipped when pyproject.toml is unchanged.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test install lint clean docker-smoke

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kdcompress demo --out runs/demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest tests

lint: $(STAMP)
	$(VENV)/bin/ruff check kdcompress tests benchmarks

clean:
	rm -rf runs .pytest_cache build *.egg-info

# Builds the CPU image for real with docker (or podman, installed when missing and root), runs doctor and
# the demo in it, checks report.json and prints image size, build and demo time. Not part of `make test`
# (minutes, and about 15 GB of disk: the 6.5 GB image plus its cached build stage). See docs/docker.md.
docker-smoke:
	bash docker/smoke.sh
