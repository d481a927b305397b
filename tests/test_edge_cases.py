"""Adversarial edge cases: re-entrancy, fatal exceptions, timers, handles, fd watchers, threads and lifecycle.

Every test runs on ferroloop and on the stdlib loop (the oracle), through the ``loop`` / ``factory``
fixtures of conftest.py.
"""

from __future__ import annotations

import asyncio
import builtins
import contextvars
import decimal
import errno
import functools
import gc
import logging
import os
import random
import socket
import sys
import tempfile
import threading
import weakref

import pytest

needs_get_context = pytest.mark.skipif(
    not hasattr(asyncio.Handle, "get_context"), reason="Handle.get_context() is new in Python 3.12"
)

edge_var: contextvars.ContextVar[object] = contextvars.ContextVar("edge_var", default=None)


def _run_once(loop):
    """Run exactly one iteration of the loop (stop() before run_forever())."""
    loop.stop()
    loop.run_forever()


def _noop(*args):
    pass


class _Payload:
    """A weak-referenceable object to hand to callbacks."""


class _Finalized:
    """Calls ``action`` from ``__del__``; errors are recorded, not lost in an unraisable hook."""

    def __init__(self, action, errors):
        self.action = action
        self.errors = errors

    def __del__(self):
        try:
            self.action()
        except BaseException as exc:
            self.errors.append(exc)


def _make_garbage_cycle(action, errors):
    """A reference cycle only the cyclic GC can free, finalized by ``action``."""
    obj = _Finalized(action, errors)
    obj.self_ref = obj


@pytest.fixture
def sockpair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


# --------------------------------------------------------------------------
# re-entrancy
# --------------------------------------------------------------------------


def test_callbacks_scheduled_from_callbacks_interleave_turn_by_turn(loop):
    order = []

    def step(name, remaining):
        order.append(name + str(remaining))
        if remaining:
            loop.call_soon(step, name, remaining - 1)

    loop.call_soon(step, "a", 2)
    loop.call_soon(step, "b", 2)
    for _ in range(3):
        _run_once(loop)
    assert order == ["a2", "b2", "a1", "b1", "a0", "b0"]


def test_call_later_zero_from_callback_fires_next_turn_after_call_soon_callbacks(loop):
    order = []

    def first():
        order.append("first")
        loop.call_later(0, order.append, "timer")
        loop.call_soon(order.append, "soon")
        loop.call_soon(loop.stop)

    loop.call_soon(first)
    loop.run_forever()
    assert order == ["first", "soon", "timer"]


def test_add_reader_from_callback_and_reader_removing_itself(loop, sockpair):
    rsock, wsock = sockpair
    wsock.send(b"data")
    calls = []
    done = loop.create_future()

    def reader():
        calls.append(rsock.recv(100))
        assert loop.remove_reader(rsock) is True
        assert loop.remove_reader(rsock) is False
        loop.call_soon(done.set_result, None)

    loop.call_soon(loop.add_reader, rsock, reader)
    loop.run_until_complete(done)
    # More data must not reach a reader that removed itself.
    wsock.send(b"more")
    loop.run_until_complete(asyncio.sleep(0.01))
    assert calls == [b"data"]


def test_reader_removing_itself_and_adding_a_new_reader_in_its_callback(loop, sockpair):
    rsock, wsock = sockpair
    wsock.send(b"x")
    order = []
    done = loop.create_future()

    def second():
        order.append("second")
        rsock.recv(10)
        loop.remove_reader(rsock)
        done.set_result(None)

    def first():
        order.append("first")  # data left unread: the fd stays readable
        loop.remove_reader(rsock)
        loop.add_reader(rsock, second)

    loop.add_reader(rsock, first)
    loop.run_until_complete(done)
    assert order == ["first", "second"]


def test_reader_replacing_itself_with_add_reader_is_not_called_again(loop, sockpair):
    rsock, wsock = sockpair
    wsock.send(b"x")
    order = []
    done = loop.create_future()

    def replacement():
        order.append("replacement")
        if len(order) == 3:
            rsock.recv(10)
            loop.remove_reader(rsock)
            done.set_result(None)

    def original():
        order.append("original")
        loop.add_reader(rsock, replacement)

    loop.add_reader(rsock, original)
    loop.run_until_complete(done)
    assert order == ["original", "replacement", "replacement"]


def test_reader_removing_writer_of_same_fd_in_same_turn_prevents_writer_call(loop, sockpair):
    rsock, wsock = sockpair
    wsock.send(b"x")  # rsock is now both readable and writable
    calls = []

    def reader():
        calls.append("reader")
        assert loop.remove_writer(rsock) is True
        loop.remove_reader(rsock)

    loop.add_reader(rsock, reader)
    loop.add_writer(rsock, calls.append, "writer")
    _run_once(loop)
    _run_once(loop)
    assert calls == ["reader"]


