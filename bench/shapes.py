"""Single-process loop shapes for profiling one change at a time.

`micro.py` is the reference benchmark (fresh subprocesses, interleaved, medians). This script is
the quick companion used while optimising: one process per loop, best of N runs of each shape,
easy to run under `perf record` or `valgrind --tool=callgrind`. Numbers quoted from it in
docs/perf-log.md name the shape and the command.

    python bench/shapes.py ferroloop uvloop asyncio          # every shape, best of 3
    python bench/shapes.py ferroloop --shape call_soon_chain --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import time
from typing import Callable

Shape = Callable[[asyncio.AbstractEventLoop, int], float]


def call_soon_chain(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """One callback per loop turn: each schedules the next (the poll runs every turn)."""
    count = 0

    def step() -> None:
        nonlocal count
        count += 1
        if count < n:
            loop.call_soon(step)
        else:
            loop.stop()

    loop.call_soon(step)
    start = time.perf_counter()
    loop.run_forever()
    return time.perf_counter() - start


def call_soon_batch(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """Batches of 1000 callbacks per turn (queue and handle costs, few polls)."""
    ran = scheduled = 0

    def leaf() -> None:
        nonlocal ran
        ran += 1
        if ran == n:
            loop.stop()

    def driver() -> None:
        nonlocal scheduled
        call_soon = loop.call_soon
        for _ in range(1000):
            call_soon(leaf)
        scheduled += 1000
        if scheduled < n:
            call_soon(driver)

    loop.call_soon(driver)
    start = time.perf_counter()
    loop.run_forever()
    return time.perf_counter() - start


async def _value(i: int) -> int:
    return i


def task_batch(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """Create 1000 tasks, await them, repeat."""

    async def main() -> None:
        create_task = loop.create_task
        for base in range(0, n, 1000):
            for task in [create_task(_value(i)) for i in range(base, base + 1000)]:
                await task

    start = time.perf_counter()
    loop.run_until_complete(main())
    return time.perf_counter() - start


def future_roundtrip(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """create_future, resolve it from a callback, await it."""

    async def main() -> None:
        for _ in range(n):
            fut = loop.create_future()
            loop.call_soon(fut.set_result, None)
            await fut

    start = time.perf_counter()
    loop.run_until_complete(main())
    return time.perf_counter() - start


def sleep0(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """asyncio.sleep(0) in one task."""

    async def main() -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    start = time.perf_counter()
    loop.run_until_complete(main())
    return time.perf_counter() - start


SHAPES: dict[str, tuple[Shape, int]] = {
    "call_soon_chain": (call_soon_chain, 300_000),
    "call_soon_batch": (call_soon_batch, 1_000_000),
    "task_batch": (task_batch, 200_000),
    "future_roundtrip": (future_roundtrip, 100_000),
    "sleep0": (sleep0, 100_000),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("loops", nargs="+", help="modules with new_event_loop(): ferroloop, uvloop, asyncio")
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES), help="shapes to run (default: all)")
    parser.add_argument("--runs", type=int, default=3, help="runs per shape; the best is reported")
    args = parser.parse_args()
    for name in args.shape or list(SHAPES):
        shape, n = SHAPES[name]
        for module_name in args.loops:
            module = importlib.import_module(module_name)
            best = 0.0
            for _ in range(args.runs):
                loop = module.new_event_loop()
                try:
                    best = max(best, n / shape(loop, n))
                finally:
                    loop.close()
            print(f"{name:18} {module_name:10} {best / 1e6:8.3f} M ops/s", flush=True)


if __name__ == "__main__":
    main()
