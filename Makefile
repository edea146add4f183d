# The two commands of the README: `make demo` and `make test`.
# Both create and use a virtual environment in .venv (Python 3.10+).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test lint venv clean notebooks

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

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