def test_finalizer_run_by_gc_collect_inside_callback_can_use_the_loop(loop, sockpair):
    rsock, wsock = sockpair
    other_r, other_w = socket.socketpair()
    wsock.send(b"x")
    order = []
    errors = []
    done = loop.create_future()

    def reader():
        order.append("reader")
        rsock.recv(10)
        loop.remove_reader(rsock)
        done.set_result(None)

    def from_finalizer():
        loop.call_soon(order.append, "soon")
        loop.call_later(0, order.append, "later")
        loop.add_reader(rsock, reader)
        order.append(("removed other reader", loop.remove_reader(other_r)))

    def collect_in_callback():
        _make_garbage_cycle(from_finalizer, errors)
        gc.collect()
        order.append("collected")

    try:
        loop.add_reader(other_r, order.append, "other reader must not run")
        loop.call_soon(collect_in_callback)
        loop.run_until_complete(done)
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.remove_reader(other_r)
        other_r.close()
        other_w.close()
    assert errors == []
    assert order[:2] == [("removed other reader", True), "collected"]
    assert sorted(map(str, order[2:])) == ["later", "reader", "soon"]


def test_finalizer_of_released_callback_argument_can_schedule_callbacks(loop):
    order = []
    errors = []
    done = loop.create_future()

    def from_finalizer():
        order.append("finalized")
        loop.call_soon(done.set_result, None)

    loop.call_soon(_noop, _Finalized(from_finalizer, errors))
    loop.run_until_complete(done)
    assert errors == []
    assert order == ["finalized"]


def test_finalizer_of_cancelled_callback_argument_can_schedule_callbacks(loop):
    order = []
    errors = []
    handle = loop.call_later(3600, _noop, _Finalized(lambda: loop.call_soon(order.append, "soon"), errors))
    handle.cancel()
    gc.collect()
    _run_once(loop)
    assert errors == []
    assert order == ["soon"]


def test_finalizer_of_argument_released_by_close_sees_a_closed_loop(factory):
    new_loop = factory()
    errors = []
    new_loop.call_soon(_noop, _Finalized(lambda: new_loop.call_soon(_noop), errors))
    new_loop.call_later(3600, _noop, _Finalized(lambda: new_loop.call_later(1, _noop), errors))
    new_loop.close()
    gc.collect()
    assert len(errors) == 2
    assert all(isinstance(exc, RuntimeError) for exc in errors), errors


def test_exception_handler_can_schedule_and_stop(loop):
    order = []

    def handler(the_loop, context):
        order.append(("handler", type(context["exception"]).__name__))
        the_loop.call_soon(order.append, "soon from handler")
        the_loop.call_later(0, order.append, "later from handler")
        the_loop.stop()

    def failing():
        raise ValueError("boom")

    loop.set_exception_handler(handler)
    loop.call_soon(failing)
    loop.call_soon(order.append, "same turn")
    loop.run_forever()
    assert order == [("handler", "ValueError"), "same turn"]
    _run_once(loop)
    assert order[2:] == ["soon from handler", "later from handler"]


def test_callable_whose_repr_schedules_a_callback_while_its_error_is_reported(loop, handler_calls):
    order = []

    class Failing:
        def __call__(self):
            raise ValueError("boom")

        def __repr__(self):
            loop.call_soon(order.append, "from repr")
            return "<Failing>"

    loop.call_soon(Failing())
    _run_once(loop)
    _run_once(loop)
    assert len(handler_calls) == 1
    assert "<Failing>" in handler_calls[0]["message"]
    assert "from repr" in order


def test_stop_then_run_forever_again_resumes_where_it_left_off(loop):
    order = []

    def first():
        order.append("first")
        loop.stop()
        loop.call_soon(second)

    def second():
        order.append("second")
        loop.call_soon(third)

    def third():
        order.append("third")
        loop.stop()

    loop.call_soon(first)
    loop.run_forever()
    assert order == ["first"]
    assert not loop.is_running()
    loop.run_forever()
    assert order == ["first", "second", "third"]


def test_stop_called_twice_before_run_forever_runs_a_single_turn(loop):
    order = []

    def first():
        order.append("first")
        loop.call_soon(order.append, "next turn")

    loop.call_soon(first)
    loop.stop()
    loop.stop()
    loop.run_forever()
    assert order == ["first"]
    _run_once(loop)
    assert order == ["first", "next turn"]


def test_close_from_callback_raises_runtime_error_and_loop_stays_usable(loop, handler_calls):
    outcome = []

    def try_close():
        try:
            loop.close()
        except RuntimeError as exc:
            outcome.append(str(exc))

    loop.call_soon(try_close)
    loop.call_soon(loop.close)  # unguarded: the error goes to the exception handler
    _run_once(loop)
    assert outcome == ["Cannot close a running event loop"]
    assert not loop.is_closed()
    assert len(handler_calls) == 1
    assert isinstance(handler_calls[0]["exception"], RuntimeError)
    assert loop.run_until_complete(asyncio.sleep(0, "still usable")) == "still usable"


def test_close_from_exception_handler_raises_runtime_error(loop):
    outcome = []

    def handler(the_loop, context):
        try:
            the_loop.close()
        except RuntimeError as exc:
            outcome.append(type(exc))

    def failing():
        raise ValueError

    loop.set_exception_handler(handler)
    loop.call_soon(failing)
    _run_once(loop)
    assert outcome == [RuntimeError]
    assert not loop.is_closed()


