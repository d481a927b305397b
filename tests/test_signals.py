"""Unix signal handling: add_signal_handler / remove_signal_handler, and Ctrl-C (SIGINT).

The in-process tests run on ferroloop and on the stdlib asyncio loop (the oracle) through the
``loop`` fixture and only use SIGUSR1/SIGUSR2, whose dispositions are restored afterwards. The
SIGINT tests run a small program in a child interpreter, so an interrupted or wedged loop cannot
take the test session down with it.
"""

import asyncio
import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

WAIT = 5.0  # generous bound for a signal to be delivered to its handler

USER_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def run(loop, aw, timeout=WAIT):
    return loop.run_until_complete(asyncio.wait_for(aw, timeout))


@pytest.fixture(autouse=True)
def _restore_signal_dispositions():
    saved = {sig: signal.getsignal(sig) for sig in USER_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def send_to_self(sig: int) -> None:
    os.kill(os.getpid(), sig)


# --------------------------------------------------------------------------
# add_signal_handler / remove_signal_handler
# --------------------------------------------------------------------------


def test_handler_runs_in_loop_with_args(loop):
    done = loop.create_future()
    marker = object()

    def on_signal(*args):
        done.set_result((args, asyncio.get_running_loop(), threading.current_thread()))

    loop.add_signal_handler(signal.SIGUSR1, on_signal, "usr1", 42, marker)
    loop.call_soon(send_to_self, signal.SIGUSR1)
    args, running_loop, thread = run(loop, done)
    assert args == ("usr1", 42, marker)
    assert running_loop is loop
    assert thread is threading.main_thread()
    assert loop.remove_signal_handler(signal.SIGUSR1) is True


def test_handler_called_for_each_signal(loop):
    calls = []
    events = [loop.create_future() for _ in range(3)]

    def on_signal():
        events[len(calls)].set_result(None)
        calls.append(1)

    async def main():
        loop.add_signal_handler(signal.SIGUSR1, on_signal)
        for event in events:
            send_to_self(signal.SIGUSR1)
            await event  # wait for each delivery, so that none are coalesced

    run(loop, main())
    assert len(calls) == 3
    loop.remove_signal_handler(signal.SIGUSR1)


def test_two_signals_two_handlers(loop):
    got = []
    done = loop.create_future()

    def on_signal(name):
        got.append(name)
        if len(got) == 2:
            done.set_result(None)

    loop.add_signal_handler(signal.SIGUSR1, on_signal, "usr1")
    loop.add_signal_handler(signal.SIGUSR2, on_signal, "usr2")

    async def main():
        send_to_self(signal.SIGUSR1)
        await asyncio.sleep(0.01)
        send_to_self(signal.SIGUSR2)
        await done

    run(loop, main())
    assert sorted(got) == ["usr1", "usr2"]
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR2) is True


def test_signal_sent_before_loop_runs_is_handled_when_it_runs(loop):
    done = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, done.set_result, "delivered late")
    send_to_self(signal.SIGUSR1)  # the loop is not running yet
    assert run(loop, done) == "delivered late"
    loop.remove_signal_handler(signal.SIGUSR1)


def test_signal_wakes_idle_loop(loop):
    # The loop is blocked waiting for a far-away timer; the signal alone must wake it.
    done = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, done.set_result, "woken")
    timer = threading.Timer(0.05, send_to_self, (signal.SIGUSR1,))
    timer.start()
    try:
        start = time.monotonic()
        assert run(loop, done) == "woken"
        assert time.monotonic() - start < WAIT
    finally:
        timer.join()
    loop.remove_signal_handler(signal.SIGUSR1)


def test_replacing_handler(loop):
    calls = []
    done = loop.create_future()

    def second():
        calls.append("second")
        done.set_result(None)

    loop.add_signal_handler(signal.SIGUSR1, calls.append, "first")
    loop.add_signal_handler(signal.SIGUSR1, second)
    loop.call_soon(send_to_self, signal.SIGUSR1)
    run(loop, done)
    assert calls == ["second"]
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_remove_signal_handler_return_values(loop):
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    assert loop.remove_signal_handler(signal.SIGUSR2) is False
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_remove_restores_default_disposition(loop):
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    loop.remove_signal_handler(signal.SIGUSR1)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_close_removes_signal_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_handler_can_remove_itself(loop):
    calls = []
    done = loop.create_future()

    def once():
        calls.append(1)
        assert loop.remove_signal_handler(signal.SIGUSR2) is True
        done.set_result(None)

    loop.add_signal_handler(signal.SIGUSR2, once)
    loop.call_soon(send_to_self, signal.SIGUSR2)
    run(loop, done)
    assert calls == [1]


