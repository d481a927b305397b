"""run_in_executor, set_default_executor and shutdown_default_executor.

Every test runs on ferroloop and on the stdlib asyncio loop (the oracle) through the ``loop``
fixture of conftest.py, whose teardown also shuts down the default executor.
"""

import asyncio
import concurrent.futures
import math
import multiprocessing
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

WAIT = 10.0  # generous bound; nothing here should take more than a fraction of a second


def run(loop, aw, timeout=WAIT):
    return loop.run_until_complete(asyncio.wait_for(aw, timeout))


class Boom(Exception):
    pass


def current_thread():
    return threading.current_thread()


@pytest.fixture
def pool(loop):
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-pool")
    yield executor
    executor.shutdown(wait=True)


# --------------------------------------------------------------------------
# run_in_executor
# --------------------------------------------------------------------------


def test_default_executor_runs_in_other_thread(loop):
    fut = loop.run_in_executor(None, current_thread)
    assert asyncio.isfuture(fut)
    worker = run(loop, fut)
    assert worker is not threading.current_thread()


def test_default_executor_passes_args(loop):
    assert run(loop, loop.run_in_executor(None, divmod, 17, 5)) == (3, 2)
    assert run(loop, loop.run_in_executor(None, sorted, [3, 1, 2])) == [1, 2, 3]


def test_custom_executor(loop, pool):
    worker = run(loop, loop.run_in_executor(pool, current_thread))
    assert worker.name.startswith("test-pool")


def test_many_calls_return_in_order(loop, pool):
    async def main():
        futures = [loop.run_in_executor(pool, pow, i, 2) for i in range(25)]
        return await asyncio.gather(*futures)

    assert run(loop, main()) == [i * i for i in range(25)]


def test_loop_keeps_running_while_executor_blocks(loop, pool):
    release = threading.Event()
    ticks = []

    async def ticker():
        while not release.is_set():
            ticks.append(1)
            await asyncio.sleep(0.005)

    async def main():
        blocked = loop.run_in_executor(pool, release.wait, WAIT)
        ticking = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.05)
        release.set()
        assert await blocked is True
        await ticking

    run(loop, main())
    assert len(ticks) >= 2


@pytest.mark.parametrize("executor", ["default", "custom"])
def test_exception_propagates(loop, pool, executor):
    raised = Boom("from the worker")

    def fail():
        raise raised

    with pytest.raises(Boom) as excinfo:
        run(loop, loop.run_in_executor(pool if executor == "custom" else None, fail))
    assert excinfo.value is raised


def test_cancel_before_start_skips_work(loop):
    executor = ThreadPoolExecutor(max_workers=1)
    try:
        gate = threading.Event()
        ran = []

        async def main():
            first = loop.run_in_executor(executor, gate.wait, WAIT)
            second = loop.run_in_executor(executor, ran.append, "second")
            second.cancel()
            for _ in range(3):
                await asyncio.sleep(0)
            gate.set()
            assert await first is True
            return second

        second = run(loop, main())
        executor.shutdown(wait=True)
        assert second.cancelled()
        assert ran == []
    finally:
        executor.shutdown(wait=True)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (concurrent.futures.CancelledError("from the worker"), asyncio.CancelledError),
        (concurrent.futures.InvalidStateError("from the worker"), asyncio.InvalidStateError),
        (concurrent.futures.TimeoutError("from the worker"), asyncio.TimeoutError),
    ],
    ids=["CancelledError", "InvalidStateError", "TimeoutError"],
)
def test_concurrent_futures_exceptions_become_asyncio_ones(loop, pool, raised, expected):
    def fail():
        raise raised

    async def main():
        fut = loop.run_in_executor(pool, fail)
        try:
            await fut
        except BaseException as exc:  # CancelledError is a BaseException
            return exc
        return None

    got = run(loop, main())
    assert type(got) is expected
    assert got.args == raised.args
    assert got is not raised  # a new exception, even where the two classes are one (TimeoutError)


@pytest.mark.skipif(not hasattr(asyncio.futures, "_convert_future_exc"), reason="no stdlib helper to compare with")
@pytest.mark.parametrize(
    "exc",
    [
        concurrent.futures.CancelledError("a"),
        concurrent.futures.InvalidStateError("b"),
        concurrent.futures.TimeoutError("c"),
        ValueError("d"),
    ],
    ids=["CancelledError", "InvalidStateError", "TimeoutError", "other"],
)
def test_ferroloops_fallback_exception_conversion_matches_the_stdlib(exc):
    """ferroloop uses asyncio's private conversion helper when the interpreter has one, and its own
    otherwise: the two must agree on type, arguments and identity."""
    from ferroloop import loop as ferroloop_loop

    ours = ferroloop_loop._convert_own_future_exc(exc)
    theirs = asyncio.futures._convert_future_exc(exc)
    assert type(ours) is type(theirs)
    assert ours.args == theirs.args
    assert (ours is exc) == (theirs is exc)


def test_result_of_a_future_cancelled_while_running_is_dropped(loop, pool):
    started, release = threading.Event(), threading.Event()

    def work():
        started.set()
        release.wait(WAIT)
        return "late"

    async def main():
        fut = loop.run_in_executor(pool, work)
        await loop.run_in_executor(None, started.wait, WAIT)
        fut.cancel()
        release.set()
        await asyncio.sleep(0.05)  # the worker finishes and its result arrives
        return fut

    fut = run(loop, main())
    assert fut.cancelled()


