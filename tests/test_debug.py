"""Debug mode: flags, slow-callback logging, thread checks, source tracebacks."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest


def _run_once(loop):
    loop.stop()
    loop.run_forever()


def _expected_default_debug():
    return bool(sys.flags.dev_mode or (not sys.flags.ignore_environment and os.environ.get("PYTHONASYNCIODEBUG")))


def _run_python(code, *, env_updates=None, args=()):
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONDEVMODE", None)
    env.update(env_updates or {})
    # Make the package importable in the child exactly as it is here.
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


_PRINT_DEBUG_FLAG = """
    import {module}
    loop = {module}.new_event_loop()
    try:
        print("debug:", loop.get_debug())
    finally:
        loop.close()
"""


def test_get_debug_default_follows_environment(loop):
    assert loop.get_debug() is _expected_default_debug()


def test_set_debug_toggles_get_debug(loop):
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_set_debug_while_running(loop):
    async def main():
        loop.set_debug(True)
        await asyncio.sleep(0)
        return loop.get_debug()

    assert loop.run_until_complete(main()) is True


def test_debug_env_var_turns_debug_on_for_new_loop(loop_name):
    result = _run_python(_PRINT_DEBUG_FLAG.format(module=loop_name), env_updates={"PYTHONASYNCIODEBUG": "1"})
    assert result.returncode == 0, result.stderr
    assert "debug: True" in result.stdout


def test_debug_off_without_environment_in_subprocess(loop_name):
    result = _run_python(_PRINT_DEBUG_FLAG.format(module=loop_name))
    assert result.returncode == 0, result.stderr
    assert "debug: False" in result.stdout


def test_dev_mode_turns_debug_on_for_new_loop(loop_name):
    result = _run_python(_PRINT_DEBUG_FLAG.format(module=loop_name), args=("-X", "dev"))
    assert result.returncode == 0, result.stderr
    assert "debug: True" in result.stdout


def test_slow_callback_duration_default_and_setter(loop):
    assert loop.slow_callback_duration == pytest.approx(0.1)
    loop.slow_callback_duration = 0.25
    assert loop.slow_callback_duration == pytest.approx(0.25)


def test_slow_callback_logged_in_debug_mode(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01

    def sluggish_callback():
        time.sleep(0.05)

    loop.call_soon(sluggish_callback)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        _run_once(loop)
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno == logging.WARNING]
    matching = [m for m in messages if "Executing" in m and "took" in m]
    assert len(matching) == 1, messages
    assert "sluggish_callback" in matching[0]
    assert "seconds" in matching[0]


def test_slow_coroutine_step_logged_in_debug_mode(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01

    async def blocking_step():
        time.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_until_complete(blocking_step())
    assert any("Executing" in r.getMessage() and "took" in r.getMessage() for r in caplog.records)


def test_slow_callback_not_logged_without_debug(loop, caplog):
    loop.set_debug(False)
    loop.slow_callback_duration = 0.01
    loop.call_soon(time.sleep, 0.05)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        _run_once(loop)
    assert not [r for r in caplog.records if "took" in r.getMessage()]


def test_fast_callback_not_logged_in_debug_mode(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 10
    loop.call_soon(lambda: None)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        _run_once(loop)
    assert not [r for r in caplog.records if "took" in r.getMessage()]


def _call_from_thread_while_running(loop, action):
    """Run `action` in a helper thread while the loop runs; return its exception."""
    outcome = {}

    def worker(done):
        try:
            action()
        except BaseException as exc:
            outcome["exc"] = exc
        loop.call_soon_threadsafe(done.set_result, None)

    async def main():
        done = loop.create_future()
        thread = threading.Thread(target=worker, args=(done,))
        thread.start()
        try:
            await asyncio.wait_for(done, 10)
        finally:
            thread.join()

    loop.run_until_complete(main())
    return outcome.get("exc")


@pytest.mark.parametrize(
    "method",
    [
        pytest.param(lambda lp: lp.call_soon(print), id="call_soon"),
        pytest.param(lambda lp: lp.call_later(1, print), id="call_later"),
        pytest.param(lambda lp: lp.call_at(lp.time() + 1, print), id="call_at"),
    ],
)
def test_debug_mode_call_from_other_thread_raises_non_thread_safe(loop, method):
    loop.set_debug(True)
    exc = _call_from_thread_while_running(loop, lambda: method(loop))
    assert isinstance(exc, RuntimeError)
    assert "Non-thread-safe operation" in str(exc)


def test_debug_mode_call_soon_threadsafe_from_other_thread_is_allowed(loop):
    loop.set_debug(True)
    called = []
    exc = _call_from_thread_while_running(loop, lambda: loop.call_soon_threadsafe(called.append, 1))
    assert exc is None
    loop.run_until_complete(asyncio.sleep(0))
    assert called == [1]


def test_debug_mode_call_soon_from_other_thread_allowed_when_loop_not_running(loop):
    loop.set_debug(True)
    outcome = []

    def worker():
        try:
            outcome.append(loop.call_soon(lambda: None))
        except RuntimeError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert not isinstance(outcome[0], Exception)
    _run_once(loop)


def test_debug_mode_handle_repr_shows_creation_site(loop):
    loop.set_debug(True)

    def some_callback():
        pass

    handle = loop.call_soon(some_callback)
    text = repr(handle)
    assert "some_callback" in text
    assert "created at" in text
    _run_once(loop)


def test_debug_mode_timer_handle_repr_shows_creation_site(loop):
    loop.set_debug(True)
    handle = loop.call_later(10, print)
    assert "created at" in repr(handle)
    handle.cancel()


def test_handle_repr_without_debug_has_no_creation_site(loop):
    loop.set_debug(False)
    handle = loop.call_soon(print)
    assert "created at" not in repr(handle)
    _run_once(loop)


def test_debug_mode_exception_context_has_source_traceback(loop, handler_calls):
    loop.set_debug(True)

    def failing():
        raise ValueError("debug")

    loop.call_soon(failing)
    _run_once(loop)
    assert len(handler_calls) == 1
    source_tb = handler_calls[0].get("source_traceback")
    assert source_tb, "debug mode exception context lacks source_traceback"
    assert any(os.path.basename(frame[0]) == os.path.basename(__file__) for frame in source_tb)


def _report_from_a_callback(loop):
    """Runs one callback that reports an error through the default handler; returns the handle,
    the context as the default handler left it, and the loop's current handle during the call."""
    seen = {}

    def handler(the_loop, context):
        the_loop.default_exception_handler(context)
        seen.update(context)

    def reporting():
        seen["current"] = loop._current_handle
        loop.call_exception_handler({"message": "something went wrong"})

    loop.set_exception_handler(handler)
    handle = loop.call_soon(reporting)
    _run_once(loop)
    return handle, seen


