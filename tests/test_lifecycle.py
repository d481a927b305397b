"""Loop lifecycle: run_until_complete, run_forever, stop, close, runners, tasks."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import os
import socket
import sys
import threading
import warnings

import pytest

py311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="needs Python 3.11+")

flavour: contextvars.ContextVar[str] = contextvars.ContextVar("flavour", default="plain")


async def _answer(value=42):
    await asyncio.sleep(0)
    return value


async def _fail(exc):
    await asyncio.sleep(0)
    raise exc


# --------------------------------------------------------------------------
# run_until_complete
# --------------------------------------------------------------------------


def test_run_until_complete_coroutine_returns_result(loop):
    assert loop.run_until_complete(_answer()) == 42


def test_run_until_complete_future_returns_result(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_result, "from-future")
    assert loop.run_until_complete(fut) == "from-future"


def test_run_until_complete_task_returns_result(loop):
    task = loop.create_task(_answer("from-task"))
    assert loop.run_until_complete(task) == "from-task"
    assert task.done()


def test_run_until_complete_already_done_future_returns_result(loop):
    fut = loop.create_future()
    fut.set_result(7)
    assert loop.run_until_complete(fut) == 7


def test_run_until_complete_awaitable_object_is_wrapped(loop):
    class Awaitable:
        def __await__(self):
            return _answer("awaitable").__await__()

    assert loop.run_until_complete(Awaitable()) == "awaitable"


def test_run_until_complete_non_awaitable_raises_type_error(loop):
    with pytest.raises(TypeError):
        loop.run_until_complete(42)


def test_run_until_complete_propagates_exception(loop):
    with pytest.raises(ValueError, match="boom"):
        loop.run_until_complete(_fail(ValueError("boom")))


def test_run_until_complete_future_exception_propagates(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_exception, KeyError("k"))
    with pytest.raises(KeyError):
        loop.run_until_complete(fut)


def test_run_until_complete_cancelled_future_raises_cancelled_error(loop):
    fut = loop.create_future()
    loop.call_soon(fut.cancel)
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(fut)


def test_run_until_complete_stopped_before_future_done_raises_runtime_error(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match="stopped before Future completed"):
        loop.run_until_complete(fut)
    assert not fut.done()
    assert not loop.is_running()
    # The loop is still usable and the future can still complete.
    loop.call_soon(fut.set_result, "late")
    assert loop.run_until_complete(fut) == "late"


def test_run_until_complete_future_from_other_loop_raises_value_error(loop, factory):
    other = factory()
    fut = other.create_future()
    with pytest.raises(ValueError):
        loop.run_until_complete(fut)
    other.close()


def test_run_until_complete_can_be_called_repeatedly(loop):
    for i in range(20):
        assert loop.run_until_complete(_answer(i)) == i


# --------------------------------------------------------------------------
# run_forever / stop / is_running
# --------------------------------------------------------------------------


def test_run_forever_returns_after_stop_from_callback(loop):
    calls = []

    def cb():
        calls.append(loop.is_running())
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert calls == [True]
    assert not loop.is_running()


def test_run_forever_stop_from_timer(loop):
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert not loop.is_running()


def test_stop_from_coroutine_stops_run_forever(loop):
    async def main():
        await asyncio.sleep(0.01)
        loop.stop()

    task = loop.create_task(main())
    loop.run_forever()
    assert task.done()


def test_stop_before_run_forever_runs_one_iteration_and_returns(loop):
    order = []

    def first():
        order.append("first")
        loop.call_soon(order.append, "next-iteration")

    loop.call_soon(first)
    loop.stop()
    loop.run_forever()
    assert order == ["first"]
    # The callback scheduled from the first iteration is still pending and runs
    # on the next run.
    loop.stop()
    loop.run_forever()
    assert order == ["first", "next-iteration"]


def test_stop_before_run_forever_with_nothing_ready_returns(loop):
    far = loop.call_later(3600, lambda: None)
    loop.stop()
    loop.run_forever()
    assert not loop.is_running()
    far.cancel()


def test_stop_is_reset_after_run_forever_returns(loop):
    loop.stop()
    loop.run_forever()
    # A stale stop request must not make the next run return immediately.
    assert loop.run_until_complete(asyncio.sleep(0.01, "slept")) == "slept"


def test_is_running_inside_and_outside(loop):
    assert not loop.is_running()

    async def main():
        return loop.is_running()

    assert loop.run_until_complete(main()) is True
    assert not loop.is_running()


def test_get_running_loop_inside_returns_loop(loop):
    async def main():
        return asyncio.get_running_loop(), asyncio.get_event_loop()

    running, current = loop.run_until_complete(main())
    assert running is loop
    assert current is loop


def test_get_running_loop_after_run_raises(loop):
    loop.run_until_complete(_answer())
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    assert asyncio._get_running_loop() is None


def test_running_loop_reset_after_run_forever_raises(loop):
    def boom():
        raise KeyboardInterrupt

    loop.call_soon(boom)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


# --------------------------------------------------------------------------
# close / is_closed
# --------------------------------------------------------------------------


def test_is_closed_and_close_twice_ok(loop):
    assert not loop.is_closed()
    loop.close()
    assert loop.is_closed()
    loop.close()
    assert loop.is_closed()


def test_close_while_running_raises_runtime_error(loop):
    async def main():
        with pytest.raises(RuntimeError):
            loop.close()
        return loop.is_closed()

    assert loop.run_until_complete(main()) is False
    assert not loop.is_closed()


def test_run_until_complete_on_closed_loop_raises_runtime_error(loop):
    loop.close()
    coro = _answer()
    try:
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            loop.run_until_complete(coro)
    finally:
        coro.close()


def test_run_forever_on_closed_loop_raises_runtime_error(loop):
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.run_forever()


def test_close_discards_pending_callbacks(loop):
    called = []
    loop.call_soon(called.append, 1)
    loop.call_later(0.001, called.append, 2)
    loop.close()
    assert called == []


def test_create_future_and_create_task_on_closed_loop(loop):
    loop.close()
    fut = loop.create_future()
    assert not fut.done()
    coro = _answer()
    try:
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            loop.create_task(coro)
    finally:
        coro.close()


def test_new_event_loop_twice_gives_independent_loops(factory):
    first = factory()
    second = factory()
    try:
        assert first is not second
        assert first.run_until_complete(_answer(1)) == 1
        first.close()
        assert second.run_until_complete(_answer(2)) == 2
    finally:
        first.close()
        second.close()


def test_loop_created_and_closed_without_running(factory):
    new_loop = factory()
    new_loop.close()
    assert new_loop.is_closed()


def test_loop_is_abstract_event_loop(loop):
    assert isinstance(loop, asyncio.AbstractEventLoop)


def test_loops_run_in_separate_threads_concurrently(factory):
    results = {}
    barrier = threading.Barrier(2)

    def worker(name):
        new_loop = factory()
        try:

            async def main():
                await new_loop.run_in_executor(None, barrier.wait, 5)
                await asyncio.sleep(0.01)
                return name, asyncio.get_running_loop() is new_loop

            results[name] = new_loop.run_until_complete(main())
            new_loop.run_until_complete(new_loop.shutdown_default_executor())
        finally:
            new_loop.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {"a": ("a", True), "b": ("b", True)}


# --------------------------------------------------------------------------
# re-entrancy
# --------------------------------------------------------------------------


def test_nested_run_until_complete_raises_already_running(loop):
    async def main():
        inner = loop.create_future()
        with pytest.raises(RuntimeError, match="This event loop is already running"):
            loop.run_until_complete(inner)
        return "outer-ok"

    assert loop.run_until_complete(main()) == "outer-ok"


def test_nested_run_forever_raises_already_running(loop):
    async def main():
        with pytest.raises(RuntimeError, match="This event loop is already running"):
            loop.run_forever()
        return "outer-ok"

    assert loop.run_until_complete(main()) == "outer-ok"


def test_running_second_loop_in_same_thread_raises_runtime_error(loop, factory):
    other = factory()

    async def main():
        fut = other.create_future()
        with pytest.raises(RuntimeError, match="another loop is running"):
            other.run_until_complete(fut)
        with pytest.raises(RuntimeError, match="another loop is running"):
            other.run_forever()
        return "ok"

    try:
        assert loop.run_until_complete(main()) == "ok"
        assert not other.is_running()
        # The other loop is fine to use once the first has stopped.
        assert other.run_until_complete(_answer(5)) == 5
    finally:
        other.close()


def test_stdlib_run_inside_running_loop_raises_runtime_error(loop):
    async def main():
        coro = _answer()
        try:
            with pytest.raises(RuntimeError):
                asyncio.run(coro)
        finally:
            coro.close()

    loop.run_until_complete(main())


# --------------------------------------------------------------------------
# async generators
# --------------------------------------------------------------------------


def test_shutdown_asyncgens_finalizes_suspended_generators(loop):
    finalized = []

    async def gen():
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)
            finalized.append("closed")

    agen = gen()

    async def consume():
        async for _ in agen:
            break

    loop.run_until_complete(consume())
    assert finalized == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert finalized == ["closed"]


def test_asyncgen_hooks_installed_only_while_running(loop):
    before = sys.get_asyncgen_hooks()

    async def main():
        return sys.get_asyncgen_hooks()

    inside = loop.run_until_complete(main())
    assert inside.firstiter is not None
    assert inside.finalizer is not None
    assert sys.get_asyncgen_hooks() == before


def test_abandoned_asyncgen_is_finalized_by_loop(loop):
    finalized = []

    async def gen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append(asyncio.get_running_loop() is loop)

    async def main():
        agen = gen()
        await agen.__anext__()
        del agen
        gc.collect()
        for _ in range(10):
            if finalized:
                break
            await asyncio.sleep(0)
        return finalized

    assert loop.run_until_complete(main()) == [True]


def test_shutdown_asyncgens_on_fresh_loop_is_noop(loop):
    loop.run_until_complete(loop.shutdown_asyncgens())


def test_shutdown_asyncgens_with_generator_raising_in_finally_reports_to_handler(loop, handler_calls):
    async def gen():
        try:
            yield 1
        finally:
            raise ValueError("in finally")

    agen = gen()

    async def consume():
        async for _ in agen:
            break

    loop.run_until_complete(consume())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert len(handler_calls) == 1
    assert isinstance(handler_calls[0]["exception"], ValueError)
    assert handler_calls[0]["asyncgen"] is agen


def test_shutdown_default_executor_after_use(loop):
    result = loop.run_until_complete(loop.run_in_executor(None, sum, [1, 2, 3]))
    assert result == 6
    loop.run_until_complete(loop.shutdown_default_executor())


# --------------------------------------------------------------------------
# runners
# --------------------------------------------------------------------------


@contextlib.contextmanager
def _policy_api():
    """The event-loop-policy API is deprecated from Python 3.14 on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _loop_type(factory):
    probe = factory()
    probe.close()
    return type(probe)


