"""call_soon / call_soon_threadsafe and Handle behaviour."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import threading
import time
import tracemalloc
import warnings
import weakref

import pytest

needs_get_context = pytest.mark.skipif(
    not hasattr(asyncio.Handle, "get_context"), reason="Handle.get_context() is new in Python 3.12"
)

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


def _run_once(loop):
    """Run exactly one iteration of the loop (stop() before run_forever())."""
    loop.stop()
    loop.run_forever()


def test_call_soon_runs_callbacks_in_fifo_order(loop):
    order = []
    for i in range(100):
        loop.call_soon(order.append, i)
    _run_once(loop)
    assert order == list(range(100))


def test_call_soon_passes_positional_args(loop):
    received = []

    def callback(*args):
        received.append(args)

    loop.call_soon(callback, 1, "two", None)
    loop.call_soon(callback)
    _run_once(loop)
    assert received == [(1, "two", None), ()]


def test_call_soon_returns_handle_with_cancel_api(loop):
    handle = loop.call_soon(lambda: None)
    assert not handle.cancelled()
    handle.cancel()
    assert handle.cancelled()
    _run_once(loop)


def test_call_soon_returns_a_handle_without_a_deadline(loop):
    handle = loop.call_soon(lambda: None)
    assert type(handle).__name__ == "Handle"
    assert not hasattr(handle, "when")
    _run_once(loop)


def test_call_soon_handle_is_an_asyncio_handle_instance(loop, request, is_ferroloop):
    if is_ferroloop:
        request.applymarker(
            pytest.mark.xfail(reason="known difference: ferroloop's handles are native, not asyncio.Handle subclasses")
        )
    handle = loop.call_soon(lambda: None)
    try:
        assert isinstance(handle, asyncio.Handle)
        assert not isinstance(handle, asyncio.TimerHandle)
    finally:
        _run_once(loop)


def test_cancel_before_run_prevents_call(loop):
    called = []
    handle = loop.call_soon(called.append, "cancelled")
    loop.call_soon(called.append, "kept")
    handle.cancel()
    _run_once(loop)
    assert called == ["kept"]


def test_cancel_is_idempotent(loop):
    called = []
    handle = loop.call_soon(called.append, 1)
    handle.cancel()
    handle.cancel()
    assert handle.cancelled()
    _run_once(loop)
    assert called == []


def test_cancel_after_run_marks_cancelled_without_effect(loop):
    called = []
    handle = loop.call_soon(called.append, 1)
    _run_once(loop)
    handle.cancel()
    assert handle.cancelled()
    _run_once(loop)
    assert called == [1]


def test_cancel_from_earlier_callback_in_same_iteration_prevents_call(loop):
    called = []
    later = None

    def canceller():
        called.append("canceller")
        later.cancel()

    loop.call_soon(canceller)
    later = loop.call_soon(called.append, "later")
    _run_once(loop)
    assert called == ["canceller"]


def test_call_soon_context_argument_runs_callback_in_that_context(loop):
    ctx = contextvars.Context()
    ctx.run(request_id.set, "from-ctx")
    seen = []
    loop.call_soon(lambda: seen.append(request_id.get()), context=ctx)
    _run_once(loop)
    assert seen == ["from-ctx"]
    assert request_id.get() == "unset"


@needs_get_context
def test_handle_get_context_returns_given_context(loop):
    ctx = contextvars.Context()
    handle = loop.call_soon(lambda: None, context=ctx)
    assert handle.get_context() is ctx
    _run_once(loop)


@needs_get_context
def test_handle_get_context_default_is_fresh_copy(loop):
    token = request_id.set("current")
    try:
        handle = loop.call_soon(lambda: None)
        ctx = handle.get_context()
        assert isinstance(ctx, contextvars.Context)
        assert ctx[request_id] == "current"
        assert ctx is not contextvars.copy_context()
    finally:
        request_id.reset(token)
    _run_once(loop)


def test_call_soon_context_mutations_persist_in_given_context(loop):
    ctx = contextvars.Context()
    loop.call_soon(request_id.set, "written", context=ctx)
    _run_once(loop)
    assert ctx[request_id] == "written"
    assert request_id.get() == "unset"


def test_call_soon_default_context_is_copy_of_current(loop):
    seen = []

    def callback():
        seen.append(request_id.get())
        request_id.set("changed-in-callback")

    def schedule():
        request_id.set("at-schedule-time")
        loop.call_soon(callback)
        # Changes after scheduling must not leak into the callback's copy.
        request_id.set("after-schedule")

    outer = contextvars.copy_context()
    outer.run(schedule)
    _run_once(loop)
    assert seen == ["at-schedule-time"]
    assert outer[request_id] == "after-schedule"
    assert request_id.get() == "unset"


def test_each_call_soon_gets_its_own_context_copy(loop):
    seen = []

    def bump():
        request_id.set(request_id.get() + "+")
        seen.append(request_id.get())

    loop.call_soon(bump)
    loop.call_soon(bump)
    _run_once(loop)
    assert seen == ["unset+", "unset+"]


def test_call_soon_from_callback_runs_on_next_iteration(loop):
    order = []

    def first():
        order.append("first")
        loop.call_soon(order.append, "scheduled-by-first")

    loop.call_soon(first)
    loop.call_soon(order.append, "second")
    _run_once(loop)
    # Callbacks added while the ready queue is being run wait for the next
    # iteration.
    assert order == ["first", "second"]
    _run_once(loop)
    assert order == ["first", "second", "scheduled-by-first"]


def test_stop_runs_current_batch_only(loop):
    order = []

    def reschedule(n):
        order.append(n)
        loop.call_soon(reschedule, n + 1)

    loop.call_soon(reschedule, 0)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == [0]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == [0, 1]
    # Drain the self-rescheduling chain so no callback is left behind.
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == [0, 1, 2]


def test_call_soon_threadsafe_from_thread_wakes_loop_blocked_on_long_timer(loop):
    long_timer = loop.call_later(10, lambda: None)
    woke = loop.create_future()
    thread_called = threading.Event()

    def from_thread():
        time.sleep(0.1)
        loop.call_soon_threadsafe(woke.set_result, "woken")
        thread_called.set()

    thread = threading.Thread(target=from_thread)
    started = time.monotonic()
    thread.start()
    try:
        result = loop.run_until_complete(woke)
    finally:
        thread.join()
    elapsed = time.monotonic() - started
    long_timer.cancel()
    assert result == "woken"
    assert thread_called.is_set()
    assert elapsed < 2.0, f"loop took {elapsed:.2f}s to notice call_soon_threadsafe"


def test_call_soon_threadsafe_from_many_threads_all_delivered(loop):
    n_threads, per_thread = 8, 50
    received = []
    done = loop.create_future()
    barrier = threading.Barrier(n_threads)

    def on_item(item):
        received.append(item)
        if len(received) == n_threads * per_thread and not done.done():
            done.set_result(None)

    def worker(tid):
        barrier.wait()
        for i in range(per_thread):
            loop.call_soon_threadsafe(on_item, (tid, i))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    try:
        loop.run_until_complete(asyncio.wait_for(done, 10))
    finally:
        for t in threads:
            t.join()
    assert sorted(received) == [(t, i) for t in range(n_threads) for i in range(per_thread)]
    # Per-thread ordering is preserved.
    for tid in range(n_threads):
        assert [i for (t, i) in received if t == tid] == list(range(per_thread))


def test_call_soon_threadsafe_returns_cancellable_handle(loop):
    called = []
    handle = loop.call_soon_threadsafe(called.append, 1)
    assert not handle.cancelled()
    handle.cancel()
    _run_once(loop)
    assert called == []


def test_call_soon_threadsafe_context_argument(loop):
    ctx = contextvars.Context()
    ctx.run(request_id.set, "threadsafe-ctx")
    seen = []
    loop.call_soon_threadsafe(lambda: seen.append(request_id.get()), context=ctx)
    _run_once(loop)
    assert seen == ["threadsafe-ctx"]


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe"])
def test_call_soon_non_callable_raises_type_error_in_debug(loop, method):
    loop.set_debug(True)
    with pytest.raises(TypeError):
        getattr(loop, method)(42)


def test_call_later_non_callable_raises_type_error_in_debug(loop):
    loop.set_debug(True)
    with pytest.raises(TypeError):
        loop.call_later(1, "not callable")
    with pytest.raises(TypeError):
        loop.call_at(loop.time() + 1, None)


def test_call_soon_coroutine_function_raises_type_error_in_debug(loop):
    async def coro_func():
        pass

    loop.set_debug(True)
    with pytest.raises(TypeError):
        loop.call_soon(coro_func)


def test_call_soon_coroutine_object_raises_type_error_in_debug(loop):
    async def coro_func():
        pass

    loop.set_debug(True)
    coro = coro_func()
    try:
        with pytest.raises(TypeError):
            loop.call_soon(coro)
    finally:
        coro.close()


def test_call_soon_with_kwargs_other_than_context_raises_type_error(loop):
    with pytest.raises(TypeError):
        loop.call_soon(print, end="")


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe"])
def test_call_soon_accepts_callback_and_context_as_keywords(loop, method):
    seen = []
    ctx = contextvars.copy_context()
    ctx.run(request_id.set, "kw")
    getattr(loop, method)(callback=lambda: seen.append(request_id.get()), context=ctx)
    _run_once(loop)
    assert seen == ["kw"]


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe"])
@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        pytest.param((), {}, id="no-callback"),
        pytest.param((), {"context": None}, id="only-context"),
        pytest.param((print, 1), {"callback": print}, id="callback-twice"),
        pytest.param((print,), {"contxt": None}, id="misspelt-keyword"),
    ],
)
def test_call_soon_bad_arguments_raise_type_error(loop, method, args, kwargs):
    with pytest.raises(TypeError):
        getattr(loop, method)(*args, **kwargs)


@pytest.mark.parametrize(
    "schedule",
    [
        pytest.param(lambda lp: lp.call_soon(print), id="call_soon"),
        pytest.param(lambda lp: lp.call_soon_threadsafe(print), id="call_soon_threadsafe"),
        pytest.param(lambda lp: lp.call_later(1, print), id="call_later"),
        pytest.param(lambda lp: lp.call_at(lp.time() + 1, print), id="call_at"),
    ],
)
def test_scheduling_after_close_raises_event_loop_is_closed(loop, schedule):
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        schedule(loop)


def test_handle_repr_contains_callback_name(loop):
    def my_distinctive_callback():
        pass

    handle = loop.call_soon(my_distinctive_callback)
    text = repr(handle)
    assert "my_distinctive_callback" in text
    assert "cancelled" not in text
    _run_once(loop)


def test_handle_repr_says_cancelled_after_cancel(loop):
    def my_distinctive_callback():
        pass

    handle = loop.call_soon(my_distinctive_callback)
    handle.cancel()
    assert "cancelled" in repr(handle)
    _run_once(loop)


def test_callback_exception_does_not_stop_later_callbacks(loop, handler_calls):
    order = []

    def boom():
        order.append("boom")
        raise ZeroDivisionError

    loop.call_soon(boom)
    loop.call_soon(order.append, "after")
    _run_once(loop)
    assert order == ["boom", "after"]
    assert len(handler_calls) == 1
    assert isinstance(handler_calls[0]["exception"], ZeroDivisionError)


def test_callbacks_run_in_loop_thread(loop):
    threads = []
    loop.call_soon(lambda: threads.append(threading.get_ident()))
    loop.call_soon_threadsafe(lambda: threads.append(threading.get_ident()))
    _run_once(loop)
    assert threads == [threading.get_ident()] * 2


def test_get_running_loop_inside_callback(loop):
    seen = []
    loop.call_soon(lambda: seen.append(asyncio.get_running_loop()))
    _run_once(loop)
    assert seen == [loop]


def test_call_soon_threadsafe_wakes_loop_blocked_without_any_timer(loop):
    woke = loop.create_future()

    def from_thread():
        time.sleep(0.1)
        loop.call_soon_threadsafe(woke.set_result, "woken")

    thread = threading.Thread(target=from_thread)
    started = time.monotonic()
    thread.start()
    try:
        assert loop.run_until_complete(woke) == "woken"
    finally:
        thread.join()
    assert time.monotonic() - started < 2.0


def test_stop_via_call_soon_threadsafe_ends_run_forever(loop):
    def from_thread():
        time.sleep(0.05)
        loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=from_thread)
    started = time.monotonic()
    thread.start()
    try:
        loop.run_forever()
    finally:
        thread.join()
    assert not loop.is_running()
    assert time.monotonic() - started < 2.0


def test_long_chain_of_rescheduling_callbacks_completes(loop):
    remaining = [20_000]
    done = loop.create_future()

    def step():
        remaining[0] -= 1
        if remaining[0]:
            loop.call_soon(step)
        else:
            done.set_result("chain-done")

    loop.call_soon(step)
    assert loop.run_until_complete(done) == "chain-done"


def test_callable_object_and_partial_as_callbacks(loop):
    seen = []

    class Recorder:
        def __call__(self, value):
            seen.append(("object", value))

    loop.call_soon(Recorder(), 1)
    loop.call_soon(functools.partial(seen.append, ("partial", 2)))
    loop.call_soon(seen.append, ("builtin", 3))
    _run_once(loop)
    assert seen == [("object", 1), ("partial", 2), ("builtin", 3)]


def test_handle_cancel_inside_its_own_callback(loop):
    box = []

    def self_cancel():
        box[0].cancel()

    box.append(loop.call_soon(self_cancel))
    _run_once(loop)
    assert box[0].cancelled()


def test_loop_does_not_retain_callbacks_after_run(loop):
    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    loop.call_soon(lambda p: None, payload)
    loop.call_later(0, lambda p: None, payload)
    del payload
    loop.run_until_complete(asyncio.sleep(0.01))
    gc.collect()
    assert ref() is None


def test_cancelled_callback_arguments_released(loop):
    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    handle = loop.call_soon(lambda p: None, payload)
    del payload
    handle.cancel()
    gc.collect()
    assert ref() is None
    _run_once(loop)


def test_running_loop_not_visible_from_other_threads(loop):
    seen = []

    async def main():
        def in_thread():
            seen.append(asyncio._get_running_loop())

        await asyncio.get_running_loop().run_in_executor(None, in_thread)

    loop.run_until_complete(main())
    assert seen == [None]


class _Payload:
    """A weak-referenceable value whose release a test watches."""


payload_var: contextvars.ContextVar[_Payload] = contextvars.ContextVar("payload_var")

# More callbacks than any allocator free list holds, so each one gets a freshly allocated
# handle and context copy.
DEEP_QUEUE = 5000


def _schedule_deep_queue(loop, method, keep_handles):
    """Schedule DEEP_QUEUE callbacks from a context whose only reference to a fresh payload is
    the one each callback's context copy inherits; returns a weak reference to the payload."""
    payload = _Payload()
    ref = weakref.ref(payload)

    def schedule(payload):
        payload_var.set(payload)
        if method == "call_later":
            return [loop.call_later(0, payload_var.get) for _ in range(DEEP_QUEUE)]
        return [getattr(loop, method)(payload_var.get) for _ in range(DEEP_QUEUE)]

    handles = contextvars.copy_context().run(schedule, payload)
    del payload
    return ref, (handles if keep_handles else None)


