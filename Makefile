# Two commands: `make demo` and `make test`. Both create .venv on a fresh machine.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test lint venv bench clean run

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,plot,lint]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/pensu demo

run: $(STAMP)
	$(BIN)/pensu run

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff (errors, import order, 3.11 syntax, private access, blind except) and mypy on the package;
# the rules live in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check pensu tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/htm_step.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
