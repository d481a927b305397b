"""High-level asyncio machinery (tasks, futures, synchronisation) on the loop under test."""

from __future__ import annotations

import asyncio
import contextvars
import sys

import pytest

py311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="needs Python 3.11+")

user: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="anonymous")


async def _value_after(value, delay=0.0):
    await asyncio.sleep(delay)
    return value


async def _raise_after(exc, delay=0.0):
    await asyncio.sleep(delay)
    raise exc


# --------------------------------------------------------------------------
# gather / wait / wait_for / timeout
# --------------------------------------------------------------------------


def test_gather_returns_results_in_argument_order(loop):
    async def main():
        return await asyncio.gather(_value_after("slow", 0.02), _value_after("fast", 0), _value_after("mid", 0.01))

    assert loop.run_until_complete(main()) == ["slow", "fast", "mid"]


def test_gather_propagates_first_exception(loop):
    async def main():
        sibling = asyncio.ensure_future(_value_after("sibling", 0.01))
        with pytest.raises(ValueError, match="gathered"):
            await asyncio.gather(_raise_after(ValueError("gathered")), sibling)
        # gather() does not cancel the other awaitables on error.
        return await sibling

    assert loop.run_until_complete(main()) == "sibling"


def test_gather_return_exceptions_collects_them(loop):
    async def main():
        return await asyncio.gather(_value_after(1), _raise_after(KeyError("k")), return_exceptions=True)

    result = loop.run_until_complete(main())
    assert result[0] == 1
    assert isinstance(result[1], KeyError)


def test_gather_cancel_cancels_children(loop):
    async def main():
        child = asyncio.ensure_future(asyncio.sleep(3600))
        gathered = asyncio.gather(child)
        await asyncio.sleep(0)
        gathered.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gathered
        return child.cancelled()

    assert loop.run_until_complete(main()) is True


def test_wait_first_completed(loop):
    async def main():
        fast = asyncio.ensure_future(_value_after("fast", 0))
        slow = asyncio.ensure_future(asyncio.sleep(3600))
        done, pending = await asyncio.wait({fast, slow}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {fast}
        assert pending == {slow}
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        return fast.result()

    assert loop.run_until_complete(main()) == "fast"


def test_wait_first_exception(loop):
    async def main():
        failing = asyncio.ensure_future(_raise_after(ValueError("first"), 0.005))
        slow = asyncio.ensure_future(asyncio.sleep(3600))
        done, pending = await asyncio.wait({failing, slow}, return_when=asyncio.FIRST_EXCEPTION)
        slow.cancel()
        await asyncio.gather(slow, return_exceptions=True)
        return done == {failing}, pending == {slow}, type(failing.exception())

    assert loop.run_until_complete(main()) == (True, True, ValueError)


def test_wait_timeout_returns_pending(loop):
    async def main():
        slow = asyncio.ensure_future(asyncio.sleep(3600))
        done, pending = await asyncio.wait({slow}, timeout=0.01)
        slow.cancel()
        await asyncio.gather(slow, return_exceptions=True)
        return done, pending == {slow}

    assert loop.run_until_complete(main()) == (set(), True)


def test_wait_for_timeout_raises_and_cancels_inner(loop):
    cancelled = []

    async def slow():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow(), 0.01)

    loop.run_until_complete(main())
    assert cancelled == [True]


def test_wait_for_completes_before_timeout(loop):
    async def main():
        return await asyncio.wait_for(_value_after("in-time", 0), 5)

    assert loop.run_until_complete(main()) == "in-time"


@py311
def test_timeout_context_manager_expires(loop):
    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01) as cm:
                await asyncio.sleep(3600)
        return cm.expired()

    assert loop.run_until_complete(main()) is True


@py311
def test_timeout_context_manager_reschedule_and_not_expired(loop):
    async def main():
        async with asyncio.timeout(None) as cm:
            cm.reschedule(asyncio.get_running_loop().time() + 5)
            await asyncio.sleep(0)
        return cm.expired(), cm.when() is not None

    assert loop.run_until_complete(main()) == (False, True)


@py311
def test_timeout_at_uses_loop_time(loop):
    async def main():
        deadline = asyncio.get_running_loop().time() + 0.01
        with pytest.raises(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await asyncio.sleep(3600)
        return asyncio.get_running_loop().time() >= deadline

    assert loop.run_until_complete(main()) is True


# --------------------------------------------------------------------------
# TaskGroup and cancellation
# --------------------------------------------------------------------------


@py311
def test_task_group_collects_results(loop):
    async def main():
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(_value_after(i, 0.001 * (5 - i))) for i in range(5)]
        return [t.result() for t in tasks]

    assert loop.run_until_complete(main()) == [0, 1, 2, 3, 4]


@py311
def test_task_group_failure_cancels_siblings_and_raises_group(loop):
    cancelled = []

    async def sibling():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sibling())
            tg.create_task(_raise_after(ValueError("member failed"), 0.005))

    with pytest.raises(BaseExceptionGroup) as info:  # noqa: F821 - builtin on 3.11+
        loop.run_until_complete(main())
    assert [type(e) for e in info.value.exceptions] == [ValueError]
    assert cancelled == [True]


