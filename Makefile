# ferroloop: one entry point for building, running and testing. `make help` lists the targets.
PYTHON ?= python3
SEED ?= ../shared/seed
PIP := $(PYTHON) -m pip install --disable-pip-version-check -q

.PHONY: help deps build build-pgo run bench bench-net bench-all test test-rust test-python conformance libraries stubtest lint format clean

help:  ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

deps:  ## install build, test and benchmark dependencies (maturin, pytest, aiohttp, uvloop, rloop, matplotlib, ...)
	$(PIP) "maturin>=1.5,<2" "pytest>=7" "pytest-timeout>=2" "aiohttp>=3.9" "uvloop>=0.19" "ruff>=0.5" "mypy>=1.8" \
		"uvicorn>=0.30" "httptools>=0.6" "httpx>=0.27" "websockets>=13" "rloop>=0.5" "matplotlib>=3.7"

build:  ## build the release wheel and install it
	rm -rf dist
	$(PYTHON) -m maturin build --release -o dist
	$(PIP) --force-reinstall --no-deps dist/ferroloop-*.whl

build-pgo: deps  ## build the release wheel with profile-guided optimisation (tools/pgo.py) and install it
	rm -rf dist
	$(PYTHON) tools/pgo.py --out dist --install

run: deps build  ## build, run the seed patterns on ferroloop, print the micro-benchmark table
	$(PYTHON) $(SEED)/run_examples.py --loop ferroloop:new_event_loop
	$(PYTHON) bench/micro.py

bench: build-pgo  ## micro-benchmarks: ferroloop vs asyncio vs uvloop
	$(PYTHON) bench/micro.py

bench-net: build-pgo  ## network benchmarks (echo in three modes, HTTP under wrk): ferroloop vs asyncio vs uvloop
	$(PYTHON) bench/net.py

bench-all: build-pgo  ## every benchmark vs asyncio, uvloop and rloop; writes bench/results/report.md and chart.png
	$(PYTHON) bench/all.py

test: deps lint build stubtest test-rust test-python  ## lint, build, and run every test (Rust, pytest incl. seed and conformance)

test-rust:  ## Rust unit tests
	cargo test --quiet

test-python:  ## pytest: a debug-mode pass of the behaviour tests, then everything (examples, seed, conformance)
	PYTHONASYNCIODEBUG=1 $(PYTHON) -m pytest -q -p no:cacheprovider tests \
		--ignore=tests/test_conformance.py --ignore=tests/test_seed.py
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

conformance:  ## CPython's test_asyncio on ferroloop, with per-module counts (also part of `make test`)
	$(PYTHON) tests/conformance/run.py

libraries: deps build  ## anyio's, httpx's, uvicorn's, aiohttp's, redis-py's and asyncpg's own suites on ferroloop and on asyncio, compared (downloads them)
	$(PYTHON) tests/libraries/run.py

stubtest:  ## check the hand-written .pyi stubs against the built native module
	$(PYTHON) -m mypy.stubtest ferroloop._ferroloop

lint:  ## cargo fmt/clippy, ruff, mypy --strict on the package
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	for crate in bench/echo-client bench/ceiling-server; do \
		cargo fmt --check --manifest-path $$crate/Cargo.toml && \
		cargo clippy --quiet --release --manifest-path $$crate/Cargo.toml -- -D warnings || exit 1; \
	done
	$(PYTHON) -m ruff check python tests examples bench tools
	$(PYTHON) -m ruff format --check python tests examples bench tools
	$(PYTHON) -m mypy --strict python/ferroloop

format:  ## apply cargo fmt and ruff format
	cargo fmt
	cargo fmt --manifest-path bench/echo-client/Cargo.toml
	cargo fmt --manifest-path bench/ceiling-server/Cargo.toml
	$(PYTHON) -m ruff format python tests examples bench tools

clean:  ## remove build outputs
	rm -rf dist target
