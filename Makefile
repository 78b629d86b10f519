# Quick start: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The development machines keep the CPU wheel of torch 2.13.0 in /opt/wheels; elsewhere pip
# resolves it from the index.
WHEELS := $(wildcard /opt/wheels)
PIPFLAGS := -q $(if $(WHEELS),--find-links $(WHEELS),)

.PHONY: install demo test bench lint clean compare

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

# The suites of a few hours or less on 2 CPU cores, then docs/benchmarks.md from all result
# folders. The long suites (CIFAR-10, the GAN and Deep SAD CIFAR-10 rows, sad-mnist-all-known:
# days together) run by the commands that docs/benchmarks.md prints above each table.
bench: install
	$(VENV)/bin/oneclass bench svdd-mnist --data-root ../shared/data --out runs/bench
	$(VENV)/bin/oneclass bench fcdd-kolektor --data-root ../shared/data --out runs/bench-fcdd
	$(VENV)/bin/oneclass bench fcdd-fmnist --data-root ../shared/data --out runs/bench-fcdd
	$(VENV)/bin/oneclass bench sad-mnist --data-root ../shared/data --out runs/bench-sad
	$(VENV)/bin/oneclass bench sad-fmnist --data-root ../shared/data --out runs/bench-sad
	$(VENV)/bin/oneclass bench doc-fmnist-sneaker --data-root ../shared/data --out runs/bench-doc
	$(VENV)/bin/oneclass bench doc-kolektor --data-root ../shared/data --out runs/bench-doc
	$(VENV)/bin/oneclass bench anogan-kolektor --data-root ../shared/data --out runs/bench-gan
	$(VENV)/bin/oneclass bench industrial --data-root ../shared/data --out runs/bench-industrial
	$(VENV)/bin/oneclass bench defaults --data-root ../shared/data --out runs/bench-defaults
	$(VENV)/bin/oneclass bench speed --score-batch 32,64 --out runs/bench-speed
	$(VENV)/bin/oneclass bench speed-anogan --out runs/bench-speed
	$(VENV)/bin/oneclass bench export --out runs/bench-deploy
	$(VENV)/bin/oneclass bench serve --out runs/bench-deploy
	$(VENV)/bin/oneclass bench predict --out runs/bench-deploy
	$(VENV)/bin/oneclass bench docs --results runs/bench runs/bench-fcdd runs/bench-sad \
	    runs/bench-sad9 runs/bench-sad-allk runs/bench-industrial runs/bench-defaults \
	    runs/bench-gan runs/bench-doc runs/bench-speed runs/bench-deploy runs/bench-compare

# anomalib for `oneclass bench compare`, in its own environment: it brings torch 2.14.1, which must
# never replace the project's torch in .venv.
COMPARE := .venv-compare
$(COMPARE)/.installed:
	test -x $(COMPARE)/bin/python || $(PYTHON) -m venv $(COMPARE)
	$(COMPARE)/bin/python -m pip install $(PIPFLAGS) --upgrade pip
	$(COMPARE)/bin/python -m pip install $(PIPFLAGS) torch==2.14.1 torchvision==0.29.1
	$(COMPARE)/bin/python -m pip install $(PIPFLAGS) 'anomalib>=2.0' 'timm>=1.0' pillow safetensors tqdm
	touch $@

compare: install $(COMPARE)/.installed
	$(VENV)/bin/oneclass bench compare --data-root ../shared/data --out runs/bench-compare

lint: install
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf runs .pytest_cache
