# The two commands a new user needs: `make demo` and `make test`.
# Each sets up .venv by itself; it reinstalls only when the dependency files change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Raw datasets (e.g. ml-100k/) are looked for here first, then in the download cache.
DATA_ROOT ?= $(firstword $(wildcard ../shared/data))

.PHONY: demo test docs venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints-cpu.txt -e '.[dev,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/e2urec bench --preset demo --out runs/demo $(if $(DATA_ROOT),--data-root $(DATA_ROOT))

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples tools
	$(BIN)/ruff format --check src tests benchmarks examples tools
	$(BIN)/python -m pytest
	$(BIN)/mkdocs build --strict --site-dir $(VENV)/site

# Regenerate the docs' generated blocks (tables from results files, CLI reference, methods).
docs: $(STAMP)
	$(BIN)/python tools/docgen.py

clean:
	rm -rf $(VENV) runs site
