# The README's commands: `make demo`, `make test` (the fast tier), `make test-all` (every
# test, what CI runs) and `make docs` (the documentation site, strict). Each creates and uses
# a virtual environment in .venv (Python 3.10+).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test test-all docs lint venv clean notebooks

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "unet_cbam needs Python 3.10+"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# Trains on the built-in demo data (generated into data/demo on first use) into
# runs/demo; a second `make demo` resumes that run instead of overwriting it.
DEMO_FLAGS ?= --epochs 15 --steps-per-epoch 12 --patch-size 128 --batch-size 8

demo: venv
	$(PY) train.py --output runs/demo --resume $(DEMO_FLAGS)

# Runs the four notebooks on the demo run (make demo first) with their default
# parameters: executed copies and their figures go to notebooks/executed/.
notebooks: venv
	mkdir -p notebooks/executed
	cd notebooks && for notebook in 0*.ipynb; do \
		$(abspath $(PY)) -m papermill --log-level WARNING $$notebook executed/$$notebook \
			-p figure_dir executed/figures || exit 1; done
	@echo "executed notebooks and figures: notebooks/executed/ (open them with jupyter)"

lint: venv
	$(PY) -m ruff check .

# Tests run in TEST_JOBS processes (pytest-xdist): on 2 cores, 2 take 11.8 minutes for
# test-all where one took 17.6; most of a test's time is Python and TensorFlow's own
# single-threaded work (imports, tracing, graph building), which a second process overlaps.
TEST_JOBS ?= 2
# Work stealing: a process that runs out of tests takes half of the other's queue, so the
# run does not end with one process working through heavy tests alone. On a 2-core AVX-512
# EPYC test-all took 473 s with it, 660 and 666 s without (2026-12-07, commit 740874e).
TEST_DIST ?= --dist worksteal

# The fast tier: every module and one end-to-end train, predict and evaluate, in under
# 5 minutes on 2 cores. Tests marked slow (training runs, kills, subprocesses, notebooks)
# run in test-all.
test: lint
	$(PY) -m pytest -n $(TEST_JOBS) $(TEST_DIST) -m "not slow"

test-all: lint
	$(PY) -m pytest -n $(TEST_JOBS) $(TEST_DIST)

# The documentation site (MkDocs Material, API pages from the docstrings) into site/:
# a public module, class or function without a docstring, or a broken link, fails.
docs: venv
	$(PY) -m interrogate unet_cbam
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache site
