"""call_later / call_at, TimerHandle and loop.time() behaviour."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import math
import time
import weakref

import pytest

# Timers may legitimately fire up to one clock tick before their deadline
# (CPython's loop runs timers whose deadline is < now + clock resolution).
CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution

tag: contextvars.ContextVar[str] = contextvars.ContextVar("tag", default="none")


def _run_once(loop):
    loop.stop()
    loop.run_forever()


def _run_until_called(loop, timeout=5.0):
    """Return a (callback, run) pair: run() drives the loop until callback fires."""
    fut = loop.create_future()

    def callback(*_args):
        if not fut.done():
            fut.set_result(None)

    def run():
        loop.run_until_complete(asyncio.wait_for(fut, timeout))

    return callback, run


def test_call_later_fires_in_deadline_order_not_scheduling_order(loop):
    order = []
    loop.call_later(0.03, order.append, "c")
    loop.call_later(0.01, order.append, "a")
    loop.call_later(0.02, order.append, "b")
    done, run = _run_until_called(loop)
    loop.call_later(0.04, done)
    run()
    assert order == ["a", "b", "c"]


def test_call_at_fires_in_deadline_order(loop):
    order = []
    now = loop.time()
    for offset in (0.05, 0.01, 0.04, 0.02, 0.03):
        loop.call_at(now + offset, order.append, offset)
    done, run = _run_until_called(loop)
    loop.call_at(now + 0.06, done)
    run()
    assert order == [0.01, 0.02, 0.03, 0.04, 0.05]


def test_call_later_same_delay_fires_in_scheduling_order(loop):
    # Each call_later computes its deadline from a fresh loop.time(), so equal
    # delays scheduled one after another produce non-decreasing deadlines.
    order = []
    for i in range(50):
        loop.call_later(0.01, order.append, i)
    done, run = _run_until_called(loop)
    loop.call_later(0.02, done)
    run()
    assert order == list(range(50))


def test_call_at_identical_deadlines_all_fire_in_same_iteration(loop):
    # The relative order of timers with exactly the same deadline is
    # documented as undefined, but they must all be run, once, together.
    fired = []
    when = loop.time() - 1
    for i in range(10):
        loop.call_at(when, fired.append, i)
    _run_once(loop)
    assert sorted(fired) == list(range(10))


def test_call_later_negative_and_zero_delay_run_soon(loop):
    order = []
    loop.call_later(0.02, order.append, "later")
    loop.call_later(0, order.append, "zero")
    loop.call_later(-1, order.append, "negative")
    done, run = _run_until_called(loop)
    loop.call_later(0.03, done)
    run()
    assert order == ["negative", "zero", "later"]


def test_call_later_negative_delay_runs_without_waiting(loop):
    fired = []
    long_timer = loop.call_later(30, fired.append, "long")
    loop.call_later(-5, fired.append, "negative")
    started = time.monotonic()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert fired == ["negative"]
    assert time.monotonic() - started < 2.0
    long_timer.cancel()


def test_call_at_in_the_past_runs_soon(loop):
    fired = []
    loop.call_at(loop.time() - 100, fired.append, "past")
    _run_once(loop)
    assert fired == ["past"]


def test_timers_never_fire_early(loop):
    records = []

    def record(handle_box):
        records.append((loop.time(), handle_box[0].when()))

    for delay in (0.001, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05):
        box = []
        box.append(loop.call_later(delay, record, box))
    done, run = _run_until_called(loop)
    loop.call_later(0.06, done)
    run()
    assert len(records) == 7
    for fired_at, when in records:
        assert fired_at >= when - CLOCK_RESOLUTION, f"timer due at {when} fired early at {fired_at}"


def test_sleep_never_returns_early(loop):
    async def main():
        start = loop.time()
        await asyncio.sleep(0.05)
        return loop.time() - start

    assert loop.run_until_complete(main()) >= 0.05 - CLOCK_RESOLUTION


def test_timer_handle_when_for_call_at_is_the_given_deadline(loop):
    when = loop.time() + 123.5
    handle = loop.call_at(when, lambda: None)
    assert handle.when() == when
    handle.cancel()


def test_timer_handle_when_for_an_int_deadline_is_that_int(loop):
    # aiohttp rounds deadlines up to whole seconds and its tests check the handle keeps the int.
    when = math.ceil(loop.time()) + 100
    handle = loop.call_at(when, lambda: None)
    assert handle.when() == when
    assert type(handle.when()) is int
    handle.cancel()


def test_timers_follow_a_time_method_patched_on_the_loop(loop):
    # asyncio reads its clock through self.time(), so patching it on the loop moves the timers
    # (aiohttp's keep-alive tests do this).
    fired = []
    real_now = loop.time()
    loop.time = lambda: real_now
    try:
        loop.call_later(1000, fired.append, "later")
        loop.call_at(real_now + 2000, fired.append, "at")
        _run_once(loop)
        assert fired == []
        loop.time = lambda: real_now + 1000
        _run_once(loop)
        assert fired == ["later"]
        loop.time = lambda: real_now + 2000
        _run_once(loop)
        assert fired == ["later", "at"]
    finally:
        del loop.time
    # Back on the real clock: a short timer fires after its delay, the far ones never ran twice.
    callback, run = _run_until_called(loop)
    loop.call_later(0.01, callback)
    run()
    assert fired == ["later", "at"]


def test_timers_follow_a_time_method_overridden_by_a_subclass(loop):
    class VirtualClock(type(loop)):  # type: ignore[misc]
        virtual_now = 0.0

        def time(self):
            return self.virtual_now

    virtual = VirtualClock()
    try:
        fired = []
        virtual.call_later(3600, fired.append, 1)
        _run_once(virtual)
        assert fired == []
        virtual.virtual_now = 3600.0
        _run_once(virtual)
        assert fired == [1]
    finally:
        virtual.close()


def test_timer_handle_when_for_call_later_is_now_plus_delay(loop):
    before = loop.time()
    handle = loop.call_later(7, lambda: None)
    after = loop.time()
    assert before + 7 <= handle.when() <= after + 7
    handle.cancel()


def test_call_later_returns_a_timer_handle_with_a_deadline(loop):
    handle = loop.call_later(1, lambda: None)
    assert type(handle).__name__ == "TimerHandle"
    assert handle.when() >= loop.time()
    handle.cancel()


def test_call_later_handle_is_an_asyncio_timer_handle_instance(loop, request, is_ferroloop):
    if is_ferroloop:
        request.applymarker(
            pytest.mark.xfail(reason="known difference: ferroloop's handles are native, not asyncio.Handle subclasses")
        )
    handle = loop.call_later(1, lambda: None)
    try:
        assert isinstance(handle, asyncio.TimerHandle)
        assert isinstance(handle, asyncio.Handle)
    finally:
        handle.cancel()


def test_timer_handle_when_still_available_after_cancel(loop):
    when = loop.time() + 10
    handle = loop.call_at(when, lambda: None)
    handle.cancel()
    assert handle.cancelled()
    assert handle.when() == when


def test_cancelled_timer_does_not_fire(loop):
    fired = []
    handle = loop.call_later(0.01, fired.append, "cancelled")
    loop.call_later(0.01, fired.append, "kept")
    handle.cancel()
    assert handle.cancelled()
    loop.run_until_complete(asyncio.sleep(0.03))
    assert fired == ["kept"]


def test_timer_cancelled_by_earlier_timer_in_same_iteration_does_not_fire(loop):
    fired = []
    now = loop.time()
    second = None

    def first():
        fired.append("first")
        second.cancel()

    loop.call_at(now - 2, first)
    second = loop.call_at(now - 1, fired.append, "second")
    _run_once(loop)
    _run_once(loop)
    assert fired == ["first"]


def test_timer_cancel_after_fire_has_no_effect(loop):
    fired = []
    handle = loop.call_later(0, fired.append, 1)
    loop.run_until_complete(asyncio.sleep(0.01))
    handle.cancel()
    assert fired == [1]
    assert handle.cancelled()


def test_many_cancelled_timers_remaining_ones_fire_in_order(loop):
    fired = []
    handles = []
    now = loop.time()
    for i in range(10_000):
        # Deadlines spread over 50 ms, in scrambled scheduling order.
        j = (i * 7919) % 10_000
        handles.append((j, loop.call_at(now + 0.001 + j * 0.000005, fired.append, j)))
    kept = []
    for j, handle in handles:
        if j % 10 == 0:
            kept.append(j)
        else:
            handle.cancel()
    done, run = _run_until_called(loop)
    loop.call_at(now + 0.1, done)
    run()
    assert fired == sorted(kept)
    assert len(fired) == 1000


def test_cancelling_all_timers_lets_loop_idle_without_firing(loop):
    fired = []
    handles = [loop.call_later(0.001 * i, fired.append, i) for i in range(1000)]
    for handle in handles:
        handle.cancel()
    loop.run_until_complete(asyncio.sleep(0.02))
    assert fired == []


def test_call_at_with_loop_time_based_deadline(loop):
    records = []
    deadline = loop.time() + 0.02
    loop.call_at(deadline, lambda: records.append(loop.time()))
    done, run = _run_until_called(loop)
    loop.call_at(deadline + 0.01, done)
    run()
    assert len(records) == 1
    assert records[0] >= deadline - CLOCK_RESOLUTION


def test_call_later_passes_args_and_context(loop):
    ctx = contextvars.Context()
    ctx.run(tag.set, "timer-ctx")
    seen = []
    loop.call_later(0, lambda a, b: seen.append((a, b, tag.get())), 1, 2, context=ctx)
    loop.call_at(loop.time(), lambda: seen.append(tag.get()))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert seen == [(1, 2, "timer-ctx"), "none"]


def test_call_later_none_delay_raises_type_error(loop):
    with pytest.raises(TypeError):
        loop.call_later(None, lambda: None)


def test_call_at_none_deadline_raises_type_error(loop):
    with pytest.raises(TypeError):
        loop.call_at(None, lambda: None)


def test_call_later_accepts_int_delay(loop):
    handle = loop.call_later(1, lambda: None)
    assert handle.when() == pytest.approx(loop.time() + 1, abs=0.5)
    handle.cancel()


def test_call_later_huge_delay_is_accepted(loop):
    fired = []
    handle = loop.call_later(1e9, fired.append, 1)
    _run_once(loop)
    assert fired == []
    handle.cancel()


def test_sleep_infinity_can_be_cancelled(loop):
    async def main():
        sleeper = asyncio.ensure_future(asyncio.sleep(math.inf))
        await asyncio.sleep(0.01)
        assert not sleeper.done()
        sleeper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeper
        return "ok"

    assert loop.run_until_complete(main()) == "ok"


def test_pending_far_timer_does_not_delay_run_until_complete(loop):
    handle = loop.call_later(3600, lambda: None)
    started = time.monotonic()
    assert loop.run_until_complete(asyncio.sleep(0, "done")) == "done"
    assert time.monotonic() - started < 2.0
    handle.cancel()


def test_timer_scheduled_from_timer_callback_fires(loop):
    fired = []

    def first():
        fired.append("first")
        loop.call_later(0.005, fired.append, "second")

    loop.call_later(0.005, first)
    done, run = _run_until_called(loop)
    loop.call_later(0.05, done)
    run()
    assert fired == ["first", "second"]


def test_timer_handle_repr_contains_callback_name(loop):
    def my_timer_callback():
        pass

    handle = loop.call_later(10, my_timer_callback)
    assert "my_timer_callback" in repr(handle)
    handle.cancel()
    assert "cancelled" in repr(handle)


def test_loop_time_is_monotonic(loop):
    samples = [loop.time() for _ in range(10_000)]
    assert all(b >= a for a, b in zip(samples, samples[1:]))


def test_loop_time_advances_while_running(loop):
    async def main():
        t0 = loop.time()
        await asyncio.sleep(0.02)
        return loop.time() - t0

    assert loop.run_until_complete(main()) >= 0.02 - CLOCK_RESOLUTION


def test_loop_time_is_close_to_time_monotonic(loop):
    before = time.monotonic()
    loop_now = loop.time()
    after = time.monotonic()
    assert before - 0.05 <= loop_now <= after + 0.05


def test_loop_time_is_close_to_time_monotonic_inside_callback(loop):
    samples = []

    def sample():
        samples.append((time.monotonic(), loop.time(), time.monotonic()))

    loop.call_later(0.01, sample)
    loop.run_until_complete(asyncio.sleep(0.02))
    (before, loop_now, after) = samples[0]
    assert before - 0.05 <= loop_now <= after + 0.05


def test_timer_that_expired_while_loop_was_idle_fires_on_next_run(loop):
    fired = []
    loop.call_later(0.01, fired.append, "late")
    time.sleep(0.03)
    assert fired == []
    _run_once(loop)
    assert fired == ["late"]


def test_cancelled_timer_releases_callback_arguments(loop):
    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    handle = loop.call_later(3600, lambda p: None, payload)
    del payload
    handle.cancel()
    gc.collect()
    # The cancelled timer may still sit in the loop's queue, but it must not
    # keep its arguments alive.
    assert ref() is None
    _run_once(loop)


def test_timer_fires_promptly_when_loop_idle(loop):
    fired = loop.create_future()
    started = time.monotonic()
    loop.call_later(0.05, fired.set_result, None)
    loop.run_until_complete(fired)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("debug", [False, True], ids=["normal", "debug"])
@pytest.mark.parametrize("how", ["fired", "cancelled", "loop_closed"])
def test_object_holding_its_own_timer_handle_is_collected(factory, how, debug):
    """A handle whose callback is a bound method of the object that stores the handle forms a
    reference cycle; once the timer fired, was cancelled, or its loop closed, it must be freed."""
    import gc
    import weakref

    loop = factory()
    loop.set_debug(debug)

    class Owner:
        def __init__(self) -> None:
            self.fired = False
            self.handle = loop.call_later(0 if how == "fired" else 60, self.tick)
            self.soon = loop.call_soon(self.tick)

        def tick(self) -> None:
            self.fired = True

    owner = Owner()
    ref = weakref.ref(owner)
    if how == "fired":
        loop.run_until_complete(asyncio.sleep(0.01))
        assert owner.fired
    elif how == "cancelled":
        owner.handle.cancel()
        owner.soon.cancel()
    del owner
    if how == "loop_closed":
        loop.close()
    gc.collect()
    assert ref() is None
    loop.close()
