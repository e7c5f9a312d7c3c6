# The README's two commands: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint install clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[server,dev,examples]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/apiauth serve --demo

lint: $(STAMP)
	$(BIN)/ruff check src tests examples docs
	$(BIN)/ruff format --check src tests examples docs
	$(BIN)/mypy --strict src

test: lint
	$(BIN)/pytest -n 4
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

# Benchmarks (issue #6; not part of `make test`): needs `wrk` (apt-get install -y wrk) and
# PostgreSQL on 127.0.0.1:5432. Prints a Markdown table and writes benchmarks/results.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