def test_handler_exception_goes_to_exception_handler(loop, handler_calls):
    done = loop.create_future()

    def failing():
        loop.call_soon(done.set_result, None)
        raise ZeroDivisionError("from a signal handler")

    loop.add_signal_handler(signal.SIGUSR1, failing)
    loop.call_soon(send_to_self, signal.SIGUSR1)
    run(loop, done)
    assert len(handler_calls) == 1
    assert isinstance(handler_calls[0]["exception"], ZeroDivisionError)
    loop.remove_signal_handler(signal.SIGUSR1)


# --------------------------------------------------------------------------
# invalid arguments
# --------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [0, -1, 1000])
def test_invalid_signal_number(loop, sig):
    with pytest.raises(ValueError):
        loop.add_signal_handler(sig, lambda: None)
    with pytest.raises(ValueError):
        loop.remove_signal_handler(sig)


@pytest.mark.parametrize("sig", ["SIGUSR1", 10.0, None])
def test_signal_must_be_an_int(loop, sig):
    with pytest.raises(TypeError):
        loop.add_signal_handler(sig, lambda: None)
    with pytest.raises(TypeError):
        loop.remove_signal_handler(sig)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
def test_uncatchable_signal(loop, sig):
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(sig, lambda: None)
    assert loop.remove_signal_handler(sig) is False


def test_coroutine_function_rejected(loop):
    async def handler():
        pass

    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, handler)
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_coroutine_object_rejected(loop):
    async def handler():
        pass

    coro = handler()
    try:
        with pytest.raises(TypeError):
            loop.add_signal_handler(signal.SIGUSR1, coro)
    finally:
        coro.close()
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


@pytest.mark.timeout(20)
def test_interrupt_tripped_by_a_callback_is_handled_before_the_loop_waits(loop):
    """`_thread.interrupt_main()` notes SIGINT without sending a signal, so nothing interrupts a
    poll that blocks afterwards: the pending handler must run before the loop waits."""
    import _thread

    # interrupt_main() does nothing while SIGINT is ignored, which it is in a process started in
    # the background by a non-interactive shell: install Python's handler for the test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        task = loop.create_task(asyncio.sleep(3600))
        loop.call_soon(_thread.interrupt_main)  # a C function: no Python code runs after it this turn
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(task)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            loop.run_until_complete(task)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_add_after_close_raises(loop):
    loop.close()
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_add_from_other_thread_raises_runtime_error(loop):
    # Python only lets the main thread install signal handlers.
    outcome = []

    def attempt():
        try:
            loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join()
    assert isinstance(outcome[0], RuntimeError)
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


# --------------------------------------------------------------------------
# Ctrl-C (SIGINT), in a child interpreter
# --------------------------------------------------------------------------

# The child restores Python's own SIGINT handler first: a test runner started in the background by a
# non-interactive shell inherits SIGINT as ignored, and so would the child.
PRELUDE = """\
import asyncio
import importlib
import signal
import sys
import time

signal.signal(signal.SIGINT, signal.default_int_handler)
mod = importlib.import_module(sys.argv[1])
"""

RUN_INTERRUPTED = """\
async def main():
    try:
        print("ready", flush=True)
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        print("main cancelled", flush=True)
        raise

mod.run(main())
print("not reached", flush=True)
"""

RUN_UNTIL_COMPLETE_INTERRUPTED = """\
loop = mod.new_event_loop()

async def sleeper():
    print("ready", flush=True)
    await asyncio.sleep(30)

task = loop.create_task(sleeper())
try:
    loop.run_until_complete(task)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
print("running:", loop.is_running(), "closed:", loop.is_closed(), "task done:", task.done())

async def cleanup():
    await asyncio.sleep(0.01)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return "cleanup ran, sleeper cancelled"

print(loop.run_until_complete(cleanup()))
loop.run_until_complete(loop.shutdown_asyncgens())
loop.close()
print("closed:", loop.is_closed())
"""

