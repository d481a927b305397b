# ferroloop: one entry point for building, running and testing. `make help` lists the targets.
PYTHON ?= python3
SEED ?= ../shared/seed
PIP := $(PYTHON) -m pip install --disable-pip-version-check -q

.PHONY: help deps build run bench test test-rust test-python test-debug test-seed conformance lint format clean

help:  ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

deps:  ## install build and test dependencies (maturin, pytest, aiohttp, uvloop, ruff)
	$(PIP) "maturin>=1.5,<2" "pytest>=7" "pytest-timeout>=2" "aiohttp>=3.9" "uvloop>=0.19" "ruff>=0.5"

build:  ## build the release wheel and install it
	rm -rf dist
	$(PYTHON) -m maturin build --release -o dist
	$(PIP) --force-reinstall --no-deps dist/ferroloop-*.whl

run: deps build  ## build, run the seed patterns on ferroloop, print the micro-benchmark table
	$(PYTHON) $(SEED)/run_examples.py --loop ferroloop:new_event_loop
	$(PYTHON) bench/micro.py

bench: build  ## micro-benchmarks: ferroloop vs asyncio vs uvloop
	$(PYTHON) bench/micro.py

test: deps build test-rust test-python  ## build and run every test (Rust, pytest incl. seed and conformance)

test-rust:  ## Rust unit tests
	cargo test --quiet

test-python:  ## pytest: behaviour tests on both loops, examples, seed, conformance, and a debug-mode pass
	PYTHONASYNCIODEBUG=1 $(PYTHON) -m pytest -q -p no:cacheprovider -m "not slow" tests --ignore=tests/conformance
	$(PYTHON) -m pytest -p no:cacheprovider tests

lint:  ## cargo fmt/clippy, ruff
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:  ## apply cargo fmt and ruff format
	cargo fmt
	$(PYTHON) -m ruff format .

clean:  ## remove build outputs
	rm -rf dist target
