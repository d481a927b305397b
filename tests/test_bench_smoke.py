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


@pytest.mark.timeout(300)
def test_micro_benchmark_runner_quick():
    done = run_bench(str(BENCH / "micro.py"), "--quick", "--rows", "call_soon,sleep0_pingpong", "--loops", LOOPS)
    assert done.returncode == 0, done.stderr
    assert "| call_soon | " in done.stdout
    assert "geometric mean" in done.stdout
    assert "| FAILED" not in done.stdout


@pytest.mark.skipif(shutil.which("cargo") is None, reason="the echo clients are built with cargo")
@pytest.mark.timeout(900)  # builds the echo client (rustls) and the ceiling server from scratch
def test_all_benchmarks_runner_quick_writes_report_and_chart(tmp_path):
    """bench/all.py --quick: micro, process, echo (plain, TLS, ceiling), HTTP, app and idle-memory
    runners all run on every installed loop, and the report and chart come out."""
    done = run_bench(str(BENCH / "all.py"), "--quick", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    for needle in ("| micro (callbacks, timers, tasks) |", "| echo, Protocol |", "protocol tcp 1KiB", "idle"):
        assert needle in report
    assert "| FAILED" not in report
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="instruction counts need valgrind")
@pytest.mark.timeout(300)
def test_instruction_counter_prints_a_count_per_loop_and_row():
    done = run_bench(
        str(BENCH / "instructions.py"),
        "--rows",
        "call_soon",
        "--ops",
        "500",
        "--loops",
        "ferroloop=ferroloop:new_event_loop",
    )
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("| call_soon |"))
    count = int(row.split("|")[2])
    assert count > 100  # a callback costs hundreds of instructions at the very least