def test_run_until_complete_from_timer_callback_raises_runtime_error(loop):
    outcome = []
    fut = loop.create_future()

    def nested():
        for attempt in (lambda: loop.run_until_complete(fut), loop.run_forever):
            try:
                attempt()
            except RuntimeError as exc:
                outcome.append(str(exc))
        fut.set_result("outer")

    loop.call_later(0, nested)
    assert loop.run_until_complete(fut) == "outer"
    assert outcome == ["This event loop is already running"] * 2
    assert not loop.is_running()


# --------------------------------------------------------------------------
# KeyboardInterrupt / SystemExit
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
def test_fatal_exception_in_second_of_three_callbacks_keeps_third_queued_first(loop, fatal):
    order = []

    def first():
        order.append("first")
        loop.call_soon(order.append, "scheduled by first")

    def second():
        order.append("second")
        raise fatal

    loop.call_soon(first)
    loop.call_soon(second)
    loop.call_soon(order.append, "third")
    with pytest.raises(fatal):
        loop.run_forever()
    assert order == ["first", "second"]
    assert not loop.is_running()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == ["first", "second", "third", "scheduled by first"]


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
def test_fatal_exception_in_second_of_three_due_timers_keeps_third_queued(loop, fatal):
    order = []
    base = loop.time() - 10

    def second():
        order.append("t2")
        raise fatal

    loop.call_at(base + 3, order.append, "t3")
    loop.call_at(base + 2, second)
    loop.call_at(base + 1, order.append, "t1")
    with pytest.raises(fatal):
        loop.run_forever()
    assert order == ["t1", "t2"]
    _run_once(loop)
    assert order == ["t1", "t2", "t3"]


def test_stop_requested_before_keyboard_interrupt_does_not_leak_into_next_run(loop):
    order = []

    def first():
        order.append("first")
        loop.stop()

    def second():
        raise KeyboardInterrupt

    def third():
        order.append("third")
        loop.call_soon(fourth)  # runs only if the next run goes on to a second turn

    def fourth():
        order.append("fourth")
        loop.stop()

    loop.call_soon(first)
    loop.call_soon(second)
    loop.call_soon(third)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    loop.run_forever()
    assert order == ["first", "third", "fourth"]


def test_keyboard_interrupt_from_reader_propagates_and_reader_stays_registered(loop, sockpair):
    rsock, wsock = sockpair
    wsock.send(b"x")
    calls = []

    def reader():
        calls.append(len(calls))
        if len(calls) == 1:
            raise KeyboardInterrupt
        rsock.recv(10)
        loop.remove_reader(rsock)
        loop.stop()

    loop.add_reader(rsock, reader)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    loop.run_forever()
    assert calls == [0, 1]


def test_keyboard_interrupt_subclass_propagates_out_of_run_forever(loop):
    class Interrupt(KeyboardInterrupt):
        pass

    def raiser():
        raise Interrupt

    loop.call_soon(raiser)
    with pytest.raises(Interrupt):
        loop.run_forever()


def test_exception_handler_raising_keyboard_interrupt_propagates_and_keeps_queue(loop):
    order = []

    def handler(the_loop, context):
        order.append("handler")
        raise KeyboardInterrupt

    def failing():
        order.append("failing")
        raise ValueError

    loop.set_exception_handler(handler)
    loop.call_soon(failing)
    loop.call_soon(order.append, "after")
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert order == ["failing", "handler"]
    _run_once(loop)
    assert order == ["failing", "handler", "after"]


# --------------------------------------------------------------------------
# exceptions
# --------------------------------------------------------------------------


class _CustomBaseException(BaseException):
    pass


_BaseExceptionGroup = getattr(builtins, "BaseExceptionGroup", None)


@pytest.mark.parametrize(
    "make_exc",
    [
        GeneratorExit,
        _CustomBaseException,
        asyncio.CancelledError,
        lambda: _BaseExceptionGroup("group", [KeyboardInterrupt()]),
        lambda: _BaseExceptionGroup("group", [SystemExit(1), ValueError()]),
    ],
    ids=["GeneratorExit", "custom", "CancelledError", "group-of-KeyboardInterrupt", "group-of-SystemExit"],
)
def test_non_fatal_base_exception_from_callback_goes_to_exception_handler(loop, handler_calls, make_exc):
    try:
        exc = make_exc()
    except TypeError:
        pytest.skip("BaseExceptionGroup is new in Python 3.11")
    order = []

    def raiser():
        order.append("raiser")
        raise exc

    handle = loop.call_soon(raiser)
    loop.call_soon(order.append, "next")
    _run_once(loop)
    assert order == ["raiser", "next"]
    assert len(handler_calls) == 1
    context = handler_calls[0]
    assert context["exception"] is exc
    assert context["handle"] is handle
    assert context["message"].startswith("Exception in callback ")


@pytest.mark.parametrize("exc_type", [ValueError, GeneratorExit, _CustomBaseException])
def test_exception_handler_raising_is_logged_and_loop_goes_on(loop, caplog, exc_type):
    order = []

    def handler(the_loop, context):
        order.append("handler")
        raise exc_type("from handler")

    def failing():
        raise ZeroDivisionError

    loop.set_exception_handler(handler)
    loop.call_soon(failing)
    loop.call_soon(order.append, "after")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        _run_once(loop)
    assert order == ["handler", "after"]
    logged = [r for r in caplog.records if r.name == "asyncio"]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert logged[0].exc_info[0] is exc_type


