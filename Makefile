# Two entry points on a fresh Debian machine: `make demo` and `make test`.
# Everything they need is installed here: the Debian dataset package, a venv, pinned pip packages.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fkt-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get
DEMO_OUT ?= runs/demo

.PHONY: install demo test test-fast docs clean

install: $(FMNIST) $(STAMP)

$(FMNIST):
	$(APT) update -q
	$(APT) install -y -q dataset-fashion-mnist

# pip byte-compiles the packages here, once: where PYTHONDONTWRITEBYTECODE is set (as in CI
# images), every process would otherwise compile torch and Lightning from source at each start.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { $(APT) update -q && $(APT) install -y -q python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

# The main job: supervised vs representational vs functional on Fashion-MNIST, one table.
demo: install
	$(BIN)/fkt reproduce --preset quick --seeds 1 --out $(DEMO_OUT)

# The docs site (mkdocs.yml), built strictly: a broken link, anchor or nav entry fails it. It fetches
# nothing (no fonts, no plugins that download), and goes to build/site, which git ignores.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

test: install docs
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