CALLBACK_INTERRUPTED = """\
loop = mod.new_event_loop()

def busy_callback():
    print("ready", flush=True)
    time.sleep(30)  # interrupted: KeyboardInterrupt is raised inside the callback

loop.call_soon(busy_callback)
try:
    loop.run_forever()
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
print("running:", loop.is_running())
print(loop.run_until_complete(asyncio.sleep(0.01, result="loop still usable")))
loop.close()
"""

SIGINT_HANDLER = """\
loop = mod.new_event_loop()

async def main():
    got = loop.create_future()
    loop.add_signal_handler(signal.SIGINT, got.set_result, "SIGINT handled by the loop")
    print("ready", flush=True)
    print(await asyncio.wait_for(got, 30), flush=True)
    print("removed:", loop.remove_signal_handler(signal.SIGINT))

loop.run_until_complete(main())
loop.close()
print("default handler back:", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""

STARTUP_TIMEOUT = 30.0  # interpreter + extension start-up on a busy machine
SETTLE = 0.2  # after "ready", let the child reach its blocking wait
EXIT_TIMEOUT = 10.0  # generous: an interrupted child exits in milliseconds


def interrupt_child(script: str, loop_name: str):
    """Run ``script`` in a child, send SIGINT once it printed "ready", return (rc, stdout, stderr, secs)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + script, loop_name],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    try:
        line = b""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([proc.stdout], [], [], max(remaining, 0))
            if not readable:
                pytest.fail("child never printed 'ready'")
            byte = os.read(proc.stdout.fileno(), 1)  # one byte at a time: read nothing past the line
            if not byte:
                _, err = proc.communicate(timeout=EXIT_TIMEOUT)
                pytest.fail(f"child exited before 'ready':\n{err.decode(errors='replace')}")
            line += byte
        assert line == b"ready\n"
        time.sleep(SETTLE)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"child still running {EXIT_TIMEOUT} s after SIGINT; stderr:\n{err.decode(errors='replace')}")
        return proc.returncode, out.decode(), err.decode(), time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_ctrl_c_interrupts_run(loop_name):
    rc, out, err, _ = interrupt_child(RUN_INTERRUPTED, loop_name)
    # The main task is cancelled, then KeyboardInterrupt escapes run() and, uncaught, makes the
    # interpreter print a traceback and die by SIGINT.
    assert out == "main cancelled\n", err
    assert err.rstrip().splitlines()[-1] == "KeyboardInterrupt", err
    assert "Traceback (most recent call last)" in err
    assert rc == -signal.SIGINT, err


def test_ctrl_c_interrupts_run_until_complete_and_loop_stays_usable(loop_name):
    rc, out, err, _ = interrupt_child(RUN_UNTIL_COMPLETE_INTERRUPTED, loop_name)
    assert rc == 0, err
    assert out.splitlines() == [
        "KeyboardInterrupt",
        "running: False closed: False task done: False",
        "cleanup ran, sleeper cancelled",
        "closed: True",
    ], err


def test_ctrl_c_inside_callback_propagates_out_of_run_forever(loop_name):
    rc, out, err, _ = interrupt_child(CALLBACK_INTERRUPTED, loop_name)
    assert rc == 0, err
    assert out.splitlines() == ["KeyboardInterrupt", "running: False", "loop still usable"], err


def test_sigint_handler_replaces_keyboard_interrupt(loop_name):
    rc, out, err, _ = interrupt_child(SIGINT_HANDLER, loop_name)
    assert rc == 0, err
    assert out.splitlines() == ["SIGINT handled by the loop", "removed: True", "default handler back: True"], err


def test_ctrl_c_while_blocked_in_poll_exits_promptly(loop_name):
    # Only a generous bound: the point is that the wait is interrupted at all, not how fast.
    rc, _, err, seconds = interrupt_child(RUN_INTERRUPTED, loop_name)
    assert rc == -signal.SIGINT, err
    assert seconds < EXIT_TIMEOUT / 2
