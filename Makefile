# Two commands on a fresh machine: `make demo` (set up, then the main job) and `make test`.
# Set-up is incremental: the venv is rebuilt only when pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEBIAN_PACKAGES := libusb-1.0-0 chromium g++
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PYTHONUNBUFFERED := 1

.PHONY: setup system-deps demo demo-quick test test-slow lint clean

setup: system-deps $(STAMP)

# open3d needs libusb at import time, the viewer's browser tests chromium, the compiled CPU rasterizer g++;
# install only what is missing.
system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# torch==2.13.0 first: its CPU wheel lies on disk, and every later requirement accepts it,
# so pip never replaces it with a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -c "from scene3d.gaussians.compiled import kernel; kernel()"  # build the CPU rasterizer now, not mid-run
	touch $(STAMP)

demo: setup
	$(PY) scripts/demo.py

demo-quick: setup
	$(PY) scripts/demo.py --quick

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow || [ $$? -eq 5 ]  # exit 5: no slow tests collected

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) outputs
