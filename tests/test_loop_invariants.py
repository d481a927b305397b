"""Behaviours pinned after a review of the engine: each test names the mistake it guards against.
Every test runs on ferroloop and on asyncio (the oracle) unless it says why not."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import pytest


def _boom(tag):
    raise ValueError(tag)


def test_exception_handler_sees_the_handle_with_its_callback(loop, handler_calls):
    loop.call_soon(_boom, "x")
    loop.run_until_complete(asyncio.sleep(0))
    (context,) = handler_calls
    assert "_boom('x')" in repr(context["handle"])
    assert context["handle"]._callback is _boom


def test_callbacks_after_a_failing_slow_callback_report_stay_queued(loop, caplog):
    """In debug mode the slow-callback warning formats the handle; if that raises, the exception
    leaves run_forever and the callbacks not yet run stay queued for the next run."""

    class SlowWithBadRepr:
        def __call__(self):
            import time

            time.sleep(0.02)

        def __repr__(self):
            raise RuntimeError("no repr")

    loop.set_debug(True)
    loop.slow_callback_duration = 0.001
    out = []
    loop.call_soon(SlowWithBadRepr())
    loop.call_soon(out.append, "second")
    with caplog.at_level(logging.CRITICAL, logger="asyncio"), pytest.raises(RuntimeError, match="no repr"):
        loop.run_forever()
    assert out == []
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ["second"]


def test_sock_recv_accepts_a_blocking_socket_outside_debug_mode(loop):
    a, b = socket.socketpair()
    try:
        loop.set_debug(False)
        b.send(b"hi")
        assert loop.run_until_complete(loop.sock_recv(a, 10)) == b"hi"
    finally:
        a.close()
        b.close()


def test_set_debug_accepts_any_truthy_value(loop):
    loop.set_debug(1)
    assert loop.get_debug()
    loop.set_debug(0)
    assert not loop.get_debug()


def test_replacing_a_task_factory_whose_finalizer_uses_the_loop(loop):
    ran = []

    class Factory:
        def __call__(self, loop, coro, **kwargs):
            return asyncio.Task(coro, loop=loop, **kwargs)

        def __del__(self):
            loop.call_soon(ran.append, "finalized")

    loop.set_task_factory(Factory())
    loop.set_task_factory(None)
    loop.run_until_complete(asyncio.sleep(0))
    assert ran == ["finalized"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_its_own_poller_despite_a_stale_fd(loop, request, is_ferroloop):
    """An fd closed without remove_reader() must not stop the child from getting its own epoll
    set (the child's watchers would otherwise change the parent's)."""
    if not is_ferroloop:
        request.applymarker(
            pytest.mark.xfail(reason="asyncio's epoll selector shares its interest set with forked children")
        )
    stale_r, stale_w = socket.socketpair()
    loop.add_reader(stale_r.fileno(), lambda: None)
    stale_fd = stale_r.fileno()
    stale_r.close()
    rsock, wsock = socket.socketpair()
    got = []
    loop.add_reader(rsock.fileno(), lambda: got.append(rsock.recv(100)))
    pid = os.fork()
    if pid == 0:
        try:
            loop.remove_reader(rsock.fileno())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    try:
        wsock.send(b"still watched")
        deadline = loop.time() + 2
        while not got and loop.time() < deadline:
            loop.run_until_complete(asyncio.sleep(0.01))
        assert got == [b"still watched"]
    finally:
        loop.remove_reader(rsock.fileno())
        loop.remove_reader(stale_fd)
        for s in (rsock, wsock, stale_w):
            s.close()


def test_reader_added_during_a_busy_turn_runs_on_the_next_turn(loop):
    """With no fd watched, a turn has no I/O to look at; once a callback adds a reader, the
    next turn must look (and find the data already waiting)."""
    rsock, wsock = socket.socketpair()
    wsock.send(b"waiting")
    events = []
    turn = 0

    def tick():
        nonlocal turn
        turn += 1
        events.append(("tick", turn))
        if turn == 1:
            loop.add_reader(rsock, lambda: events.append(("read", rsock.recv(100))))
        if turn < 4:
            loop.call_soon(tick)
        else:
            loop.stop()

    loop.call_soon(tick)
    try:
        loop.run_forever()
    finally:
        loop.remove_reader(rsock)
        rsock.close()
        wsock.close()
    assert events[:3] == [("tick", 1), ("tick", 2), ("read", b"waiting")]
