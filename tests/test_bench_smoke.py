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


def load_bench_stats():
    sys.path.insert(0, str(BENCH))
    try:
        import stats
    finally:
        sys.path.remove(str(BENCH))
    return stats


def test_ratio_interval_reaches_one_for_samples_from_the_same_spread():
    stats = load_bench_stats()
    mine = [62.1, 62.7, 92.8, 62.9, 81.1, 62.4, 76.4, 82.6, 70.5]
    theirs = [65.9, 66.7, 84.2, 88.1, 59.5, 90.7, 66.4, 81.4, 74.3]
    low, high = stats.ratio_interval(mine, theirs)
    assert low < 1 <= high
    assert "within the noise" in stats.behind_verdict(mine, theirs)


def test_ratio_interval_lies_below_one_when_every_sample_is_lower():
    stats = load_bench_stats()
    mine = [70.0, 72.0, 71.0, 69.0, 73.0]
    theirs = [90.0, 91.0, 89.0, 92.0, 88.0]
    low, high = stats.ratio_interval(mine, theirs)
    assert low <= 71 / 90 <= high < 1
    assert stats.behind_verdict(mine, theirs).endswith(": behind")


def test_ratio_interval_is_the_same_when_computed_twice():
    stats = load_bench_stats()
    mine, theirs = [1.0, 2.0, 3.0, 4.0], [2.0, 2.5, 3.5, 1.5]
    assert stats.ratio_interval(mine, theirs) == stats.ratio_interval(mine, theirs)
