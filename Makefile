# The two commands of the README: `make demo` and `make test` (lint, format check, the suite).
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
RESULTS ?= results

.PHONY: demo test proofs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,cluster]'
	touch $(STAMP)

# the demo's network section runs on CIFAR-10 at $(DATA): $VALLEYSIM_DATA, else ../shared/data when present
DATA ?= $(or $(VALLEYSIM_DATA),$(wildcard ../shared/data))

demo: $(STAMP)
	$(BIN)/valleysim demo --out $(RESULTS) $(if $(DATA),--data $(DATA))

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 --dist loadfile

proofs: $(STAMP)
	$(BIN)/python -m proofs --out $(RESULTS)/proofs.md

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench_step.py
	$(BIN)/python benchmarks/bench_valley.py
	$(BIN)/python benchmarks/bench_dnn.py

clean:
	rm -rf $(VENV) $(RESULTS)
