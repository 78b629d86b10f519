# Quick start: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The development machines keep the CPU wheel of torch 2.13.0 in /opt/wheels; elsewhere pip
# resolves it from the index.
WHEELS := $(wildcard /opt/wheels)
PIPFLAGS := -q $(if $(WHEELS),--find-links $(WHEELS),)

.PHONY: install demo test bench lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIPFLAGS) --upgrade pip
	$(PY) -m pip install $(PIPFLAGS) torch==2.13.0
	$(PY) -m pip install $(PIPFLAGS) -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/oneclass demo --out runs/demo

test: install
	$(PY) -m pytest

bench: install
	$(VENV)/bin/oneclass bench svdd-mnist --data-root ../shared/data --out runs/bench
	$(VENV)/bin/oneclass bench fcdd-kolektor --data-root ../shared/data --out runs/bench-fcdd
	$(VENV)/bin/oneclass bench speed --out runs/bench-speed
	$(VENV)/bin/oneclass bench docs --results runs/bench runs/bench-fcdd runs/bench-speed

lint: install
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf runs .pytest_cache