@pytest.mark.parametrize("keep_handles", [False, True], ids=["dropped", "kept"])
@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later"])
def test_contexts_of_a_deep_queue_are_released_after_running(loop, method, keep_handles):
    ref, handles = _schedule_deep_queue(loop, method, keep_handles)
    loop.run_until_complete(asyncio.sleep(0.01))
    gc.collect()
    assert ref() is not None if keep_handles else ref() is None
    del handles
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("keep_handles", [False, True], ids=["dropped", "kept"])
@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later"])
def test_contexts_of_a_deep_queue_are_released_when_the_loop_closes(loop, method, keep_handles):
    ref, handles = _schedule_deep_queue(loop, method, keep_handles)
    loop.close()
    del handles
    gc.collect()
    assert ref() is None


def test_reference_cycle_through_a_callback_context_is_collected(loop):
    # The callback stores, in its own context, an object that refers back to the handle:
    # handle -> context -> payload -> handle, a cycle only the GC can free.
    refs = []
    box = []

    def callback():
        payload = _Payload()
        payload.handle = box.pop()
        payload_var.set(payload)
        refs.append(weakref.ref(payload))

    box.append(loop.call_soon(callback))
    _run_once(loop)
    assert refs and refs[0]() is not None
    gc.collect()
    assert refs[0]() is None


