"""The two halves of a `call_soon_threadsafe()` callback's cost, apart from threads and the GIL.

    python bench/threadsafe_cost.py [MODULE:ATTR ...]   (default: ferroloop, uvloop, rloop)

`micro.py`'s `call_soon_threadsafe` row submits from a second thread, so its time mixes the two
loops' per-call costs with the GIL's hand-offs between the threads. Here the loop's own thread
submits N callbacks (timed: the submission), then one turn runs them (timed: the run), best of
7 rounds, in nanoseconds per callback. Each loop runs in its own subprocess.
"""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
import time

N = 200_000
ROUNDS = 7
DEFAULT = ("ferroloop:new_event_loop", "uvloop:new_event_loop", "rloop:new_event_loop")


def measure(spec: str) -> tuple[float, float]:
    module, _, attr = spec.partition(":")
    loop = getattr(importlib.import_module(module), attr)()
    ran = 0

    def callback(i: int) -> None:
        nonlocal ran
        ran += 1

    best_submit = best_run = float("inf")
    try:
        for _ in range(ROUNDS):
            submit = loop.call_soon_threadsafe
            t0 = time.perf_counter()
            for i in range(N):
                submit(callback, i)
            t1 = time.perf_counter()
            loop.run_until_complete(asyncio.sleep(0))
            t2 = time.perf_counter()
            best_submit, best_run = min(best_submit, t1 - t0), min(best_run, t2 - t1)
    finally:
        loop.close()
    if ran != N * ROUNDS:
        raise SystemExit(f"{spec}: {ran} of {N * ROUNDS} callbacks ran")
    return best_submit / N * 1e9, best_run / N * 1e9


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        submit, run = measure(sys.argv[2])
        print(f"{submit:.0f} {run:.0f}")
        return 0
    print("| loop | submission ns/call | run ns/callback |\n|---|---:|---:|")
    for spec in sys.argv[1:] or DEFAULT:
        done = subprocess.run([sys.executable, __file__, "--one", spec], capture_output=True, text=True)
        if done.returncode:
            print(f"| {spec} | failed: {(done.stderr.strip().splitlines() or ['?'])[-1]} | |")
            continue
        submit, run = done.stdout.split()
        print(f"| {spec} | {submit} | {run} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
