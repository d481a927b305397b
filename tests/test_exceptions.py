"""Exception handler API and error reporting."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest


def _run_once(loop):
    loop.stop()
    loop.run_forever()


def _raiser(exc):
    def raise_it():
        raise exc

    return raise_it


def _asyncio_error_records(caplog):
    return [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


def test_callback_exception_goes_to_handler_with_context(loop, handler_calls):
    exc = ValueError("in callback")

    def failing_callback():
        raise exc

    handle = loop.call_soon(failing_callback)
    _run_once(loop)
    assert len(handler_calls) == 1
    ctx = handler_calls[0]
    assert ctx["message"].startswith("Exception in callback")
    assert "failing_callback" in ctx["message"]
    assert ctx["exception"] is exc
    assert ctx["handle"] is handle


def test_timer_callback_exception_goes_to_handler_with_timer_handle(loop, handler_calls):
    exc = KeyError("timer")
    handle = loop.call_later(0.001, _raiser(exc))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert len(handler_calls) == 1
    ctx = handler_calls[0]
    assert ctx["message"].startswith("Exception in callback")
    assert ctx["exception"] is exc
    assert ctx["handle"] is handle


def test_threadsafe_callback_exception_goes_to_handler(loop, handler_calls):
    exc = OSError("threadsafe")
    loop.call_soon_threadsafe(_raiser(exc))
    _run_once(loop)
    assert [c["exception"] for c in handler_calls] == [exc]


def test_handler_receives_loop_as_first_argument(loop):
    received = []
    loop.set_exception_handler(lambda lp, ctx: received.append(lp))
    loop.call_soon(_raiser(RuntimeError("x")))
    _run_once(loop)
    assert received == [loop]


def test_handler_is_called_in_loop_thread_while_running(loop):
    states = []
    loop.set_exception_handler(lambda lp, ctx: states.append(lp.is_running()))
    loop.call_soon(_raiser(RuntimeError("x")))
    _run_once(loop)
    assert states == [True]


def test_exception_in_callback_does_not_stop_loop(loop, handler_calls):
    order = []
    loop.call_soon(_raiser(ValueError("first")))
    loop.call_soon(order.append, "second")
    loop.call_later(0.001, _raiser(ValueError("timer")))
    loop.call_later(0.002, order.append, "after-timer")
    loop.run_until_complete(asyncio.sleep(0.02))
    assert order == ["second", "after-timer"]
    assert len(handler_calls) == 2


def test_get_exception_handler_returns_what_was_set(loop):
    def handler(lp, ctx):
        pass

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_fresh_loop_has_no_exception_handler(factory):
    new_loop = factory()
    try:
        assert new_loop.get_exception_handler() is None
    finally:
        new_loop.close()


@pytest.mark.parametrize("bad", [42, "handler", object()], ids=["int", "str", "object"])
def test_set_exception_handler_non_callable_raises_type_error(loop, bad):
    with pytest.raises(TypeError):
        loop.set_exception_handler(bad)


def test_default_exception_handler_logs_to_stdlib_logger(loop, caplog):
    loop.set_exception_handler(None)

    def failing_callback():
        raise ValueError("logged value error")

    loop.call_soon(failing_callback)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        _run_once(loop)
    records = _asyncio_error_records(caplog)
    assert len(records) == 1
    record = records[0]
    assert "Exception in callback" in record.getMessage()
    assert "failing_callback" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)
    assert "logged value error" in caplog.text


def test_default_exception_handler_called_directly(loop, caplog):
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.default_exception_handler({"message": "direct message", "extra_key": "extra-value"})
    records = _asyncio_error_records(caplog)
    assert len(records) == 1
    text = records[0].getMessage()
    assert "direct message" in text
    assert "extra_key" in text
    assert "extra-value" in text


def test_default_exception_handler_without_message_uses_default_text(loop, caplog):
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.default_exception_handler({"exception": ValueError("v")})
    records = _asyncio_error_records(caplog)
    assert len(records) == 1
    assert "Unhandled exception in event loop" in records[0].getMessage()
    assert isinstance(records[0].exc_info[1], ValueError)


def test_custom_handler_can_delegate_to_default_handler(loop, caplog):
    seen = []

    def handler(lp, ctx):
        seen.append(ctx["message"])
        lp.default_exception_handler(ctx)

    loop.set_exception_handler(handler)
    loop.call_soon(_raiser(ValueError("delegated")))
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        _run_once(loop)
    assert len(seen) == 1
    assert len(_asyncio_error_records(caplog)) == 1
    assert "delegated" in caplog.text


def test_exception_handler_that_raises_is_logged_not_propagated(loop, caplog):
    def bad_handler(lp, ctx):
        raise RuntimeError("handler exploded")

    loop.set_exception_handler(bad_handler)
    order = []
    loop.call_soon(_raiser(ValueError("original")))
    loop.call_soon(order.append, "still-running")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        _run_once(loop)
    assert order == ["still-running"]
    records = _asyncio_error_records(caplog)
    assert records, "the failure of the custom handler was not logged"
    assert "Unhandled error in exception handler" in caplog.text
    assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in records)


def test_exception_handler_raising_from_call_exception_handler_is_logged(loop, caplog):
    def bad_handler(lp, ctx):
        raise RuntimeError("handler exploded")

    loop.set_exception_handler(bad_handler)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "user message"})
    assert "Unhandled error in exception handler" in caplog.text


def test_exception_handler_base_exception_propagates(loop):
    def interrupting_handler(lp, ctx):
        raise KeyboardInterrupt

    loop.set_exception_handler(interrupting_handler)
    loop.call_soon(_raiser(ValueError("x")))
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert not loop.is_running()


def test_call_exception_handler_from_user_code(loop, handler_calls):
    exc = LookupError("user")
    context = {"message": "user supplied", "exception": exc, "custom": 123}
    loop.call_exception_handler(context)
    assert handler_calls == [context]


def test_call_exception_handler_with_no_handler_logs(loop, caplog):
    loop.set_exception_handler(None)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "user level problem", "custom": 123})
    records = _asyncio_error_records(caplog)
    assert len(records) == 1
    assert "user level problem" in records[0].getMessage()
    assert "custom" in records[0].getMessage()


def test_call_exception_handler_from_coroutine(loop, handler_calls):
    async def main():
        asyncio.get_running_loop().call_exception_handler({"message": "from coroutine"})

    loop.run_until_complete(main())
    assert [c["message"] for c in handler_calls] == ["from coroutine"]


def test_unretrieved_task_exception_reported_on_garbage_collection(loop, handler_calls):
    async def failing():
        raise ZeroDivisionError("never retrieved")

    task = loop.create_task(failing())
    loop.run_until_complete(asyncio.sleep(0.01))
    assert task.done()
    assert handler_calls == []
    del task
    gc.collect()
    assert len(handler_calls) == 1
    ctx = handler_calls[0]
    assert ctx["message"] == "Task exception was never retrieved"
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert "future" in ctx


def test_retrieved_task_exception_not_reported(loop):
    async def failing():
        raise ZeroDivisionError("retrieved")

    task = loop.create_task(failing())
    loop.run_until_complete(asyncio.sleep(0.01))
    assert isinstance(task.exception(), ZeroDivisionError)
    del task
    gc.collect()


def test_unretrieved_future_exception_reported_on_garbage_collection(loop, handler_calls):
    fut = loop.create_future()
    fut.set_exception(ValueError("future never retrieved"))
    del fut
    gc.collect()
    assert len(handler_calls) == 1
    assert handler_calls[0]["message"] == "Future exception was never retrieved"
    assert isinstance(handler_calls[0]["exception"], ValueError)


def test_pending_task_destroyed_is_reported(loop, handler_calls):
    async def forever():
        await loop.create_future()

    task = loop.create_task(forever())
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    del task
    gc.collect()
    assert [c["message"] for c in handler_calls] == ["Task was destroyed but it is pending!"]


def test_exception_in_done_callback_goes_to_handler(loop, handler_calls):
    fut = loop.create_future()
    exc = ValueError("done callback")

    def bad_done_callback(f):
        raise exc

    fut.add_done_callback(bad_done_callback)
    fut.set_result(None)
    _run_once(loop)
    assert len(handler_calls) == 1
    assert handler_calls[0]["exception"] is exc
    assert "bad_done_callback" in handler_calls[0]["message"]


def test_exception_handler_context_for_failing_callback_with_args(loop, handler_calls):
    def failing_with_args(a, b):
        raise ValueError(a + b)

    loop.call_soon(failing_with_args, 1, 2)
    _run_once(loop)
    assert len(handler_calls) == 1
    assert handler_calls[0]["exception"].args == (3,)