@pytest.mark.parametrize("handler", [42, "handler", object(), b"x"], ids=["int", "str", "object", "bytes"])
def test_set_exception_handler_non_callable_raises_type_error_and_keeps_old_handler(loop, handler):
    def mine(the_loop, context):
        pass

    loop.set_exception_handler(mine)
    with pytest.raises(TypeError):
        loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is mine
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_callback_with_non_context_context_reports_to_handler(loop, handler_calls):
    order = []
    loop.call_soon(order.append, "never", context=42)
    loop.call_soon(order.append, "next")
    _run_once(loop)
    assert order == ["next"]
    assert len(handler_calls) == 1
    assert isinstance(handler_calls[0]["exception"], Exception)


def test_callback_whose_context_is_already_entered_reports_runtime_error(loop, handler_calls):
    order = []
    ctx = contextvars.copy_context()
    loop.call_soon(order.append, "never", context=ctx)
    loop.call_soon(order.append, "next")
    loop.stop()
    ctx.run(loop.run_forever)
    assert order == ["next"]
    assert len(handler_calls) == 1
    assert isinstance(handler_calls[0]["exception"], RuntimeError)


# --------------------------------------------------------------------------
# timers
# --------------------------------------------------------------------------


def test_call_at_far_in_the_past_fires_next_turn_in_deadline_order(loop):
    order = []
    loop.call_at(loop.time() - 1, order.append, "recent past")
    loop.call_at(0, order.append, "zero")
    loop.call_at(-1e18, order.append, "far past")
    loop.call_at(float("-inf"), order.append, "-inf")
    loop.call_soon(order.append, "soon")
    _run_once(loop)
    assert order == ["soon", "-inf", "far past", "zero", "recent past"]


def test_call_later_infinite_delay_never_fires_and_does_not_block_other_work(loop):
    fired = []
    handle = loop.call_later(float("inf"), fired.append, "inf")
    assert handle.when() == float("inf")
    assert "when=inf" in repr(handle)
    assert loop.run_until_complete(asyncio.sleep(0.01, "done")) == "done"
    assert fired == []
    handle.cancel()
    _run_once(loop)


def test_call_later_nan_delay_fires_like_asyncio(loop):
    # asyncio's heap treats a NaN deadline as already due (every comparison with it is false).
    fired = []
    loop.call_later(float("nan"), fired.append, "nan")
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert fired == ["nan"]


@pytest.mark.parametrize("delay", [decimal.Decimal("0.01"), "0.01", 10**400], ids=["Decimal", "str", "huge-int"])
def test_call_later_rejects_delays_asyncio_cannot_add_to_a_float(loop, delay):
    with pytest.raises((TypeError, OverflowError)) as info:
        loop.call_later(delay, _noop)
    expected = OverflowError if isinstance(delay, int) else TypeError
    assert info.type is expected


