"""Bad arguments get the exception asyncio raises: loop methods, and the transport methods that
take an argument, are called with odd values on a fresh stdlib loop (the oracle) and a fresh
ferroloop loop, and the outcomes (the exception type, or none) must match, apart from the
differences the README lists as deliberate."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import tempfile
import warnings
from typing import Any, Callable

import ferroloop
import pytest

BAD_VALUES: list[Any] = [
    None,
    -1,
    0,
    2**70,
    -(2**70),
    2**40,
    "x",
    b"x",
    1.5,
    float("nan"),
    float("inf"),
    object(),
    [],
    True,
    lambda: None,
]


def _callback(*_args: object) -> None:
    pass


def _value_id(value: Any) -> str:
    return "<lambda>" if callable(value) and not isinstance(value, type) else repr(value)


# method -> how to call it with the bad value `v` on loop `lp` (and, for the sock_* calls, a
# connected non-blocking socket `s`).
CALLS: dict[str, Callable[..., Any]] = {
    "call_later(v, cb)": lambda lp, s, v: lp.call_later(v, _callback),
    "call_soon(cb, context=v)": lambda lp, s, v: lp.call_soon(_callback, context=v),
    "add_reader(v, cb)": lambda lp, s, v: lp.add_reader(v, _callback),
    "add_writer(v, cb)": lambda lp, s, v: lp.add_writer(v, _callback),
    "remove_reader(v)": lambda lp, s, v: lp.remove_reader(v),
    "remove_writer(v)": lambda lp, s, v: lp.remove_writer(v),
    "set_debug(v)": lambda lp, s, v: lp.set_debug(v),
    "set_exception_handler(v)": lambda lp, s, v: lp.set_exception_handler(v),
    "set_task_factory(v)": lambda lp, s, v: lp.set_task_factory(v),
    "create_task(v)": lambda lp, s, v: lp.create_task(v),
    "run_until_complete(v)": lambda lp, s, v: lp.run_until_complete(v),
    "run_in_executor(None, v)": lambda lp, s, v: lp.run_in_executor(None, v),
    "set_default_executor(v)": lambda lp, s, v: lp.set_default_executor(v),
    "add_signal_handler(v, cb)": lambda lp, s, v: lp.add_signal_handler(v, _callback),
    "remove_signal_handler(v)": lambda lp, s, v: lp.remove_signal_handler(v),
    "getaddrinfo(v, 80)": lambda lp, s, v: lp.getaddrinfo(v, 80),
    "getaddrinfo('127.0.0.1', v)": lambda lp, s, v: lp.getaddrinfo("127.0.0.1", v),
    "getnameinfo(v)": lambda lp, s, v: lp.getnameinfo(v),
    "sock_recv(v, 10)": lambda lp, s, v: lp.sock_recv(v, 10),
    "sock_sendall(v, b'x')": lambda lp, s, v: lp.sock_sendall(v, b"x"),
    "sock_accept(v)": lambda lp, s, v: lp.sock_accept(v),
    "sock_recv(s, v)": lambda lp, s, v: lp.sock_recv(s, v),
    "sock_recv_into(s, v)": lambda lp, s, v: lp.sock_recv_into(s, v),
    "sock_sendall(s, v)": lambda lp, s, v: lp.sock_sendall(s, v),
    "sock_recvfrom(s, v)": lambda lp, s, v: lp.sock_recvfrom(s, v),
    "sock_sendto(s, b'x', v)": lambda lp, s, v: lp.sock_sendto(s, b"x", v),
    "create_connection(P, v, 9)": lambda lp, s, v: lp.create_connection(asyncio.Protocol, v, 9),
    "create_connection(P, '127.0.0.1', v)": lambda lp, s, v: lp.create_connection(asyncio.Protocol, "127.0.0.1", v),
    "create_server(P, '127.0.0.1', v)": lambda lp, s, v: lp.create_server(asyncio.Protocol, "127.0.0.1", v),
    "create_datagram_endpoint(P, local_addr=v)": lambda lp, s, v: lp.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=v
    ),
    "subprocess_exec(P, v)": lambda lp, s, v: lp.subprocess_exec(asyncio.SubprocessProtocol, v),
}

# Deliberate differences (README, "Differences from asyncio"): ferroloop refuses at once what
# asyncio stores and fails on later, inside the loop.
DELIBERATE: dict[str, tuple[Callable[..., Any], Callable[[Any], bool]]] = {
    "call_soon(v)": (lambda lp, s, v: lp.call_soon(v), lambda v: not callable(v)),
    "call_at(v, cb)": (
        lambda lp, s, v: lp.call_at(v, _callback),
        lambda v: v is not None and not isinstance(v, (int, float)),
    ),
    "slow_callback_duration = v": (
        lambda lp, s, v: setattr(lp, "slow_callback_duration", v),
        lambda v: not isinstance(v, (int, float)),
    ),
}


async def _settle(result: Any) -> None:
    """Awaits what a call returned, if it is awaitable (half a second at most), then closes what
    the call made: a server, a connection, a handle or task."""
    if asyncio.isfuture(result) or asyncio.iscoroutine(result) or hasattr(result, "__await__"):
        result = await asyncio.wait_for(result, 0.5)
    await asyncio.sleep(0)
    if isinstance(result, asyncio.AbstractServer):
        result.close()
        await result.wait_closed()
    elif isinstance(result, tuple) and result and isinstance(result[0], asyncio.BaseTransport):
        result[0].close()
    elif isinstance(result, tuple) and result and isinstance(result[1], asyncio.StreamWriter):
        result[1].close()
    elif hasattr(result, "cancel"):
        result.cancel()


def _capture(attempt: Callable[[], object]) -> str:
    """The type name of the exception `attempt()` raises, or "ok"."""
    with warnings.catch_warnings():
        # Never-awaited coroutines and the like: the same on both loops, and not the point.
        warnings.simplefilter("ignore")
        try:
            attempt()
        except BaseException as exc:  # the exception type is the outcome
            return type(exc).__name__
        return "ok"


def _outcome(new_loop: Callable[[], asyncio.AbstractEventLoop], call: Callable[..., Any], value: Any) -> str:
    """The outcome of `call` (awaiting what it returns) on a fresh loop that is not running."""
    loop = new_loop()
    sock, peer = socket.socketpair()
    sock.setblocking(False)
    try:
        return _capture(lambda: loop.run_until_complete(_settle(call(loop, sock, value))))
    finally:
        sock.close()
        peer.close()
        with contextlib.suppress(Exception):
            loop.set_task_factory(None)
        _close(loop)


def _close(loop: asyncio.AbstractEventLoop) -> None:
    with contextlib.suppress(Exception):
        loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()


@pytest.mark.parametrize("method", list(CALLS))
def test_bad_argument_gets_the_exception_asyncio_raises(method):
    call = CALLS[method]
    mismatches = []
    for value in BAD_VALUES:
        expected = _outcome(asyncio.new_event_loop, call, value)
        got = _outcome(ferroloop.new_event_loop, call, value)
        if got != expected:
            mismatches.append(f"{method} with v={_value_id(value)}: asyncio {expected}, ferroloop {got}")
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize("method", list(DELIBERATE))
def test_deliberately_early_type_error_for_a_bad_argument(method):
    call, refused = DELIBERATE[method]
    mismatches = []
    for value in BAD_VALUES:
        expected = "TypeError" if refused(value) else _outcome(asyncio.new_event_loop, call, value)
        got = _outcome(ferroloop.new_event_loop, call, value)
        if got != expected:
            mismatches.append(f"{method} with v={_value_id(value)}: expected {expected}, ferroloop {got}")
    assert not mismatches, "\n".join(mismatches)


# -- calls on a running loop, with a transport and a socket to hand -----------------------------


async def _stream(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.BaseTransport, list[Any]]:
    sock, peer = socket.socketpair()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=sock)
    return transport, [peer]


async def _datagram(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.BaseTransport, list[Any]]:
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    return transport, []


async def _write_pipe(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.BaseTransport, list[Any]]:
    read_end, write_end = os.pipe()
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(write_end, "wb", 0))
    return transport, [os.fdopen(read_end, "rb", 0)]


async def _read_pipe(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.BaseTransport, list[Any]]:
    read_end, write_end = os.pipe()
    transport, _ = await loop.connect_read_pipe(asyncio.Protocol, os.fdopen(read_end, "rb", 0))
    return transport, [os.fdopen(write_end, "wb", 0)]


_FILES: list[Any] = []


def _a_file() -> Any:
    """A readable regular file of 1000 bytes, deleted once closed (by `_live_outcome`)."""
    file = tempfile.TemporaryFile()
    _FILES.append(file)
    file.write(b"x" * 1000)
    file.seek(0)
    return file


def _task(loop: asyncio.AbstractEventLoop, **kwargs: Any) -> asyncio.Task[None]:
    """`create_task(asyncio.sleep(0), **kwargs)`, closing the coroutine if that raises."""
    coro = asyncio.sleep(0)
    try:
        return loop.create_task(coro, **kwargs)
    except BaseException:
        coro.close()
        raise


# case -> (how to make the transport `tr`, how to call with the bad value `v`, given the loop `lp`,
# `tr` and a connected non-blocking socket `s`)
LIVE_CALLS: dict[str, tuple[Callable[..., Any], Callable[[Any, Any, Any, Any], Any]]] = {
    "stream.write(v)": (_stream, lambda lp, tr, s, v: tr.write(v)),
    "stream.writelines(v)": (_stream, lambda lp, tr, s, v: tr.writelines(v)),
    "stream.writelines([v])": (_stream, lambda lp, tr, s, v: tr.writelines([v])),
    "stream.set_write_buffer_limits(high=v)": (_stream, lambda lp, tr, s, v: tr.set_write_buffer_limits(high=v)),
    "stream.set_write_buffer_limits(low=v)": (_stream, lambda lp, tr, s, v: tr.set_write_buffer_limits(low=v)),
    "stream.set_write_buffer_limits(v, v)": (_stream, lambda lp, tr, s, v: tr.set_write_buffer_limits(v, v)),
    "stream.get_extra_info(v)": (_stream, lambda lp, tr, s, v: tr.get_extra_info(v)),
    "stream.set_protocol(v)": (_stream, lambda lp, tr, s, v: tr.set_protocol(v)),
    "datagram.sendto(v, addr)": (_datagram, lambda lp, tr, s, v: tr.sendto(v, ("127.0.0.1", 9))),
    "datagram.sendto(b'x', v)": (_datagram, lambda lp, tr, s, v: tr.sendto(b"x", v)),
    "datagram.set_write_buffer_limits(high=v)": (_datagram, lambda lp, tr, s, v: tr.set_write_buffer_limits(high=v)),
    "write_pipe.write(v)": (_write_pipe, lambda lp, tr, s, v: tr.write(v)),
    "write_pipe.writelines([v])": (_write_pipe, lambda lp, tr, s, v: tr.writelines([v])),
    "write_pipe.set_write_buffer_limits(high=v)": (
        _write_pipe,
        lambda lp, tr, s, v: tr.set_write_buffer_limits(high=v),
    ),
    "read_pipe.get_extra_info(v)": (_read_pipe, lambda lp, tr, s, v: tr.get_extra_info(v)),
    "sendfile(tr, v)": (_stream, lambda lp, tr, s, v: lp.sendfile(tr, v)),
    "sendfile(tr, file, offset=v)": (_stream, lambda lp, tr, s, v: lp.sendfile(tr, _a_file(), offset=v)),
    "sendfile(tr, file, count=v)": (_stream, lambda lp, tr, s, v: lp.sendfile(tr, _a_file(), count=v)),
    "sendfile(v, file)": (_stream, lambda lp, tr, s, v: lp.sendfile(v, _a_file())),
    "sock_sendfile(s, v)": (_stream, lambda lp, tr, s, v: lp.sock_sendfile(s, v)),
    "sock_sendfile(s, file, v)": (_stream, lambda lp, tr, s, v: lp.sock_sendfile(s, _a_file(), v)),
    "sock_sendfile(s, file, 0, v)": (_stream, lambda lp, tr, s, v: lp.sock_sendfile(s, _a_file(), 0, v)),
    "start_tls(tr, P, v)": (_stream, lambda lp, tr, s, v: lp.start_tls(tr, asyncio.Protocol(), v)),
    "start_tls(v, P, ctx)": (
        _stream,
        lambda lp, tr, s, v: lp.start_tls(v, asyncio.Protocol(), ssl.create_default_context()),
    ),
    "create_unix_connection(P, v)": (_stream, lambda lp, tr, s, v: lp.create_unix_connection(asyncio.Protocol, v)),
    "create_unix_server(P, v)": (_stream, lambda lp, tr, s, v: lp.create_unix_server(asyncio.Protocol, v)),
    "subprocess_shell(P, v)": (_stream, lambda lp, tr, s, v: lp.subprocess_shell(asyncio.SubprocessProtocol, v)),
    "connect_accepted_socket(P, v)": (
        _stream,
        lambda lp, tr, s, v: lp.connect_accepted_socket(asyncio.Protocol, v),
    ),
    "create_connection(P, sock=v)": (_stream, lambda lp, tr, s, v: lp.create_connection(asyncio.Protocol, sock=v)),
    "create_server(P, sock=v)": (_stream, lambda lp, tr, s, v: lp.create_server(asyncio.Protocol, sock=v)),
    "run_in_executor(v, func)": (_stream, lambda lp, tr, s, v: lp.run_in_executor(v, print)),
    "getaddrinfo(host, 80, family=v)": (_stream, lambda lp, tr, s, v: lp.getaddrinfo("127.0.0.1", 80, family=v)),
    "add_signal_handler(SIGUSR1, v)": (_stream, lambda lp, tr, s, v: lp.add_signal_handler(signal.SIGUSR1, v)),
    "create_task(coro, name=v)": (_stream, lambda lp, tr, s, v: _task(lp, name=v)),
    "call_later(0, cb, context=v)": (_stream, lambda lp, tr, s, v: lp.call_later(0, _callback, context=v)),
    "open_connection(sock=s, limit=v)": (_stream, lambda lp, tr, s, v: asyncio.open_connection(sock=s, limit=v)),
    "sock_recvfrom_into(s, buf, v)": (_stream, lambda lp, tr, s, v: lp.sock_recvfrom_into(s, bytearray(4), v)),
    "sock_recv_into(s, v)": (_stream, lambda lp, tr, s, v: lp.sock_recv_into(s, v)),
}


def _live_outcome(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
    make: Callable[..., Any],
    call: Callable[[Any, Any, Any, Any], Any],
    value: Any,
) -> str:
    """The outcome of `call` (awaiting what it returns) inside a fresh running loop, with a fresh
    transport and socket pair."""
    loop = new_loop()
    asyncio.set_event_loop(loop)  # for asyncio.open_connection
    transport, others = loop.run_until_complete(make(loop))
    sock, peer = socket.socketpair()
    sock.setblocking(False)

    async def attempt() -> None:
        await _settle(call(loop, transport, sock, value))

    try:
        return _capture(lambda: loop.run_until_complete(asyncio.wait_for(attempt(), 5)))
    finally:
        transport.close()
        sock.close()
        peer.close()
        loop.run_until_complete(asyncio.sleep(0.01))
        for other in [*others, *_FILES]:
            other.close()
        _FILES.clear()
        _close(loop)
        asyncio.set_event_loop(None)


@pytest.mark.parametrize("case", list(LIVE_CALLS))
def test_bad_argument_on_a_running_loop_gets_the_exception_asyncio_raises(case):
    make, call = LIVE_CALLS[case]
    mismatches = []
    for value in BAD_VALUES:
        expected = _live_outcome(asyncio.new_event_loop, make, call, value)
        got = _live_outcome(ferroloop.new_event_loop, make, call, value)
        if got != expected:
            mismatches.append(f"{case} with v={_value_id(value)}: asyncio {expected}, ferroloop {got}")
    assert not mismatches, "\n".join(mismatches)
