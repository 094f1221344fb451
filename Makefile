# The two commands of the README: `make up` (start HarmoNet on embedded defaults)
# and `make test` (install everything the tests need, then run the whole suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: up test install system-deps lint typecheck unit bench schemas clean

$(BIN)/harmonet: pyproject.toml
	@$(PY) -m venv $(VENV) 2>/dev/null || { bash scripts/system-deps.sh venv && $(PY) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# Reference implementations the QC metrics and ComBat-GAM are compared with (tests load
	# single modules from them), without their dependency pins (numpy<2) and heavy trees.
	$(BIN)/pip install --quiet --no-deps mriqc==24.0.2 nipype==1.11.0 nitime==0.12.1 \
		neuroHarmonize==2.5.2
	@touch $@

install: $(BIN)/harmonet

up: install
	$(BIN)/harmonet up

system-deps:
	bash scripts/system-deps.sh test

test: install system-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	CI=$${CI:-false} $(BIN)/pytest

unit: install
	$(BIN)/pytest tests/unit

bench: install
	bash scripts/system-deps.sh bench
	$(BIN)/python benchmarks/ingest.py

schemas: install
	$(BIN)/harmonet schemas --out services/schemas

clean:
	rm -rf $(VENV) .tools harmonet-data .pytest_cache .mypy_cache .ruff_cache