def test_module_run_uses_loop_of_this_kind(factory, loop_module):
    expected_type = _loop_type(factory)

    async def main():
        return type(asyncio.get_running_loop()), await _answer("ran")

    running_type, value = loop_module.run(main())
    assert running_type is expected_type
    assert value == "ran"


def test_module_run_debug_flag(factory, loop_module):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert loop_module.run(main(), debug=True) is True
    assert loop_module.run(main(), debug=False) is False


def test_module_run_propagates_exception_and_cancels_leftover_tasks(factory, loop_module):
    cancelled = []

    async def background():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        leftover = asyncio.ensure_future(background())
        await asyncio.sleep(0)
        assert not leftover.done()
        raise LookupError("from main")

    with pytest.raises(LookupError):
        loop_module.run(main())
    assert cancelled == [True]


def test_module_run_finalizes_asyncgens_and_closes_loop(factory, loop_module):
    seen = {}

    async def gen():
        try:
            yield 1
            yield 2
        finally:
            seen["finalized"] = True

    async def main():
        seen["loop"] = asyncio.get_running_loop()
        agen = gen()
        seen["agen"] = agen
        await agen.__anext__()

    loop_module.run(main())
    assert seen["finalized"] is True
    assert seen["loop"].is_closed()


def test_module_run_rejects_non_coroutine(factory, loop_module):
    with pytest.raises((TypeError, ValueError)):
        loop_module.run(42)