def test_cancel_propagates_cancelled_error_into_coroutine(loop):
    events = []

    async def worker():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append("cancelled-inside")
            raise
        finally:
            events.append("finally")

    async def main():
        task = asyncio.ensure_future(worker())
        await asyncio.sleep(0)
        assert task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert loop.run_until_complete(main()) is True
    assert events == ["cancelled-inside", "finally"]


def test_cancel_with_message(loop):
    async def main():
        task = asyncio.ensure_future(asyncio.sleep(3600))
        await asyncio.sleep(0)
        task.cancel("stop please")
        try:
            await task
        except asyncio.CancelledError as exc:
            return exc.args

    assert loop.run_until_complete(main()) == ("stop please",)


def test_cancelled_task_awaiting_task_cancels_inner(loop):
    async def main():
        inner = asyncio.ensure_future(asyncio.sleep(3600))

        async def outer_coro():
            await inner

        outer = asyncio.ensure_future(outer_coro())
        await asyncio.sleep(0)
        outer.cancel()
        await asyncio.gather(outer, return_exceptions=True)
        await asyncio.sleep(0)
        return outer.cancelled(), inner.cancelled()

    assert loop.run_until_complete(main()) == (True, True)


def test_shield_protects_inner_from_cancellation(loop):
    async def main():
        inner = asyncio.ensure_future(_value_after("shielded", 0.01))

        async def waiter():
            return await asyncio.shield(inner)

        outer = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)
        outer.cancel()
        await asyncio.gather(outer, return_exceptions=True)
        return outer.cancelled(), await inner

    assert loop.run_until_complete(main()) == (True, "shielded")


def test_task_suppressing_cancellation_completes_normally(loop):
    async def stubborn():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return "suppressed"

    async def main():
        task = asyncio.ensure_future(stubborn())
        await asyncio.sleep(0)
        task.cancel()
        return await task, task.cancelled()

    assert loop.run_until_complete(main()) == ("suppressed", False)


def test_current_task_and_all_tasks(loop):
    async def main():
        me = asyncio.current_task()
        other = asyncio.ensure_future(asyncio.sleep(3600))
        tasks = asyncio.all_tasks()
        other.cancel()
        await asyncio.gather(other, return_exceptions=True)
        return me, tasks, other

    me, tasks, other = loop.run_until_complete(main())
    assert isinstance(me, asyncio.Task)
    assert tasks == {me, other}
    assert asyncio.all_tasks(loop) == set()


def test_run_coroutine_threadsafe_from_other_thread(loop):
    async def compute(x):
        await asyncio.sleep(0)
        return x * 2

    async def main():
        def in_thread():
            return asyncio.run_coroutine_threadsafe(compute(21), loop).result(10)

        return await loop.run_in_executor(None, in_thread)

    assert loop.run_until_complete(main()) == 42


def test_wrap_future_from_executor(loop):
    async def main():
        return await loop.run_in_executor(None, pow, 2, 10)

    assert loop.run_until_complete(main()) == 1024


# --------------------------------------------------------------------------
# synchronisation primitives
# --------------------------------------------------------------------------


def test_queue_producer_consumer(loop):
    async def main():
        queue = asyncio.Queue(maxsize=2)
        received = []

        async def producer():
            for i in range(10):
                await queue.put(i)
            await queue.put(None)

        async def consumer():
            while True:
                item = await queue.get()
                queue.task_done()
                if item is None:
                    return
                received.append(item)

        await asyncio.gather(producer(), consumer())
        await queue.join()
        return received

    assert loop.run_until_complete(main()) == list(range(10))


def test_queue_get_timeout_and_get_nowait_empty(loop):
    async def main():
        queue = asyncio.Queue()
        with pytest.raises(asyncio.QueueEmpty):
            queue.get_nowait()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(queue.get(), 0.01)
        queue.put_nowait("x")
        return await queue.get()

    assert loop.run_until_complete(main()) == "x"


def test_priority_and_lifo_queues(loop):
    async def main():
        pq = asyncio.PriorityQueue()
        lq = asyncio.LifoQueue()
        for item in (3, 1, 2):
            await pq.put(item)
            await lq.put(item)
        return [pq.get_nowait() for _ in range(3)], [lq.get_nowait() for _ in range(3)]

    assert loop.run_until_complete(main()) == ([1, 2, 3], [2, 1, 3])


def test_semaphore_limits_concurrency(loop):
    async def main():
        sem = asyncio.Semaphore(2)
        active = 0
        peak = 0

        async def worker():
            nonlocal active, peak
            async with sem:
                active += 1
                peak = max(peak, active)
                await asyncio.sleep(0.001)
                active -= 1

        await asyncio.gather(*(worker() for _ in range(10)))
        return peak

    assert loop.run_until_complete(main()) == 2


