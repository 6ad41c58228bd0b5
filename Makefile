# The two commands a newcomer runs: `make demo` and `make test`.  Both bootstrap .venv from nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tgkit-installed

.PHONY: demo test lint bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# nbval needs a kernel spec on a fresh machine: install one into the venv itself
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (tgkit)" >/dev/null
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tgkit demo

test: $(STAMP)
	$(PY) -m pytest --nbval --nbval-sanitize-with notebooks/sanitize.cfg -q tests notebooks; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests were collected"; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check tgkit tests benchmarks
	$(VENV)/bin/ruff format --check tgkit tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/bench_export.py --messages 100000

clean:
	rm -rf $(VENV) data/exports .pytest_cache .mypy_cache .ruff_cache