def test_unclosed_loop_in_a_cycle_through_a_deep_queue_is_collected(loop_module):
    # loop -> queued handle -> its context -> a context variable's value -> loop: only the GC
    # can free this, and it must see through the queued contexts to do so.
    class Holder:
        pass

    def schedule(holder):
        payload_var.set(holder)
        for _ in range(DEEP_QUEUE):
            holder.loop.call_soon(lambda: None)

    holder = Holder()
    holder.loop = loop_module.new_event_loop()
    ref = weakref.ref(holder)
    contextvars.copy_context().run(schedule, holder)
    del holder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # "unclosed event loop"
        gc.collect()
    assert ref() is None


@pytest.mark.parametrize("args", [(), (1,), (1, 2), ((1, 2),)], ids=["none", "one", "two", "one-tuple"])
def test_handle_args_and_repr_show_the_arguments_as_a_tuple(loop, args):
    handle = loop.call_soon(print, *args)
    assert handle._args == args
    assert repr(args)[1:-1].rstrip(",") in repr(handle)
    handle.cancel()
    assert handle._args is None


def test_a_one_argument_callback_gets_the_argument_itself(loop):
    seen = []
    payload = (1, 2)
    loop.call_soon(seen.append, payload)
    loop.call_soon_threadsafe(seen.append, payload)
    loop.call_later(0, seen.append, payload)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert len(seen) == 3
    assert all(item is payload for item in seen)