@py311
def test_runner_with_loop_factory(factory):
    expected_type = _loop_type(factory)

    async def main(x):
        return type(asyncio.get_running_loop()), x

    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(main(1)) == (expected_type, 1)
        assert runner.run(main(2)) == (expected_type, 2)
        runner_loop = runner.get_loop()
        assert type(runner_loop) is expected_type
    assert runner_loop.is_closed()


def test_install_makes_new_event_loop_use_this_kind(factory, loop_name, loop_module):
    if loop_name != "ferroloop":
        pytest.skip("install() is ferroloop-specific API")
    expected_type = _loop_type(factory)
    with _policy_api():
        loop_module.install()
        assert isinstance(asyncio.get_event_loop_policy(), loop_module.EventLoopPolicy)
    new_loop = asyncio.new_event_loop()
    try:
        assert type(new_loop) is expected_type
    finally:
        new_loop.close()


def _policy_class(loop_name, loop_module):
    with _policy_api():
        return loop_module.EventLoopPolicy if loop_name == "ferroloop" else asyncio.DefaultEventLoopPolicy


def test_event_loop_policy_creates_loop_of_this_kind(factory, loop_name, loop_module):
    expected_type = _loop_type(factory)
    with _policy_api():
        policy = _policy_class(loop_name, loop_module)()
        assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
        new_loop = policy.new_event_loop()
    try:
        assert type(new_loop) is expected_type
    finally:
        new_loop.close()