def test_bounded_semaphore_over_release_raises(loop):
    async def main():
        sem = asyncio.BoundedSemaphore(1)
        async with sem:
            pass
        with pytest.raises(ValueError):
            sem.release()

    loop.run_until_complete(main())


def test_lock_mutual_exclusion_and_fifo_fairness(loop):
    async def main():
        lock = asyncio.Lock()
        order = []

        async def worker(i):
            async with lock:
                order.append(("enter", i))
                await asyncio.sleep(0)
                order.append(("exit", i))

        await asyncio.gather(*(worker(i) for i in range(5)))
        return order

    order = loop.run_until_complete(main())
    assert order == [(kind, i) for i in range(5) for kind in ("enter", "exit")]


def test_lock_release_unlocked_raises(loop):
    async def main():
        lock = asyncio.Lock()
        with pytest.raises(RuntimeError):
            lock.release()
        await lock.acquire()
        assert lock.locked()
        lock.release()
        return lock.locked()

    assert loop.run_until_complete(main()) is False


def test_event_wakes_all_waiters(loop):
    async def main():
        event = asyncio.Event()
        woken = []

        async def waiter(i):
            await event.wait()
            woken.append(i)

        tasks = [asyncio.ensure_future(waiter(i)) for i in range(5)]
        await asyncio.sleep(0)
        assert woken == []
        event.set()
        await asyncio.gather(*tasks)
        return sorted(woken), event.is_set()

    assert loop.run_until_complete(main()) == ([0, 1, 2, 3, 4], True)


def test_event_set_from_other_thread_via_call_soon_threadsafe(loop):
    async def main():
        event = asyncio.Event()
        running = asyncio.get_running_loop()
        await running.run_in_executor(None, running.call_soon_threadsafe, event.set)
        await asyncio.wait_for(event.wait(), 5)
        return event.is_set()

    assert loop.run_until_complete(main()) is True


def test_condition_notify_and_wait_for(loop):
    async def main():
        cond = asyncio.Condition()
        items = []
        consumed = []

        async def consumer():
            async with cond:
                await cond.wait_for(lambda: len(items) >= 3)
                consumed.extend(items)

        task = asyncio.ensure_future(consumer())
        for i in range(3):
            await asyncio.sleep(0)
            async with cond:
                items.append(i)
                cond.notify_all()
        await task
        return consumed

    assert loop.run_until_complete(main()) == [0, 1, 2]


def test_condition_notify_one_wakes_single_waiter(loop):
    async def main():
        cond = asyncio.Condition()
        woken = []

        async def waiter(i):
            async with cond:
                await cond.wait()
                woken.append(i)

        tasks = [asyncio.ensure_future(waiter(i)) for i in range(3)]
        await asyncio.sleep(0)
        async with cond:
            cond.notify(1)
        await asyncio.sleep(0.01)
        first = list(woken)
        async with cond:
            cond.notify_all()
        await asyncio.gather(*tasks)
        return first, sorted(woken)

    assert loop.run_until_complete(main()) == ([0], [0, 1, 2])


@py311
def test_barrier_releases_all_parties(loop):
    async def main():
        barrier = asyncio.Barrier(3)
        results = await asyncio.gather(*(barrier.wait() for _ in range(3)))
        return sorted(results)

    assert loop.run_until_complete(main()) == [0, 1, 2]


# --------------------------------------------------------------------------
# contextvars
# --------------------------------------------------------------------------


def test_contextvars_propagate_into_tasks_as_copies(loop):
    async def child():
        seen = user.get()
        user.set("changed-by-child")
        return seen

    async def main():
        user.set("alice")
        seen_by_child = await asyncio.ensure_future(child())
        return seen_by_child, user.get()

    assert loop.run_until_complete(main()) == ("alice", "alice")
    assert user.get() == "anonymous"


def test_contextvars_isolated_between_concurrent_tasks(loop):
    async def worker(name):
        user.set(name)
        await asyncio.sleep(0.001)
        return user.get()

    async def main():
        return await asyncio.gather(*(worker(f"user{i}") for i in range(10)))

    assert loop.run_until_complete(main()) == [f"user{i}" for i in range(10)]


def test_contextvars_visible_in_callbacks_scheduled_by_task(loop):
    async def main():
        user.set("bob")
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(lambda: fut.set_result(user.get()))
        return await fut

    assert loop.run_until_complete(main()) == "bob"


def test_run_in_executor_with_explicit_context_copy(loop):
    async def main():
        user.set("carol")
        # run_in_executor does not copy the context (CPython semantics);
        # the explicit copy keeps the worker deterministic.
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(None, ctx.run, user.get)

    assert loop.run_until_complete(main()) == "carol"


def test_to_thread_copies_context(loop):
    async def main():
        user.set("dave")
        return await asyncio.to_thread(user.get)

    assert loop.run_until_complete(main()) == "dave"


def test_done_callback_runs_in_task_context(loop):
    async def main():
        user.set("erin")
        seen = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(asyncio.sleep(0))
        task.add_done_callback(lambda _t: seen.set_result(user.get()))
        await task
        return await seen

    assert loop.run_until_complete(main()) == "erin"
