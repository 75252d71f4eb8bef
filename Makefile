PYTHON ?= python3

.PHONY: setup run test lint bench

setup:
	./scripts/setup.sh

run: setup
	$(PYTHON) -m hiddenite run

test: setup
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m ruff format --check src tests benchmarks
	$(PYTHON) -m pytest -q

bench: setup
	$(PYTHON) benchmarks/bench_core.py
