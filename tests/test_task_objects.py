"""The task and future objects the loop makes (create_task, create_future) behave as asyncio's.

ferroloop makes its own Task and Future types on CPython 3.11 (subclasses of asyncio's, in
Rust); each test here runs on both loops, so asyncio's C types are the oracle for every
message, state and attribute checked.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import io
import sys
import types

import pytest

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


async def _ret(value):
    return value


async def _sleep_ret(value, delay=0.0):
    await asyncio.sleep(delay)
    return value


def test_task_and_future_are_asyncio_instances(loop):
    async def main():
        task = loop.create_task(_ret(1))
        fut = loop.create_future()
        assert isinstance(task, asyncio.Task)
        assert isinstance(task, asyncio.Future)
        assert isinstance(fut, asyncio.Future)
        assert not isinstance(fut, asyncio.Task)
        assert asyncio.isfuture(task) and asyncio.isfuture(fut)
        assert type(task).__name__ == "Task" and type(fut).__name__ == "Future"
        fut.set_result(None)
        return await task

    assert loop.run_until_complete(main()) == 1


def test_ferroloop_types_override_everything_asyncio_defines(loop, is_ferroloop):
    # None of the C base's state is used, so every method and attribute the base defines must
    # be replaced: one left over would read the base's empty fields.
    if not is_ferroloop:
        pytest.skip("checks ferroloop's own types")
    from ferroloop import _ferroloop

    if not hasattr(_ferroloop, "Task"):
        pytest.skip("ferroloop makes asyncio's own tasks on this Python version")
    for ours, base in ((_ferroloop.Task, asyncio.Task), (_ferroloop.Future, asyncio.Future)):
        inherited = set(vars(base)) | set(vars(asyncio.Future))
        missing = {name for name in inherited if name not in vars(ours) and name != "__doc__"}
        assert not missing, f"{ours.__name__} inherits {sorted(missing)} from {base.__name__}"


def test_task_result_exception_and_state_attributes(loop):
    async def fails():
        raise KeyError("k")

    async def main():
        ok = loop.create_task(_ret("v"))
        bad = loop.create_task(fails())
        assert ok._state == "PENDING" and not ok.done()
        with pytest.raises(asyncio.InvalidStateError, match="Result is not set"):
            ok.result()
        with pytest.raises(asyncio.InvalidStateError, match="Exception is not set"):
            ok.exception()
        await asyncio.sleep(0)
        assert ok._state == "FINISHED" and ok.result() == "v" and ok.exception() is None
        assert ok._result == "v" and ok._exception is None
        assert isinstance(bad.exception(), KeyError) and bad._exception is bad.exception()
        with pytest.raises(KeyError):
            bad.result()
        assert bad._log_traceback is False

    loop.run_until_complete(main())


def test_task_refuses_set_result_and_set_exception(loop):
    async def main():
        task = loop.create_task(_ret(1))
        with pytest.raises(RuntimeError, match="Task does not support set_result operation"):
            task.set_result(2)
        with pytest.raises(RuntimeError, match="Task does not support set_exception operation"):
            task.set_exception(ValueError())
        return await task

    assert loop.run_until_complete(main()) == 1


def test_future_set_exception_rules(loop):
    fut = loop.create_future()
    with pytest.raises(TypeError, match="StopIteration interacts badly"):
        fut.set_exception(StopIteration())
    with pytest.raises(TypeError, match="invalid exception object"):
        fut.set_exception("not an exception")
    fut.set_exception(ValueError)  # a class is instantiated
    assert type(fut.exception()) is ValueError
    with pytest.raises(asyncio.InvalidStateError, match="invalid state"):
        fut.set_result(1)
    with pytest.raises(asyncio.InvalidStateError, match="invalid state"):
        fut.set_exception(ValueError())


def test_future_log_traceback_can_only_be_cleared(loop):
    fut = loop.create_future()
    fut.set_exception(ValueError("x"))
    assert fut._log_traceback is True
    with pytest.raises(ValueError, match="_log_traceback can only be set to False"):
        fut._log_traceback = True
    fut._log_traceback = False
    assert fut._log_traceback is False


def test_future_result_reraises_with_its_original_traceback(loop):
    def raiser():
        raise ValueError("deep")

    fut = loop.create_future()
    try:
        raiser()
    except ValueError as exc:
        fut.set_exception(exc)
    with pytest.raises(ValueError) as info:
        fut.result()
    assert "raiser" in [entry.name for entry in info.traceback]


def test_future_cancel_message_and_cancelled_error(loop):
    fut = loop.create_future()
    assert fut.cancel("stop") is True
    assert fut.cancel("again") is False
    assert fut.cancelled() and fut.done() and fut._state == "CANCELLED"
    assert fut._cancel_message == "stop"
    with pytest.raises(asyncio.CancelledError, match="stop"):
        fut.result()
    with pytest.raises(asyncio.CancelledError, match="stop"):
        fut.exception()
    assert isinstance(fut._make_cancelled_error(), asyncio.CancelledError)


def test_done_callbacks_run_in_order_with_their_context_and_can_be_removed(loop):
    seen = []

    def first(f):
        seen.append(("first", var.get()))

    def second(f):
        seen.append(("second", var.get()))

    async def main():
        fut = loop.create_future()
        ctx = contextvars.copy_context()
        ctx.run(var.set, "in-ctx")
        fut.add_done_callback(first, context=ctx)
        fut.add_done_callback(second)
        fut.add_done_callback(first)
        assert len(fut._callbacks) == 3
        assert fut.remove_done_callback(first) == 2
        assert fut.remove_done_callback(first) == 0
        fut.add_done_callback(first, context=ctx)
        fut.set_result(None)
        await asyncio.sleep(0)
        fut.add_done_callback(second)  # done already: scheduled at once
        await asyncio.sleep(0)

    var.set("outer")
    loop.run_until_complete(main())
    assert seen == [("second", "outer"), ("first", "in-ctx"), ("second", "outer")]


def test_callbacks_attribute_is_none_without_callbacks(loop):
    fut = loop.create_future()
    assert fut._callbacks is None
    fut.add_done_callback(print)
    [(callback, context)] = fut._callbacks
    assert callback is print and isinstance(context, contextvars.Context)
    fut.cancel()


def test_task_awaiting_task_shows_it_as_waiter_and_its_wakeup_callback(loop):
    async def main():
        inner = loop.create_task(_sleep_ret("x", 0.01))
        outer = loop.create_task(_awaiter(inner))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert outer._fut_waiter is inner
        [(callback, _)] = inner._callbacks
        assert "wakeup" in repr(callback)
        assert f"wait_for={inner!r}" in repr(outer)
        return await outer

    assert loop.run_until_complete(main()) == "x"


async def _awaiter(aw):
    return await aw


def test_task_repr_and_names(loop):
    async def main():
        task = loop.create_task(_ret(1))
        named = loop.create_task(_ret(2), name=42)
        assert task.get_name().startswith("Task-")
        assert named.get_name() == "42"
        named.set_name(("a", 1))
        assert named.get_name() == "('a', 1)"
        assert repr(task).startswith(f"<Task pending name='{task.get_name()}' coro=<_ret() running")
        await task
        await named
        assert "result=1" in repr(task)
        fut = loop.create_future()
        assert repr(fut).startswith("<Future pending")
        fut.cancel()

    loop.run_until_complete(main())


def test_task_names_are_unique(loop):
    async def main():
        tasks = [loop.create_task(_ret(i)) for i in range(50)]
        names = {t.get_name() for t in tasks}
        await asyncio.gather(*tasks)
        return names

    assert len(loop.run_until_complete(main())) == 50


def test_task_get_coro_stack_and_print_stack(loop):
    async def main():
        task = loop.create_task(_sleep_ret(1, 0.01))
        await asyncio.sleep(0)
        assert task.get_coro().__name__ == "_sleep_ret"
        frames = task.get_stack()
        assert frames and isinstance(frames[0], types.FrameType)
        assert len(task.get_stack(limit=1)) == 1
        out = io.StringIO()
        task.print_stack(file=out)
        assert "Stack for" in out.getvalue() and "_sleep_ret" in out.getvalue()
        with pytest.raises(TypeError):
            task.get_stack(1)  # keyword-only
        return await task

    assert loop.run_until_complete(main()) == 1


def test_cancelling_and_uncancel_count_requests(loop):
    async def main():
        task = loop.create_task(_sleep_ret(1, 10))
        await asyncio.sleep(0)
        assert task.cancelling() == 0
        assert task.cancel() and task.cancel("second")
        assert task.cancelling() == 2
        assert task.uncancel() == 1
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancel() is False  # done
        assert task.uncancel() == 0 and task.uncancel() == 0

    loop.run_until_complete(main())


def test_cancel_before_first_step_cancels_without_running(loop):
    ran = []

    async def body():
        ran.append(True)

    async def main():
        task = loop.create_task(body())
        task.cancel("early")
        with pytest.raises(asyncio.CancelledError, match="early"):
            await task
        assert task._must_cancel is False

    loop.run_until_complete(main())
    assert ran == []


def test_cancelled_error_raised_by_the_coroutine_is_the_one_awaiters_see(loop):
    async def raiser():
        raise asyncio.CancelledError("own")

    async def main():
        task = loop.create_task(raiser())
        with pytest.raises(asyncio.CancelledError, match="own"):
            await task
        assert task.cancelled()

    loop.run_until_complete(main())


@pytest.mark.parametrize(
    "body, message",
    [
        ("bare_future_yield", "yield was used instead of yield from in task"),
        ("generator_yield", "yield was used instead of yield from for generator in task"),
        ("bad_yield", "Task got bad yield: 42"),
        ("self_await", "Task cannot await on itself"),
    ],
)
def test_wrong_yields_are_thrown_back_into_the_coroutine(loop, body, message):
    @types.coroutine
    def yield_value(value):
        yield value

    def gen():
        yield

    async def bare_future_yield():
        fut = loop.create_future()
        await yield_value(fut)  # not blocking: a plain yield of a future

    async def generator_yield():
        await yield_value(gen())

    async def bad_yield():
        await yield_value(42)

    async def self_await():
        await asyncio.current_task()

    bodies = {f.__name__: f for f in (bare_future_yield, generator_yield, bad_yield, self_await)}

    async def main():
        task = loop.create_task(bodies[body]())
        with pytest.raises(RuntimeError, match=message):
            await task

    loop.run_until_complete(main())


def test_awaiting_a_future_of_another_loop_is_an_error(loop):
    other = asyncio.new_event_loop()
    try:
        foreign = other.create_future()

        async def main():
            with pytest.raises(RuntimeError, match="attached to a different loop"):
                await foreign

        loop.run_until_complete(main())
    finally:
        other.close()


def test_bare_yield_gives_up_one_turn(loop):
    order = []

    @types.coroutine
    def one_turn():
        yield

    async def a():
        order.append("a1")
        await one_turn()
        order.append("a2")

    async def b():
        order.append("b1")

    async def main():
        await asyncio.gather(a(), b())

    loop.run_until_complete(main())
    assert order == ["a1", "b1", "a2"]


def test_create_task_refuses_what_is_not_a_coroutine(loop):
    async def main():
        with pytest.raises(TypeError, match="a coroutine was expected, got 1"):
            loop.create_task(1)

    loop.run_until_complete(main())


def test_task_steps_run_in_the_given_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "given")

    async def read():
        await asyncio.sleep(0)
        return var.get()

    async def main():
        return await loop.create_task(read(), context=ctx)

    assert loop.run_until_complete(main()) == "given"


def test_await_iterator_protocol(loop):
    async def main():
        fut = loop.create_future()
        it = fut.__await__()
        assert iter(it) is it
        assert next(it) is fut  # pending: yields the future itself
        with pytest.raises(RuntimeError, match="await wasn't used with future"):
            next(it)
        fut.set_result((1, 2))
        with pytest.raises(StopIteration) as info:
            it.send(None)
        assert info.value.value == (1, 2)  # a tuple result is not unpacked
        it.close()
        failing = loop.create_future()
        it = failing.__await__()
        with pytest.raises(ZeroDivisionError):
            it.throw(ZeroDivisionError)
        with pytest.raises(TypeError):
            it.throw(1)
        failing.cancel()

    loop.run_until_complete(main())


def test_all_tasks_and_current_task_see_the_loops_tasks(loop):
    async def main():
        me = asyncio.current_task()
        others = [loop.create_task(_sleep_ret(i, 0.01)) for i in range(3)]
        assert asyncio.all_tasks() == {me, *others}
        await asyncio.gather(*others)
        assert asyncio.all_tasks() == {me}
        return me

    me = loop.run_until_complete(main())
    assert me.done()


def test_tasks_and_futures_are_freed_without_a_collection(loop):
    import weakref

    async def main():
        task = loop.create_task(_sleep_ret(1))
        fut = loop.create_future()
        refs = [weakref.ref(task), weakref.ref(fut)]
        fut.set_result(await task)
        return refs

    gc.disable()
    try:
        refs = loop.run_until_complete(main())
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()


def test_unretrieved_exception_of_a_future_is_reported_each_time(loop, handler_calls):
    # Objects are recycled across futures: the report must not be lost the second time.
    for i in range(3):
        fut = loop.create_future()
        fut.set_exception(ValueError(i))
        del fut
        gc.collect()
    assert [c["message"] for c in handler_calls] == ["Future exception was never retrieved"] * 3


@pytest.mark.skipif(sys.version_info < (3, 11), reason="uncancel() is new in 3.11")
def test_timeout_uses_cancelling_and_uncancel(loop):
    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(10)
        return asyncio.current_task().cancelling()

    assert loop.run_until_complete(main()) == 0
