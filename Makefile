# The README's two commands: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Separate stamps: `make serve` installs only what serving needs (the server extra), so a
# fresh clone reaches a working token in about a minute; `make test` adds the rest.
SERVE_STAMP := $(VENV)/.installed-server
DEV_STAMP := $(VENV)/.installed-dev

# The JavaScript client (clients/js): its pinned dev dependencies, then its build.
JS := clients/js
JS_STAMP := $(JS)/node_modules/.installed
JS_BUILD := $(JS)/dist/esm/index.js
NPM := $(shell command -v npm 2>/dev/null)
# The third-party OAuth servers some tests run against (oidc-provider, oauth2-mock-server),
# pinned by tests/peers/package-lock.json.
PEERS := tests/peers
PEERS_STAMP := $(PEERS)/node_modules/.installed

.PHONY: upgrade-constraints bytecode serve test test-fast lint lint-js test-js js peers install clean bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# constraints.txt: the versions the suite last passed with (pyproject.toml has the ranges).
$(SERVE_STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[server]'
	touch $(SERVE_STAMP)

$(DEV_STAMP): $(SERVE_STAMP) pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[server,kms,dev,examples]'
	touch $(DEV_STAMP)

install: $(DEV_STAMP)

# The newest versions pyproject.toml's ranges allow, into constraints.txt (then run make test).
upgrade-constraints:
	rm -rf .venv-upgrade
	$(PYTHON) -m venv .venv-upgrade
	.venv-upgrade/bin/pip install --quiet --upgrade pip
	.venv-upgrade/bin/pip install --quiet -e '.[server,kms,dev,examples]'
	grep '^#' constraints.txt > constraints.new
	.venv-upgrade/bin/pip freeze --exclude-editable >> constraints.new
	mv constraints.new constraints.txt
	rm -rf .venv-upgrade

# Where PYTHONDONTWRITEBYTECODE is set (as on this kind of machine), Python keeps no bytecode:
# every `apiauth` process compiles the project again (about a second of each server start and
# CLI command), and pytest rewrites the assertions of every test module and of its plugins'
# whole packages (hypothesis, schemathesis, anyio) in each worker of each run - a fifth of
# `make test-fast`. The commands run here keep their bytecode, in __pycache__ as usual.
unexport PYTHONDONTWRITEBYTECODE

# Bytecode for the project's own modules, written ahead, so that the suite's parallel
# processes do not each compile them first. Up to date, this takes a tenth of a second.
bytecode: $(DEV_STAMP)
	@$(BIN)/python -m compileall -q src tests

serve: $(SERVE_STAMP)
	@$(BIN)/python -m compileall -q src
	$(BIN)/apiauth serve --demo

ifneq ($(NPM),)
$(JS_STAMP): $(JS)/package-lock.json $(JS)/package.json
	cd $(JS) && npm ci --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)

$(JS_BUILD): $(JS_STAMP) $(wildcard $(JS)/src/*.ts) $(wildcard $(JS)/tsconfig*.json) $(JS)/scripts/build.mjs
	cd $(JS) && npm run --silent build

js: $(JS_BUILD)

# tsc --noEmit over the package and the JavaScript/TypeScript examples (against its types).
lint-js: $(JS_STAMP)
	cd $(JS) && npm run --silent typecheck

test-js: $(JS_BUILD)
	cd $(JS) && npm test --silent

$(PEERS_STAMP): $(PEERS)/package-lock.json $(PEERS)/package.json
	cd $(PEERS) && npm ci --no-audit --no-fund --loglevel=error
	touch $(PEERS_STAMP)

peers: $(PEERS_STAMP)
else
js lint-js test-js peers:
	@if [ "$$CI" = "true" ]; then echo "npm is needed for clients/js (apt-get install nodejs npm)"; exit 1; fi
	@echo "npm is not installed: skipping clients/js and tests/peers (their tests skip too)"
endif

lint: $(DEV_STAMP) lint-js
	$(BIN)/ruff check src tests tools examples docs
	$(BIN)/ruff format --check src tests tools examples docs
	$(BIN)/mypy --strict src
	$(BIN)/lint-imports --no-logo

test: lint test-js peers bytecode
	$(BIN)/pytest -n 2
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

# The fast tier alone (about a minute): logic tests against the in-process app on temporary
# SQLite with an injected clock (`pytest.mark.fast`). `make test` runs it too, with the rest.
test-fast: $(DEV_STAMP) bytecode
	$(BIN)/pytest -n 2 -q -m "fast and not over_http and not postgres"

# Benchmarks (issue #6; not part of `make test`): needs `wrk` (apt-get install -y wrk) and
# PostgreSQL on 127.0.0.1:5432. Prints a Markdown table and writes benchmarks/results.md.
bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(JS)/node_modules $(JS)/dist
