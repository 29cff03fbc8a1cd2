# The two commands of a fresh clone: `make demo` and `make test`. Everything else is here for them.
PYTHON ?= python3
# The CPU build of torch goes in first, so that nothing later pulls a multi-GB GPU build.
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: setup test lint demo clean

setup: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(INSTALLED)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

demo: setup
	$(BIN)/tokenworks factory

clean:
	rm -rf $(VENV) factory .pytest_cache .ruff_cache .hypothesis *.egg-info
