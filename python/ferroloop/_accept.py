"""Accepting a server's plain (non-TLS) connections without a task per connection.

CPython's selector loop accepts each connection in the listening socket's reader and then runs
`_accept_connection2()` as a task: one `Task`, coroutine, frame and waiter future per
connection, only to await a waiter that a plain transport resolves right after
`connection_made()`. The task adds a loop turn to every accept, and at a burst of thousands of
connections its short-lived objects interleave in memory with the connections' long-lived ones,
leaving the allocator's pools fragmented: the resident size per idle connection then varied by
up to 25% from run to run.

Here a plain connection's protocol and transport are made directly in the reader, each in its own
copy of the context, as the task would have run them (a context variable the protocol factory
sets stays with that connection). What the task observed is kept: `SystemExit` and
`KeyboardInterrupt` propagate, other errors reach the exception handler in debug mode only (with
the same message); `accept()` errors are handled as CPython's reader handles them (back off on
exhausted resources, raise otherwise). TLS connections still go through CPython's task: it awaits
the handshake. Two differences remain, the same as with uvloop: the protocol factory runs with no
current task (`asyncio.current_task()` is None there), and `connection_made()` comes one loop turn
sooner.
"""

from __future__ import annotations

import contextvars
import errno
import socket
from asyncio import base_events, constants, protocols, selector_events, trsock
from asyncio.log import logger
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

    from .loop import Loop

# accept() errors after which asyncio backs off and retries instead of raising.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_stdlib_accept_connection = selector_events.BaseSelectorEventLoop._accept_connection  # type: ignore[attr-defined]


class DirectAccept:
    """The listening socket's reader of `create_server()`/`create_unix_server()` servers."""

    __slots__ = ()

    def _accept_connection(
        self,
        protocol_factory: Callable[[], protocols.BaseProtocol],
        sock: socket.socket,
        sslcontext: ssl.SSLContext | None = None,
        server: base_events.Server | None = None,
        backlog: int = 100,
        ssl_handshake_timeout: float = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> None:
        loop: Loop = self  # type: ignore[assignment]
        if sslcontext:
            _stdlib_accept_connection(
                loop, protocol_factory, sock, sslcontext, server, backlog, ssl_handshake_timeout, ssl_shutdown_timeout
            )
            return
        # As CPython: at most `backlog` connections per readiness, so one busy listener cannot
        # starve the rest of the loop.
        for _ in range(backlog):
            try:
                conn, addr = sock.accept()
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise  # the loop reports it to the exception handler, as asyncio's does
                # Linux keeps reporting the listener readable: stop watching it for a while.
                # (CPython's loop also goes on calling accept() up to `backlog` times, reporting
                # each failure; one report and one retry timer are enough.)
                loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": exc,
                        "socket": trsock.TransportSocket(sock),
                    }
                )
                loop._remove_reader(sock.fileno())
                loop.call_later(
                    constants.ACCEPT_RETRY_DELAY,
                    loop._start_serving,  # type: ignore[attr-defined]
                    protocol_factory,
                    sock,
                    sslcontext,
                    server,
                    backlog,
                    ssl_handshake_timeout,
                    ssl_shutdown_timeout,
                )
                return
            if loop._debug:
                logger.debug("%r got a new connection from %r: %r", server, addr, conn)
            contextvars.copy_context().run(_start_connection, loop, protocol_factory, conn, addr, server)


def _start_connection(
    loop: Loop,
    protocol_factory: Callable[[], protocols.BaseProtocol],
    conn: socket.socket,
    addr: Any,
    server: base_events.Server | None,
) -> None:
    protocol = None
    transport = None
    try:
        protocol = protocol_factory()
        transport = loop._make_socket_transport(conn, protocol, extra={"peername": addr}, server=server)
    except (SystemExit, KeyboardInterrupt):
        if transport is None:
            conn.close()
        raise
    except BaseException as exc:
        # CPython's task leaves the socket to the garbage collector here (with a ResourceWarning);
        # nothing else refers to it, so close it now.
        if transport is None:
            conn.close()
        if loop._debug:
            context: dict[str, Any] = {
                "message": "Error on transport creation for incoming connection",
                "exception": exc,
            }
            if protocol is not None:
                context["protocol"] = protocol
            if transport is not None:
                context["transport"] = transport
            loop.call_exception_handler(context)