def test_many_timers_cancelled_in_random_order_rest_fire_in_deadline_order(loop):
    rng = random.Random(20240601)
    base = loop.time() - 100
    offsets = list(range(5000))
    rng.shuffle(offsets)
    fired = []
    handles = {off: loop.call_at(base + off * 1e-3, fired.append, off) for off in offsets}
    doomed = rng.sample(offsets, 3500)
    for off in doomed:
        handles[off].cancel()
    for off in doomed[:100]:
        handles[off].cancel()  # cancelling twice changes nothing
    survivors = sorted(set(offsets) - set(doomed))
    # The earliest survivor also cancels a random tenth of the later ones, which are due in the
    # same turn and already queued behind it.
    late_doomed = set(rng.sample(survivors[1:], len(survivors) // 10))

    def first_survivor(off):
        fired.append(off)
        for other in late_doomed:
            handles[other].cancel()

    handles[survivors[0]].cancel()
    loop.call_at(base + survivors[0] * 1e-3, first_survivor, survivors[0])
    _run_once(loop)
    assert fired == [off for off in survivors if off not in late_doomed]
    assert all(handles[off].cancelled() for off in doomed)
    assert not any(handles[off].cancelled() for off in survivors[1:] if off not in late_doomed)


def test_many_future_timers_half_cancelled_fire_in_deadline_order(loop):
    rng = random.Random(7)
    now = loop.time()
    deadlines = [now + 0.001 + i * 0.00002 for i in range(2000)]
    order = list(range(2000))
    rng.shuffle(order)
    fired = []
    handles = [None] * 2000
    for i in order:
        handles[i] = loop.call_at(deadlines[i], fired.append, i)
    cancelled = rng.sample(range(1999), 1500)
    for i in cancelled:
        handles[i].cancel()
    done = loop.create_future()
    handles[1999].cancel()
    loop.call_at(deadlines[1999], done.set_result, None)
    loop.run_until_complete(done)
    assert fired == sorted(set(range(1999)) - set(cancelled))


def test_timer_cancel_after_fire_and_cancel_twice(loop):
    fired = []
    handle = loop.call_later(0, fired.append, 1)
    other = loop.call_later(3600, fired.append, 2)
    _run_once(loop)
    assert fired == [1]
    assert not handle.cancelled()
    handle.cancel()
    handle.cancel()
    assert handle.cancelled()
    other.cancel()
    other.cancel()
    assert other.cancelled()
    _run_once(loop)
    assert fired == [1]


def test_timer_handle_comparisons_follow_deadline_and_identity_fields(loop):
    base = loop.time() + 3600
    early = loop.call_at(base, _noop, 1)
    early_twin = loop.call_at(base, _noop, 1)
    early_other_args = loop.call_at(base, _noop, 2)
    late = loop.call_at(base + 1, _noop, 1)
    try:
        assert early < late and late > early
        assert early <= late and late >= early
        assert early != late and not (early == late)
        assert early == early_twin and not (early != early_twin)
        assert early <= early_twin and early >= early_twin
        assert not (early < early_twin) and not (early > early_twin)
        assert early != early_other_args
        assert not (early < early_other_args) and not (early > early_other_args)
        assert not (early <= early_other_args) and not (early >= early_other_args)
        assert hash(early) == hash(early.when()) == hash(early_twin)
        assert len({early, early_twin, late}) == 2
        assert early != 5 and not (early == "x")
        with pytest.raises(TypeError):
            early < 5  # noqa: B015
        with pytest.raises(TypeError):
            early >= None  # noqa: B015
        plain = loop.call_soon(_noop)
        assert plain != early and not (early == plain)
        with pytest.raises(TypeError):
            early < plain  # noqa: B015
        early_twin.cancel()
        assert early != early_twin  # a cancelled handle differs from a live twin
    finally:
        for h in (early, early_twin, early_other_args, late):
            h.cancel()
    _run_once(loop)


def test_sorting_timer_handles_orders_by_deadline(loop):
    rng = random.Random(3)
    base = loop.time() + 3600
    handles = [loop.call_at(base + i, _noop, i) for i in range(200)]
    shuffled = handles[:]
    rng.shuffle(shuffled)
    assert sorted(shuffled) == handles
    assert min(shuffled) is handles[0]
    assert max(shuffled) is handles[-1]
    for h in handles:
        h.cancel()
    _run_once(loop)


def test_cancelled_timer_handles_with_same_deadline_compare_equal(loop):
    when = loop.time() + 3600
    a = loop.call_at(when, _noop, "a")
    b = loop.call_at(when, print, "b")
    assert a != b
    a.cancel()
    b.cancel()
    assert a == b  # callback and args are dropped on cancel, as asyncio does
    _run_once(loop)


def test_timer_handle_equality_survives_an_argument_whose_eq_cancels_the_handle(loop):
    class CancelsOnCompare:
        handle = None

        def __eq__(self, other):
            if self.handle is not None:
                self.handle.cancel()
            return True

        __hash__ = object.__hash__

    when = loop.time() + 3600
    first_arg = CancelsOnCompare()
    first = loop.call_at(when, _noop, first_arg)
    second = loop.call_at(when, _noop, CancelsOnCompare())
    first_arg.handle = first
    try:
        assert (first == second) is False  # cancelled during the comparison: no longer equal
        assert first.cancelled()
    finally:
        first.cancel()
        second.cancel()
    _run_once(loop)


# --------------------------------------------------------------------------
# handles
# --------------------------------------------------------------------------


class _Widget:
    def method(self, *args):
        pass

    @staticmethod
    def static(*args):
        pass

    @classmethod
    def klass(cls, *args):
        pass

    def __call__(self, *args):
        pass

    def __repr__(self):
        return "<Widget>"


def _plain_function(*args, **kwargs):
    pass


_CALLBACKS = {
    "function": (_plain_function, (1, "two")),
    "lambda": (lambda *a: None, ()),
    "partial": (functools.partial(_plain_function, 1, key="v"), (2,)),
    "nested-partial": (functools.partial(functools.partial(_plain_function, 1), 2), ()),
    "partial-of-bound-method": (functools.partial(_Widget().method, 0), ()),
    "bound-method": (_Widget().method, (3,)),
    "staticmethod": (_Widget.static, ()),
    "classmethod": (_Widget.klass, ()),
    "callable-object": (_Widget(), ("arg",)),
    "builtin": (print, ("hello",)),
    "builtin-method": ([].append, (1,)),
    "type": (dict, ()),
}


@pytest.mark.parametrize("kind", list(_CALLBACKS))
def test_handle_repr_matches_asyncio_handle_for_callback_kind(loop, kind):
    loop.set_debug(False)  # debug mode adds "created at <this line>", which differs per handle
    callback, args = _CALLBACKS[kind]
    handle = loop.call_soon(callback, *args)
    timer = loop.call_at(loop.time() + 3600, callback, *args)
    try:
        assert repr(handle) == repr(asyncio.Handle(callback, args, loop))
        assert repr(timer) == repr(asyncio.TimerHandle(timer.when(), callback, args, loop))
    finally:
        handle.cancel()
        timer.cancel()
    assert repr(handle) == "<Handle cancelled>"
    assert repr(timer) == f"<TimerHandle cancelled when={timer.when()!r}>"
    _run_once(loop)


@pytest.mark.parametrize("kind", ["function", "partial", "bound-method", "builtin-method"])
def test_handle_repr_after_the_callback_ran_still_names_the_callback(loop, kind):
    loop.set_debug(False)  # debug mode adds "created at <this line>", which differs per handle
    callback, args = _CALLBACKS[kind]
    handle = loop.call_soon(callback, *args)
    timer = loop.call_at(loop.time() - 1, callback, *args)
    _run_once(loop)
    assert not handle.cancelled() and not timer.cancelled()
    assert repr(handle) == repr(asyncio.Handle(callback, args, loop))
    assert repr(timer) == repr(asyncio.TimerHandle(timer.when(), callback, args, loop))


def test_handles_report_not_cancelled_after_run_and_cancelled_after_late_cancel(loop):
    handle = loop.call_soon(_noop)
    timer = loop.call_later(0, _noop)
    when = timer.when()
    _run_once(loop)
    _run_once(loop)
    assert not handle.cancelled()
    assert not timer.cancelled()
    assert timer.when() == when
    handle.cancel()
    timer.cancel()
    assert handle.cancelled() and timer.cancelled()
    assert timer.when() == when


@needs_get_context
def test_handle_get_context_is_the_context_passed(loop):
    ctx = contextvars.copy_context()
    handle = loop.call_soon(_noop, context=ctx)
    timer = loop.call_later(3600, _noop, context=ctx)
    assert handle.get_context() is ctx
    assert timer.get_context() is ctx
    timer.cancel()
    assert timer.get_context() is ctx
    _run_once(loop)


@needs_get_context
def test_handle_get_context_after_run_is_still_the_context_passed(loop):
    ctx = contextvars.copy_context()
    handle = loop.call_soon(_noop, context=ctx)
    _run_once(loop)
    assert handle.get_context() is ctx


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later"])
def test_cancelled_handle_in_a_cycle_through_its_context_is_collected(loop, method):
    """An object stored in a context variable that holds the handle scheduled in that context."""

    def schedule_in_context():
        holder = _Payload()
        edge_var.set(holder)
        if method == "call_later":
            holder.handle = loop.call_later(3600, _noop)
        else:
            holder.handle = getattr(loop, method)(_noop)
        holder.handle.cancel()
        return weakref.ref(holder)

    ref = contextvars.copy_context().run(schedule_in_context)
    _run_once(loop)
    _run_once(loop)
    gc.collect()
    assert ref() is None


def test_handle_in_a_cycle_through_its_context_is_collected_after_it_ran(loop):
    def schedule_in_context():
        holder = _Payload()
        edge_var.set(holder)
        holder.handle = loop.call_soon(_noop)
        return weakref.ref(holder)

    ref = contextvars.copy_context().run(schedule_in_context)
    _run_once(loop)
    gc.collect()
    assert ref() is None


# --------------------------------------------------------------------------
# fd watchers
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_add_watcher_on_closed_fd_raises_ebadf_and_leaves_nothing_registered(loop, method):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        getattr(loop, method)(r, _noop)
    assert info.value.errno == errno.EBADF
    assert loop.remove_reader(r) is False
    assert loop.remove_writer(r) is False
    assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_add_watcher_on_regular_file_raises_permission_error_and_leaves_nothing_registered(loop, method):
    with tempfile.TemporaryFile() as f:
        with pytest.raises(PermissionError):
            getattr(loop, method)(f, _noop)
        assert loop.remove_reader(f) is False
        assert loop.remove_writer(f) is False
    _run_once(loop)


def _pipe_at(fd_number):
    """A new pipe whose read end is ``fd_number`` (which must be free); returns (read_fd, write_fd)."""
    r, w = os.pipe()
    if r != fd_number:
        if w == fd_number:
            moved = os.dup(w)
            os.close(w)
            w = moved
        os.dup2(r, fd_number)
        os.close(r)
    return fd_number, w


@pytest.mark.parametrize("remove_before_close", [True, False], ids=["removed-then-closed", "closed-then-removed"])
def test_fd_number_closed_and_reopened_between_registrations_is_watched_anew(loop, remove_before_close):
    r1, w1 = os.pipe()
    loop.add_reader(r1, _noop)
    if remove_before_close:
        assert loop.remove_reader(r1) is True
    os.close(r1)
    os.close(w1)
    if not remove_before_close:
        assert loop.remove_reader(r1) is True
    r2, w2 = _pipe_at(r1)
    got = []
    done = loop.create_future()

    def reader():
        got.append(os.read(r2, 10))
        loop.remove_reader(r2)
        done.set_result(None)

    try:
        loop.add_reader(r2, reader)
        os.write(w2, b"new")
        loop.run_until_complete(asyncio.wait_for(done, 10))
    finally:
        loop.remove_reader(r2)
        os.close(r2)
        os.close(w2)
    assert got == [b"new"]


@pytest.mark.parametrize("reader_first", [True, False], ids=["reader-first", "writer-first"])
def test_reader_and_writer_on_same_fd_removed_in_either_order(loop, sockpair, reader_first):
    rsock, wsock = sockpair
    wsock.send(b"x")  # readable and writable
    calls = []
    loop.add_reader(rsock, calls.append, "reader")
    loop.add_writer(rsock, calls.append, "writer")
    _run_once(loop)
    assert sorted(calls) == ["reader", "writer"]
    removals = [loop.remove_reader, loop.remove_writer]
    if not reader_first:
        removals.reverse()
    assert [remove(rsock) for remove in removals] == [True, True]
    assert [remove(rsock) for remove in removals] == [False, False]
    calls.clear()
    _run_once(loop)
    _run_once(loop)
    assert calls == []
    # The fd can be watched again afterwards.
    loop.add_writer(rsock.fileno(), calls.append, "writer again")
    _run_once(loop)
    assert loop.remove_writer(rsock) is True
    assert calls == ["writer again"]


def test_watcher_added_by_object_replaced_and_removed_by_fileno_and_back(loop, sockpair):
    rsock, wsock = sockpair
    wsock.send(b"x")
    calls = []
    loop.add_reader(rsock, calls.append, "by object")
    loop.add_reader(rsock.fileno(), calls.append, "by fileno")
    _run_once(loop)
    assert calls == ["by fileno"]
    assert loop.remove_reader(rsock) is True
    assert loop.remove_reader(rsock.fileno()) is False
    loop.add_writer(rsock, calls.append, "writer by object")
    assert loop.remove_writer(rsock.fileno()) is True
    assert loop.remove_writer(rsock) is False
    _run_once(loop)
    assert calls == ["by fileno"]


def test_add_reader_accepts_fileobj_whose_fileno_is_int_convertible(loop, sockpair):
    # asyncio (selectors._fileobj_to_fd) converts fileno() with int().
    rsock, wsock = sockpair
    wsock.send(b"x")

    class FloatFileno:
        def fileno(self):
            return float(rsock.fileno())

    calls = []
    loop.add_reader(FloatFileno(), calls.append, "reader")
    try:
        _run_once(loop)
    finally:
        assert loop.remove_reader(rsock) is True
    assert calls == ["reader"]


def test_reader_runs_on_the_turn_after_data_is_written_by_a_callback(loop, sockpair):
    """asyncio looks at I/O on every turn: data written in turn N is dispatched in turn N+1."""
    rsock, wsock = sockpair
    events = []
    turn = 0

    def tick():
        nonlocal turn
        turn += 1
        if turn == 1:
            wsock.send(b"x")
        if turn < 6:
            loop.call_soon(tick)
        else:
            loop.stop()

    def reader():
        events.append(("reader", turn))
        rsock.recv(10)

    loop.add_reader(rsock, reader)
    try:
        loop.call_soon(tick)
        loop.run_forever()
    finally:
        loop.remove_reader(rsock)
    assert events == [("reader", 2)]


# --------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------


def test_call_soon_threadsafe_from_many_threads_runs_each_call_once_in_per_thread_order(loop):
    n_threads, per_thread = 8, 2000
    total = n_threads * per_thread
    received = []
    done = loop.create_future()
    barrier = threading.Barrier(n_threads)
    errors = []

    def record(item):
        received.append(item)
        if len(received) == total:
            done.set_result(None)

    def producer(tid):
        try:
            barrier.wait(timeout=30)
            for i in range(per_thread):
                loop.call_soon_threadsafe(record, (tid, i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(tid,)) for tid in range(n_threads)]
    for t in threads:
        t.start()
    try:
        loop.run_until_complete(asyncio.wait_for(done, 30))
    finally:
        for t in threads:
            t.join(30)
    assert errors == []
    assert len(received) == total
    assert set(received) == {(tid, i) for tid in range(n_threads) for i in range(per_thread)}
    for tid in range(n_threads):
        assert [i for t, i in received if t == tid] == list(range(per_thread))
    _run_once(loop)
    assert len(received) == total


def test_call_soon_threadsafe_after_close_raises_runtime_error_in_any_thread(factory):
    closed_loop = factory()
    closed_loop.close()
    with pytest.raises(RuntimeError):
        closed_loop.call_soon_threadsafe(_noop)
    outcome = []

    def from_thread():
        try:
            closed_loop.call_soon_threadsafe(_noop)
        except RuntimeError as exc:
            outcome.append(exc)

    t = threading.Thread(target=from_thread)
    t.start()
    t.join(10)
    assert len(outcome) == 1


def test_loop_running_in_other_thread_is_stopped_from_main_thread(loop):
    started = threading.Event()
    errors = []
    order = []

    def run():
        try:
            loop.call_soon(started.set)
            loop.run_forever()
            order.append("returned")
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    try:
        assert started.wait(10)
        assert loop.is_running()
        with pytest.raises(RuntimeError):
            loop.run_forever()
        with pytest.raises(RuntimeError):
            loop.close()
        loop.call_soon_threadsafe(order.append, "before stop")
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
    finally:
        if t.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            t.join(10)
    assert not t.is_alive()
    assert errors == []
    assert order == ["before stop", "returned"]
    assert not loop.is_running()
    # The loop can then run in the main thread.
    assert loop.run_until_complete(asyncio.sleep(0, "main")) == "main"


# --------------------------------------------------------------------------
# lifecycle
# --------------------------------------------------------------------------


def test_close_releases_pending_callbacks_timers_and_watchers(factory, sockpair):
    rsock, wsock = sockpair
    new_loop = factory()
    payloads = {name: _Payload() for name in ("soon", "threadsafe", "later", "reader", "writer")}
    refs = {name: weakref.ref(obj) for name, obj in payloads.items()}
    new_loop.call_soon(_noop, payloads["soon"])
    new_loop.call_soon_threadsafe(_noop, payloads["threadsafe"])
    new_loop.call_later(3600, _noop, payloads["later"])
    new_loop.add_reader(rsock, _noop, payloads["reader"])
    new_loop.add_writer(wsock, _noop, payloads["writer"])
    del payloads
    gc.collect()
    assert all(ref() is not None for ref in refs.values())
    new_loop.close()
    gc.collect()
    assert {name: ref() for name, ref in refs.items()} == dict.fromkeys(refs)


def test_closed_loop_is_garbage_collected_even_with_callbacks_referring_to_it(factory, loop_module, sockpair):
    new_loop = loop_module.new_event_loop()  # not factory(): it keeps its loops alive
    try:
        new_loop.call_soon(new_loop.stop)
        new_loop.call_later(3600, new_loop.call_soon, _noop)
        new_loop.add_reader(sockpair[0], new_loop.stop)
    finally:
        new_loop.close()
    ref = weakref.ref(new_loop)
    del new_loop
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("method", ["call_soon", "call_later", "add_reader"])
def test_unclosed_loop_in_a_cycle_through_a_pending_callback_is_collected_with_resource_warning(
    factory, loop_module, sockpair, method
):
    new_loop = loop_module.new_event_loop()  # not factory(): it keeps its loops alive
    payload = _Payload()
    payload.loop = new_loop
    if method == "call_soon":
        new_loop.call_soon(_noop, payload)
    elif method == "call_later":
        new_loop.call_later(3600, _noop, payload)
    else:
        new_loop.add_reader(sockpair[0], _noop, payload)
    ref = weakref.ref(new_loop)
    del new_loop, payload
    try:
        with pytest.warns(ResourceWarning, match="unclosed event loop"):
            gc.collect()
        assert ref() is None
    finally:
        leftover = ref()
        if leftover is not None:
            leftover.close()
            del leftover
            gc.collect()


def _fd_count():
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_two_hundred_loops_created_used_and_closed_leak_no_fds(factory, loop_module):
    rsock, wsock = socket.socketpair()
    try:
        before = _fd_count()
        for i in range(200):
            new_loop = loop_module.new_event_loop()
            try:
                if i % 2:
                    new_loop.add_reader(rsock, _noop)
                    new_loop.call_later(3600, _noop)
                    new_loop.run_until_complete(asyncio.sleep(0))
            finally:
                new_loop.close()
        del new_loop
        gc.collect()
        assert _fd_count() == before
    finally:
        rsock.close()
        wsock.close()


def test_run_forever_twice_in_sequence(loop):
    order = []
    for run in range(2):
        loop.call_soon(order.append, ("soon", run))
        loop.call_later(0.001, loop.stop)
        loop.run_forever()
        assert not loop.is_running()
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
    assert order == [("soon", 0), ("soon", 1)]


def test_stopped_loop_keeps_pending_timers_for_the_next_run(loop):
    fired = []

    def timer():
        fired.append("timer")
        loop.stop()

    loop.call_later(0.2, timer)
    _run_once(loop)
    assert fired == []
    safety = loop.call_later(30, loop.stop)
    loop.run_forever()
    safety.cancel()
    assert fired == ["timer"]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is new in Python 3.11")
def test_runner_reuse_keeps_loop_context_and_background_tasks(factory):
    progress = []
    cleaned_up = []

    async def background():
        try:
            while True:
                progress.append(1)
                await asyncio.sleep(0)
        finally:
            cleaned_up.append(True)

    tasks = {}

    async def first():
        edge_var.set("from first run")
        tasks["background"] = asyncio.get_running_loop().create_task(background())
        await asyncio.sleep(0)
        return asyncio.get_running_loop()

    async def second():
        before = len(progress)
        for _ in range(5):
            await asyncio.sleep(0)
        return asyncio.get_running_loop(), edge_var.get(), len(progress) - before

    with asyncio.Runner(loop_factory=factory) as runner:
        loop1 = runner.run(first())
        loop2, seen, advanced = runner.run(second())
        assert loop1 is loop2 is runner.get_loop()
        assert seen == "from first run"
        assert advanced >= 4
        assert not tasks["background"].done()
    assert loop1.is_closed()
    assert tasks["background"].cancelled()
    assert cleaned_up == [True]
    coro = asyncio.sleep(0)
    try:
        with pytest.raises(RuntimeError):
            runner.run(coro)
    finally:
        coro.close()


def test_closed_loop_refuses_everything_but_keeps_handles_usable(factory):
    new_loop = factory()
    handle = new_loop.call_soon(_noop)
    timer = new_loop.call_later(3600, _noop)
    new_loop.close()
    new_loop.close()
    for attempt in (
        lambda: new_loop.call_soon(_noop),
        lambda: new_loop.call_later(1, _noop),
        lambda: new_loop.call_at(1, _noop),
        new_loop.run_forever,
        lambda: new_loop.add_reader(0, _noop),
    ):
        with pytest.raises(RuntimeError):
            attempt()
    assert new_loop.remove_reader(0) is False
    handle.cancel()
    timer.cancel()
    assert handle.cancelled() and timer.cancelled()
    assert "cancelled" in repr(handle) and "cancelled" in repr(timer)
