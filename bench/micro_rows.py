"""Benchmark bodies for bench/micro.py, and the entry point of one sample.

Kept apart from the runner so that each sample can run in a fresh interpreter
that imports only asyncio, this module and the loop under test: loops do not
share warm state (caches, executor threads, allocator arenas), and a loop that
crashes or hangs takes down one sample instead of the whole run.

Every body takes a loop and an operation count, times its own hot part with
``time.perf_counter`` (so checks and clean-up stay outside the timing) and
checks its result. A check that does not hold raises ``CheckFailed``; the
runner then reports the cell as FAILED instead of a number, so a loop that
drops or reorders work cannot post a fast time.

Run by the runner as::

    python micro_rows.py --probe NAME=MODULE:ATTR
    python micro_rows.py --sample NAME=MODULE:ATTR ROW OPS WARMUP_OPS

Each prints one JSON object on its last line of stdout; a sample's result also carries
``peak_rss_kib``, the child's peak resident set size (interpreter baseline included).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import shutil
import sys
import threading
import time
import traceback
from typing import Callable

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

# Widths and batch sizes that the rows' descriptions in bench/README.md refer to.
CALL_SOON_BATCH = 100  # leaf callbacks that one driver callback schedules
CALL_LATER_SPREAD = 0.001  # timers get distinct delays spread over [0, 1 ms)
TASK_BATCH = 100  # tasks created before awaiting them, in the create_task row
GATHER_WIDTH = 10_000  # coroutines in one gather()
QUEUE_CONSUMERS = 4
QUEUE_MAXSIZE = 4  # one slot per consumer, so items are handed over through the loop
EXECUTOR_BATCH = 100  # run_in_executor calls awaited together
SPAWN_CONCURRENCY = 4  # subprocesses started and awaited together, in the spawn row
PIPE_READ_SIZE = 65536  # bytes asked for by each proc.stdout.read() in the pipe row
MIB = 1 << 20  # one op of the pipe row

# Cap on the post-run wait that lets a wrongly fired (cancelled) timer show up.
TIMER_GRACE = 0.005


class CheckFailed(Exception):
    """A benchmark body saw a wrong result."""


class RowUnavailable(Exception):
    """A benchmark body cannot run here (a program it needs is missing)."""


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def _expected_sum(n: int) -> int:
    return n * (n - 1) // 2


# --------------------------------------------------------------------------- rows


def bench_call_soon(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """A chain of driver callbacks, each scheduling a batch of no-arg leaves."""
    ran = 0
    scheduled = 0
    inline = 0  # leaves run inside call_soon itself instead of later by the loop

    def leaf() -> None:
        nonlocal ran
        ran += 1
        if ran == n:
            loop.stop()

    def driver() -> None:
        nonlocal scheduled, inline
        k = min(CALL_SOON_BATCH, n - scheduled)
        call_soon = loop.call_soon
        before = ran
        for _ in range(k):
            call_soon(leaf)
        inline += ran - before
        scheduled += k
        if scheduled < n:
            call_soon(driver)

    loop.call_soon(driver)
    t0 = time.perf_counter()
    loop.run_forever()
    elapsed = time.perf_counter() - t0
    _check(ran == n, f"{ran} of {n} callbacks ran")
    _check(inline == 0, f"{inline} callbacks ran inside call_soon() instead of from the loop")
    return elapsed


def bench_call_later(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """n timers with distinct delays in [0, 1 ms), every odd one cancelled."""
    fired: list[int] = []
    expect = (n + 1) // 2

    def on_timer(i: int) -> None:
        fired.append(i)
        if len(fired) == expect:
            loop.stop()

    def start() -> None:
        step = CALL_LATER_SPREAD / n
        call_later = loop.call_later
        handles = [call_later(i * step, on_timer, i) for i in range(n)]
        for h in handles[1::2]:
            h.cancel()

    loop.call_soon(start)
    t0 = time.perf_counter()
    loop.run_forever()
    elapsed = time.perf_counter() - t0
    # Give a cancelled timer due after the last kept one the chance to fire wrongly.
    loop.run_until_complete(asyncio.sleep(TIMER_GRACE))
    # Only which timers fired is checked, not their order: the delays are sub-millisecond
    # apart, and a loop with 1 ms timer resolution (libuv, so uvloop) may fire them in any
    # order within a millisecond.
    _check(len(fired) == expect, f"{len(fired)} timers fired, expected {expect}")
    _check(sorted(fired) == list(range(0, n, 2)), "a cancelled timer fired, or a kept one fired twice")
    return elapsed


async def _ret(i: int) -> int:
    return i


def bench_create_task(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """Create TASK_BATCH trivial tasks, await each, repeat until n tasks ran."""

    eager = 0  # batches whose first task had already run when created

    async def main() -> int:
        nonlocal eager
        total = 0
        create_task = loop.create_task
        for base in range(0, n, TASK_BATCH):
            tasks = [create_task(_ret(i)) for i in range(base, min(base + TASK_BATCH, n))]
            if tasks[0].done():
                eager += 1
            for t in tasks:
                total += await t
        return total

    coro = main()
    t0 = time.perf_counter()
    total = loop.run_until_complete(coro)
    elapsed = time.perf_counter() - t0
    _check(total == _expected_sum(n), "task results do not add up")
    _check(eager == 0, f"tasks ran eagerly inside create_task() in {eager} batches")
    return elapsed


def bench_sleep0_pingpong(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """Two tasks taking turns through asyncio.sleep(0); n turns in all."""
    turns = 0
    last = -1
    out_of_turn = 0

    async def player(me: int) -> None:
        nonlocal turns, last, out_of_turn
        sleep = asyncio.sleep
        while turns < n:
            if last == me:
                out_of_turn += 1
            last = me
            turns += 1
            await sleep(0)

    async def main() -> None:
        await asyncio.gather(player(0), player(1))

    coro = main()
    t0 = time.perf_counter()
    loop.run_until_complete(coro)
    elapsed = time.perf_counter() - t0
    _check(turns == n, f"{turns} turns, expected {n}")
    _check(out_of_turn == 0, f"{out_of_turn} turns taken out of order (ready queue is not FIFO)")
    return elapsed


def bench_future_roundtrip(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """create_future, set_result from call_soon, await it; n times."""

    inline = 0  # futures already resolved when call_soon() returned

    async def main() -> int:
        nonlocal inline
        total = 0
        create_future = loop.create_future
        call_soon = loop.call_soon
        for i in range(n):
            fut = create_future()
            call_soon(fut.set_result, i)
            if fut.done():
                inline += 1
            total += await fut
        return total

    coro = main()
    t0 = time.perf_counter()
    total = loop.run_until_complete(coro)
    elapsed = time.perf_counter() - t0
    _check(total == _expected_sum(n), "future results do not add up")
    _check(inline == 0, f"{inline} set_result calls ran inside call_soon() instead of from the loop")
    return elapsed


def bench_call_soon_threadsafe(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """A second thread submits n callbacks; timed until the loop ran the last."""
    seen = 0
    out_of_order = 0
    done = loop.create_future()

    def on_call(i: int) -> None:
        nonlocal seen, out_of_order
        if i != seen:
            out_of_order += 1
        seen += 1
        if seen == n:
            done.set_result(None)

    def producer() -> None:
        submit = loop.call_soon_threadsafe
        for i in range(n):
            submit(on_call, i)

    async def main() -> float:
        thread = threading.Thread(target=producer, name="bench-producer")
        t0 = time.perf_counter()
        thread.start()
        await done
        elapsed = time.perf_counter() - t0
        thread.join()
        return elapsed

    elapsed = loop.run_until_complete(main())
    _check(seen == n, f"{seen} of {n} callbacks ran")
    _check(out_of_order == 0, f"{out_of_order} callbacks ran out of submission order")
    return elapsed


async def _sleep0_ret(i: int) -> int:
    await asyncio.sleep(0)
    return i


def bench_gather(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """gather() of GATHER_WIDTH coroutines that each sleep(0); n // GATHER_WIDTH rounds."""
    rounds = max(1, n // GATHER_WIDTH)
    width = min(n, GATHER_WIDTH)
    want = list(range(width))
    bad = 0

    async def main() -> None:
        nonlocal bad
        for _ in range(rounds):
            got = await asyncio.gather(*[_sleep0_ret(i) for i in range(width)])
            if got != want:
                bad += 1

    coro = main()
    t0 = time.perf_counter()
    loop.run_until_complete(coro)
    elapsed = time.perf_counter() - t0
    _check(bad == 0, f"{bad} of {rounds} gathers returned wrong results")
    return elapsed


def bench_queue(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """One producer puts n items into a bounded asyncio.Queue; 4 consumer tasks get them."""

    async def consumer(q: asyncio.Queue) -> tuple[int, int]:
        count = total = 0
        while True:
            item = await q.get()
            if item is None:
                return count, total
            count += 1
            total += item

    async def main() -> list[tuple[int, int]]:
        q: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_MAXSIZE)
        consumers = [loop.create_task(consumer(q)) for _ in range(QUEUE_CONSUMERS)]
        put = q.put
        for i in range(n):
            await put(i)
        for _ in consumers:
            await put(None)
        return await asyncio.gather(*consumers)

    coro = main()
    t0 = time.perf_counter()
    results = loop.run_until_complete(coro)
    elapsed = time.perf_counter() - t0
    got = sum(c for c, _ in results)
    _check(got == n, f"consumers got {got} items, expected {n}")
    _check(sum(s for _, s in results) == _expected_sum(n), "consumed items do not add up")
    return elapsed


def _identity(i: int) -> int:
    return i


def bench_run_in_executor(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """n calls of a trivial function in the default executor, EXECUTOR_BATCH at a time."""

    async def main() -> int:
        total = 0
        run = loop.run_in_executor
        for base in range(0, n, EXECUTOR_BATCH):
            futs = [run(None, _identity, i) for i in range(base, min(base + EXECUTOR_BATCH, n))]
            total += sum(await asyncio.gather(*futs))
        return total

    coro = main()
    t0 = time.perf_counter()
    total = loop.run_until_complete(coro)
    elapsed = time.perf_counter() - t0
    _check(total == _expected_sum(n), "executor results do not add up")
    return elapsed


def _program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RowUnavailable(f"no `{name}` program on PATH")
    return path


def bench_subprocess_spawn(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """n runs of `true` through create_subprocess_exec, SPAWN_CONCURRENCY at a time."""
    true = _program("true")
    devnull = asyncio.subprocess.DEVNULL

    async def one() -> int | None:
        proc = await asyncio.create_subprocess_exec(true, stdin=devnull, stdout=devnull, stderr=devnull)
        return await proc.wait()

    async def main() -> list[int | None]:
        codes: list[int | None] = []
        for base in range(0, n, SPAWN_CONCURRENCY):
            codes += await asyncio.gather(*[one() for _ in range(min(SPAWN_CONCURRENCY, n - base))])
        return codes

    coro = main()
    t0 = time.perf_counter()
    codes = loop.run_until_complete(coro)
    elapsed = time.perf_counter() - t0
    _check(len(codes) == n, f"{len(codes)} of {n} processes reported")
    bad = [c for c in codes if c != 0]
    _check(not bad, f"{len(bad)} of {n} processes returned non-zero codes, e.g. {bad[0] if bad else None}")
    return elapsed


def bench_pipe_throughput(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """Read n MiB that `head -c` copies from /dev/zero, through a subprocess stdout pipe."""
    head = _program("head")
    want = n * MIB

    async def main() -> tuple[float, int, int | None]:
        proc = await asyncio.create_subprocess_exec(
            head, "-c", str(want), "/dev/zero", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        read = proc.stdout.read
        got = 0
        # Timed from the spawned process to its exit status; the spawn is the other row's business.
        t0 = time.perf_counter()
        while True:
            chunk = await read(PIPE_READ_SIZE)
            if not chunk:
                break
            got += len(chunk)
        code = await proc.wait()
        return time.perf_counter() - t0, got, code

    elapsed, got, code = loop.run_until_complete(main())
    _check(got == want, f"read {got} bytes, expected {want}")
    _check(code == 0, f"`head` returned {code}")
    return elapsed


BenchFn = Callable[[asyncio.AbstractEventLoop, int], float]

# Row name -> body. The runner owns the op counts and the display order.
ROWS: dict[str, BenchFn] = {
    "call_soon": bench_call_soon,
    "call_later_half_cancelled": bench_call_later,
    "create_task_await": bench_create_task,
    "sleep0_pingpong": bench_sleep0_pingpong,
    "future_roundtrip": bench_future_roundtrip,
    "call_soon_threadsafe": bench_call_soon_threadsafe,
    "gather_10k_sleep0": bench_gather,
    "queue_4_consumers": bench_queue,
    "run_in_executor": bench_run_in_executor,
    "subprocess_spawn": bench_subprocess_spawn,
    "pipe_throughput": bench_pipe_throughput,
}

# Group name -> its rows. The runner prints one table (and one geometric mean) per group.
GROUPS: dict[str, list[str]] = {
    "micro": [
        "call_soon",
        "call_later_half_cancelled",
        "create_task_await",
        "sleep0_pingpong",
        "future_roundtrip",
        "call_soon_threadsafe",
        "gather_10k_sleep0",
        "queue_4_consumers",
        "run_in_executor",
    ],
    "process": ["subprocess_spawn", "pipe_throughput"],
}
assert sorted(r for rows in GROUPS.values() for r in rows) == sorted(ROWS), "GROUPS and ROWS disagree"


# --------------------------------------------------------------------------- child side


def load_factory(spec: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop], object]:
    """Turn ``name=module:attr`` into (name, factory, module)."""
    name, _, target = spec.partition("=")
    module_name, _, attr = target.partition(":")
    if not (name and module_name and attr):
        raise ValueError(f"loop spec {spec!r} is not NAME=MODULE:ATTR")
    module = importlib.import_module(module_name)
    return name, getattr(module, attr), module


def _module_version(module: object) -> str:
    top = getattr(module, "__name__", "").partition(".")[0]
    if top == "asyncio":
        return "stdlib"
    version = getattr(sys.modules.get(top), "__version__", None)
    if version is None:
        try:
            from importlib import metadata

            version = metadata.version(top)
        except Exception:
            version = "unknown"
    return str(version)


def _close(loop: asyncio.AbstractEventLoop) -> None:
    shutdown = getattr(loop, "shutdown_default_executor", None)
    if shutdown is not None and not loop.is_closed():
        loop.run_until_complete(shutdown())
    asyncio.set_event_loop(None)
    loop.close()


def probe(spec: str) -> dict:
    """Import the loop, make one, check it runs a coroutine as the running loop."""
    name, factory, module = load_factory(spec)
    loop = factory()
    try:
        asyncio.set_event_loop(loop)

        async def who() -> object:
            return asyncio.get_running_loop()

        _check(loop.run_until_complete(who()) is loop, "get_running_loop() is not the loop")
    finally:
        _close(loop)
    return {
        "name": name,
        "version": _module_version(module),
        "loop_type": f"{type(loop).__module__}.{type(loop).__qualname__}",
    }


def peak_rss_kib() -> int | None:
    """This process's peak resident set size in KiB (children not included), if known."""
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def sample(spec: str, row: str, ops: int, warmup_ops: int) -> dict:
    """One timed sample on a fresh loop, after a warm-up run of the same body."""
    _, factory, _ = load_factory(spec)
    body = ROWS[row]
    loop = factory()
    try:
        asyncio.set_event_loop(loop)
        if warmup_ops > 0:
            body(loop, warmup_ops)
        elapsed = body(loop, ops)
    finally:
        _close(loop)
    return {"ops": ops, "seconds": elapsed}


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["--probe"] and len(argv) == 2:
            result = {"ok": True, **probe(argv[1])}
        elif argv[:1] == ["--sample"] and len(argv) == 5:
            result = {"ok": True, **sample(argv[1], argv[2], int(argv[3]), int(argv[4]))}
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except CheckFailed as exc:
        result = {"ok": False, "error": f"check failed: {exc}"}
    except RowUnavailable as exc:
        result = {"ok": False, "error": f"cannot run here: {exc}"}
    except NotImplementedError as exc:
        traceback.print_exc()
        result = {"ok": False, "error": f"not supported by the loop: NotImplementedError {exc}".strip()}
    except BaseException as exc:
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}".strip()}
    if argv[:1] == ["--sample"]:
        result["peak_rss_kib"] = peak_rss_kib()
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