def test_debug_mode_report_during_callback_names_where_it_was_scheduled(loop, handler_calls):
    # A report made while a callback runs (not about the callback itself) gets the running
    # handle's creation stack from the default handler, under "handle_traceback".
    loop.set_debug(True)
    handle, seen = _report_from_a_callback(loop)
    assert seen["current"] is handle
    assert loop._current_handle is None
    tb = seen.get("handle_traceback")
    assert tb, "the default handler did not add handle_traceback"
    assert any(os.path.basename(frame[0]) == os.path.basename(__file__) for frame in tb)


def test_report_during_callback_without_debug_has_no_handle_traceback(loop, handler_calls):
    loop.set_debug(False)
    _, seen = _report_from_a_callback(loop)
    assert seen["current"] is None
    assert "handle_traceback" not in seen


def test_debug_mode_never_awaited_coroutine_warning_has_origin(loop):
    loop.set_debug(True)

    async def forgotten():
        pass

    def drop_coroutine():
        forgotten()

    async def main():
        drop_coroutine()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop.run_until_complete(main())
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    matching = [m for m in messages if "was never awaited" in m]
    assert len(matching) == 1, messages
    assert "forgotten" in matching[0]
    assert "Coroutine created at" in matching[0]
    assert "drop_coroutine" in matching[0]


def test_run_restores_coroutine_origin_tracking_depth(loop):
    before = sys.get_coroutine_origin_tracking_depth()
    loop.set_debug(True)

    async def main():
        return sys.get_coroutine_origin_tracking_depth()

    inside = loop.run_until_complete(main())
    assert inside > 0
    assert sys.get_coroutine_origin_tracking_depth() == before


def test_never_awaited_coroutine_in_subprocess_reports_origin(loop_name):
    code = f"""
        import asyncio
        import {loop_name}

        async def forgotten():
            pass

        async def main():
            forgotten()

        loop = {loop_name}.new_event_loop()
        loop.set_debug(True)
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
    """
    result = _run_python(code, args=("-W", "default"))
    assert result.returncode == 0, result.stderr
    assert "was never awaited" in result.stderr
    assert "Coroutine created at" in result.stderr


def test_task_repr_contains_name_in_debug_mode(loop):
    loop.set_debug(True)

    async def named():
        await asyncio.sleep(0)

    task = loop.create_task(named(), name="debug-task")
    assert "debug-task" in repr(task)
    loop.run_until_complete(task)


def test_debug_mode_cancelled_handle_repr_says_cancelled(loop):
    loop.set_debug(True)
    handle = loop.call_soon(print)
    handle.cancel()
    text = repr(handle)
    assert "cancelled" in text
    assert "created at" in text
    _run_once(loop)


def test_debug_mode_cancelled_timer_handle_repr_says_cancelled(loop):
    loop.set_debug(True)
    handle = loop.call_later(10, print)
    handle.cancel()
    text = repr(handle)
    assert "cancelled" in text
    assert "created at" in text