def test_event_loop_policy_default_run_uses_loop_of_this_kind(factory, loop_name, loop_module):
    expected_type = _loop_type(factory)
    with _policy_api():
        asyncio.set_event_loop_policy(_policy_class(loop_name, loop_module)())

    async def main():
        return type(asyncio.get_running_loop())

    assert asyncio.run(main()) is expected_type


# --------------------------------------------------------------------------
# tasks and futures created by the loop
# --------------------------------------------------------------------------


def test_create_task_name(loop):
    task = loop.create_task(_answer(), name="my-task")
    assert task.get_name() == "my-task"
    loop.run_until_complete(task)


def test_create_task_default_name_is_generated(loop):
    task = loop.create_task(_answer())
    assert task.get_name().startswith("Task-")
    loop.run_until_complete(task)


@py311
def test_create_task_context_argument(loop):
    ctx = contextvars.Context()
    ctx.run(flavour.set, "ctx-flavour")

    async def read():
        await asyncio.sleep(0)
        flavour.set(flavour.get() + "+task")
        return flavour.get()

    task = loop.create_task(read(), context=ctx)
    assert loop.run_until_complete(task) == "ctx-flavour+task"
    assert ctx[flavour] == "ctx-flavour+task"
    assert flavour.get() == "plain"


def test_create_task_returns_task_bound_to_loop(loop):
    task = loop.create_task(_answer())
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is loop
    loop.run_until_complete(task)


def test_create_task_rejects_non_coroutine(loop):
    with pytest.raises(TypeError):
        loop.create_task(42)


def test_task_factory_get_set(loop):
    assert loop.get_task_factory() is None
    created = []

    def task_factory(the_loop, coro, **kwargs):
        task = asyncio.Task(coro, loop=the_loop, **kwargs)
        created.append(task)
        return task

    loop.set_task_factory(task_factory)
    assert loop.get_task_factory() is task_factory
    task = loop.create_task(_answer("factory"))
    assert created == [task]
    assert loop.run_until_complete(task) == "factory"
    # run_until_complete wraps coroutines through the factory too.
    assert loop.run_until_complete(_answer("wrapped")) == "wrapped"
    assert len(created) == 2
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    loop.run_until_complete(_answer())
    assert len(created) == 2


def test_task_factory_non_callable_raises_type_error(loop):
    with pytest.raises(TypeError):
        loop.set_task_factory(42)


def test_ensure_future_uses_task_factory(loop):
    created = []

    def task_factory(the_loop, coro, **kwargs):
        task = asyncio.Task(coro, loop=the_loop, **kwargs)
        created.append(task)
        return task

    loop.set_task_factory(task_factory)

    async def main():
        return await asyncio.ensure_future(_answer("ensured"))

    assert loop.run_until_complete(main()) == "ensured"
    assert len(created) == 2


