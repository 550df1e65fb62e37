# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv if it is missing and install the package with its dev extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test bench clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/resnetlab demo

test: $(INSTALLED)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -n 2 --dist loadgroup

bench: $(INSTALLED)
	$(BIN)/python benchmarks/bench_forward.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
