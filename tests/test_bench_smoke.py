"""Smoke runs of the benchmark runners: they must build their client, start every loop, and print
a complete table. No timing is asserted here: performance lives in the benchmark reports."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
LOOPS = "ferroloop=ferroloop:new_event_loop,asyncio=asyncio:new_event_loop"


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=BENCH.parent, capture_output=True, text=True, timeout=600, check=False
    )


def test_micro_benchmark_runner_quick():
    done = run_bench(str(BENCH / "micro.py"), "--quick", "--rows", "call_soon,sleep0_pingpong", "--loops", LOOPS)
    assert done.returncode == 0, done.stderr
    assert "| call_soon | " in done.stdout
    assert "geometric mean" in done.stdout
    assert "| FAILED" not in done.stdout


@pytest.mark.skipif(shutil.which("cargo") is None, reason="the echo client is built with cargo")
def test_network_benchmark_runner_quick():
    done = run_bench(str(BENCH / "net.py"), "--quick", "--rows", "sock tcp,protocol tcp", "--loops", LOOPS)
    assert done.returncode == 0, done.stderr
    for row in ("sock tcp 1KiB", "protocol tcp 1KiB"):
        assert f"| {row} |" in done.stdout
    assert "| echo-protocol |" in done.stdout