def test_create_future_returns_stdlib_future_bound_to_loop(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert asyncio.isfuture(fut)
    assert fut.get_loop() is loop
    assert not fut.done()
    fut.cancel()


def test_future_done_callbacks_run_via_loop(loop):
    fut = loop.create_future()
    seen = []
    fut.add_done_callback(lambda f: seen.append((f.result(), loop.is_running())))
    fut.set_result("r")
    assert seen == []
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == [("r", True)]


# --------------------------------------------------------------------------
# KeyboardInterrupt / SystemExit
# --------------------------------------------------------------------------


BASE_EXCEPTIONS = [
    pytest.param(KeyboardInterrupt, id="KeyboardInterrupt"),
    pytest.param(SystemExit, id="SystemExit"),
]


@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS)
def test_base_exception_in_callback_propagates_out_of_run_forever(loop, exc_type):
    def raiser():
        raise exc_type

    loop.call_soon(raiser)
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()
    assert loop.run_until_complete(_answer("usable")) == "usable"


@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS)
def test_base_exception_in_callback_propagates_out_of_run_until_complete(loop, exc_type):
    fut = loop.create_future()

    def raiser():
        raise exc_type

    loop.call_soon(raiser)
    with pytest.raises(exc_type):
        loop.run_until_complete(fut)
    assert not loop.is_running()
    assert not fut.done()
    loop.call_soon(fut.set_result, "after")
    assert loop.run_until_complete(fut) == "after"


@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS)
def test_base_exception_in_timer_callback_propagates(loop, exc_type):
    def raiser():
        raise exc_type

    loop.call_later(0.001, raiser)
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()


@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS)
def test_base_exception_in_coroutine_propagates_and_loop_stays_usable(loop, exc_type):
    async def main():
        await asyncio.sleep(0)
        raise exc_type

    with pytest.raises(exc_type):
        loop.run_until_complete(main())
    assert not loop.is_running()
    # The next run must not be cut short by the finished task's bookkeeping.
    assert loop.run_until_complete(asyncio.sleep(0.01, "usable")) == "usable"


def test_base_exception_in_task_marks_task_done(loop):
    async def main():
        await asyncio.sleep(0)
        raise KeyboardInterrupt

    task = loop.create_task(main())
    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(task)
    assert task.done()
    assert isinstance(task.exception(), KeyboardInterrupt)


def test_callbacks_after_base_exception_still_run_next_time(loop):
    order = []

    def raiser():
        order.append("raiser")
        raise KeyboardInterrupt

    loop.call_soon(raiser)
    loop.call_soon(order.append, "after")
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    loop.run_until_complete(asyncio.sleep(0))
    assert order == ["raiser", "after"]


def test_unclosed_loop_garbage_collected_warns_resource_warning(loop_module, factory):
    # Created directly (not via `factory`) so that nothing else closes it.
    abandoned = loop_module.new_event_loop()
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        del abandoned
        gc.collect()


def test_fixture_loop_is_current_event_loop(loop):
    assert asyncio.get_event_loop_policy().get_event_loop() is loop


def test_asyncgen_first_iterated_after_shutdown_asyncgens_warns(loop):
    async def gen():
        yield 1

    async def main():
        agen = gen()
        with pytest.warns(ResourceWarning, match="after loop.shutdown_asyncgens"):
            assert await agen.__anext__() == 1
        await agen.aclose()

    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(main())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_loop_does_not_disturb_parent_watchers(loop, request, is_ferroloop):
    """A child that watches and unwatches fds on an inherited loop must not change what the
    parent's loop is watching (with a shared epoll set it would)."""
    if not is_ferroloop:
        request.applymarker(
            pytest.mark.xfail(reason="asyncio's epoll selector shares its interest set with forked children")
        )
    rsock, wsock = socket.socketpair()
    got = []
    loop.add_reader(rsock.fileno(), lambda: got.append(rsock.recv(100)))
    pid = os.fork()
    if pid == 0:  # child: remove the reader on its copy of the loop, then leave at once
        try:
            loop.remove_reader(rsock.fileno())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    wsock.send(b"still watched")
    deadline = loop.time() + 2
    while not got and loop.time() < deadline:
        loop.run_until_complete(asyncio.sleep(0.01))
    loop.remove_reader(rsock.fileno())
    rsock.close()
    wsock.close()
    assert got == [b"still watched"]