def test_recycled_handles_keep_their_kind_and_their_callers_references(loop):
    # Handles and timer handles freed in bulk are reused for later ones: each must come back as
    # its own kind, and a handle the caller keeps must stay complete and visible to the GC.
    for _ in range(3):
        soon = [loop.call_soon(lambda: None) for _ in range(2000)]
        later = [loop.call_later(0, lambda: None) for _ in range(2000)]
        kept_soon, kept_later = soon[::500], later[::500]
        del soon, later
        loop.run_until_complete(asyncio.sleep(0.01))
        gc.collect()
        for handle in kept_soon:
            assert type(handle).__name__ == "Handle"
            assert gc.is_tracked(handle)
            assert handle._callback is not None
        for handle in kept_later:
            assert type(handle).__name__ == "TimerHandle"
            assert handle.when() > 0
            assert gc.is_tracked(handle)


def test_timer_handles_with_equal_arguments_compare_equal(loop):
    when = loop.time() + 60
    first = loop.call_at(when, print, "same")
    second = loop.call_at(when, print, "same")
    other = loop.call_at(when, print, "other")
    assert first == second
    assert first != other
    for handle in (first, second, other):
        handle.cancel()


def test_memory_of_a_burst_of_callbacks_is_released_once_the_loop_is_idle(loop):
    # ferroloop keeps freed handles for reuse while busy; a loop that then waits for over a
    # second gives the surplus back, so a burst does not hold its memory for good.
    def noop():
        pass

    loop.run_until_complete(asyncio.sleep(0))
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        handles = [loop.call_soon(noop) for _ in range(30_000)]
        del handles
        loop.run_until_complete(asyncio.sleep(0))
        held = tracemalloc.get_traced_memory()[0] - baseline
        loop.run_until_complete(asyncio.sleep(1.2))
        after = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert after < 1_000_000, (held, after)