class _SubclassFutureExecutor(ThreadPoolExecutor):
    """An executor whose futures are a subclass of concurrent.futures.Future."""

    class Future(concurrent.futures.Future):
        pass

    def submit(self, fn, /, *args, **kwargs):
        fut = self.Future()
        inner = super().submit(fn, *args, **kwargs)

        def copy(done):
            if done.exception() is not None:
                fut.set_exception(done.exception())
            else:
                fut.set_result(done.result())

        inner.add_done_callback(copy)
        return fut


def test_executor_returning_a_future_subclass(loop):
    executor = _SubclassFutureExecutor(max_workers=1)
    try:
        assert run(loop, loop.run_in_executor(executor, pow, 2, 10)) == 1024
    finally:
        executor.shutdown(wait=True)


def test_coroutine_function_rejected_in_debug_mode(loop):
    loop.set_debug(True)

    async def not_for_threads():
        pass

    with pytest.raises(TypeError):
        loop.run_in_executor(None, not_for_threads)


def test_shut_down_custom_executor_raises(loop):
    executor = ThreadPoolExecutor(max_workers=1)
    executor.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        run(loop, loop.run_in_executor(executor, int, "1"))


# --------------------------------------------------------------------------
# set_default_executor
# --------------------------------------------------------------------------


def test_set_default_executor(loop):
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="my-default")
    try:
        loop.set_default_executor(executor)
        worker = run(loop, loop.run_in_executor(None, current_thread))
        assert worker.name.startswith("my-default")
    finally:
        run(loop, loop.shutdown_default_executor())
        executor.shutdown(wait=True)


@pytest.mark.parametrize("kind", ["process-pool", "object"])
def test_set_default_executor_requires_thread_pool(loop, kind):
    executor = ProcessPoolExecutor(max_workers=1) if kind == "process-pool" else object()
    try:
        if sys.version_info >= (3, 11):
            # Deprecated in 3.8, an error since 3.11.
            with pytest.raises(TypeError):
                loop.set_default_executor(executor)
        else:
            with pytest.warns(DeprecationWarning):
                loop.set_default_executor(executor)
    finally:
        if kind == "process-pool":
            executor.shutdown(wait=True)
    if sys.version_info >= (3, 11):
        # The rejected executor was not installed.
        worker = run(loop, loop.run_in_executor(None, current_thread))
        assert worker is not threading.current_thread()


# --------------------------------------------------------------------------
# shutdown_default_executor
# --------------------------------------------------------------------------


def test_shutdown_default_executor_joins_threads(loop):
    worker = run(loop, loop.run_in_executor(None, current_thread))
    assert worker.is_alive()
    assert run(loop, loop.shutdown_default_executor()) is None
    assert not worker.is_alive()


def test_shutdown_default_executor_waits_for_pending_work(loop):
    finished = []

    def slow():
        time.sleep(0.05)
        finished.append(True)

    async def main():
        fut = loop.run_in_executor(None, slow)
        await loop.shutdown_default_executor()
        assert finished == [True]
        await fut

    run(loop, main())


def test_shutdown_default_executor_without_executor(loop):
    assert run(loop, loop.shutdown_default_executor()) is None


def test_shutdown_default_executor_twice(loop):
    run(loop, loop.run_in_executor(None, int))
    run(loop, loop.shutdown_default_executor())
    run(loop, loop.shutdown_default_executor())


def test_run_in_default_executor_after_shutdown_raises(loop, pool):
    run(loop, loop.shutdown_default_executor())
    with pytest.raises(RuntimeError):
        run(loop, loop.run_in_executor(None, int))
    # Explicit executors are not affected.
    assert run(loop, loop.run_in_executor(pool, int, "7")) == 7


# --------------------------------------------------------------------------
# closed loop
# --------------------------------------------------------------------------


@pytest.mark.parametrize("executor", ["default", "custom"])
def test_run_in_executor_after_close_raises(loop, pool, executor):
    loop.close()
    with pytest.raises(RuntimeError):
        loop.run_in_executor(pool if executor == "custom" else None, int)


# --------------------------------------------------------------------------
# ProcessPoolExecutor
# --------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _resource_tracker_running():
    # Spawned processes start multiprocessing's resource tracker once per session; it keeps a pipe
    # open in this process for good. Start it up front so it is not mistaken for a leaked fd.
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


@pytest.fixture
def process_pool(loop):
    # "spawn" rather than fork: forking the multi-threaded test process is unsafe (and warned
    # about from Python 3.12 on). Builtins are used as the work functions, so nothing from this
    # module needs to be importable in the child.
    executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    yield executor
    executor.shutdown(wait=True)


def test_process_pool_roundtrip(loop, process_pool):
    async def main():
        futures = [loop.run_in_executor(process_pool, math.factorial, n) for n in (5, 10, 20)]
        return await asyncio.gather(*futures)

    assert run(loop, main(), timeout=60) == [120, 3628800, 2432902008176640000]


def test_process_pool_exception_propagates(loop, process_pool):
    with pytest.raises(ValueError, match="negative"):
        run(loop, loop.run_in_executor(process_pool, math.factorial, -1), timeout=60)
