# One command to set up and try streamfn, one to run the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup quickstart test lint bench dist clean

# Trying needs streamfn alone (no extra, no dev toolchain); setup adds every extra and the dev tools.
$(VENV)/.quickstart: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e . -c constraints.txt
	touch $@

$(BIN)/streamfn: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -c constraints.txt
	touch $@

tests/node_modules/.installed: tests/package.json tests/package-lock.json
	bash .ci/install.sh
	touch $@

setup: $(BIN)/streamfn tests/node_modules/.installed

quickstart: $(VENV)/.quickstart
	rm -rf state/quickstart out/quickstart
	$(BIN)/streamfn produce configs/quickstart.toml --count 100000
	$(BIN)/streamfn run configs/quickstart.toml --until-caught-up
	@echo "output objects: $$(find out/quickstart -name '*.ndjson' | wc -l) in out/quickstart/"

test: setup
	$(BIN)/ruff check streamfn tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(BIN)/streamfn
	$(BIN)/pip install --quiet -e '.[bench]' -c constraints.txt
	$(BIN)/python -m benchmarks

# The release: sdist and wheel in dist/, built in an isolated env against the declared build floor.
dist: $(BIN)/streamfn
	rm -rf dist
	$(BIN)/python -m build --outdir dist

clean:
	rm -rf state out dist build
