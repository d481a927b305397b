"""ferroloop's native transports, as the `asyncio.Transport` objects protocols see.

Each transport here is a thin Python object around a native core (`_ferroloop.SocketCore` for
sockets, `_ferroloop.PipeCore` for pipes) that
does the per-read and per-write work: syscalls, buffering, flow control and the close sequence.
The Python object exists because protocols, CPython's own helpers and libraries check
`isinstance(transport, asyncio.Transport)` (and CPython's sendfile fallback checks for its
flow-control base class), and a native class cannot derive from those Python classes. What is
per connection and rarely used (extra info, `repr`, the unclosed-transport warning) stays here.

`NativeTransports` is the loop mixin that makes CPython's connection code (`create_connection`,
`create_server`, `create_datagram_endpoint`, `start_tls`, ...) build these transports instead of
its own.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import warnings
from asyncio import base_events, constants, futures, protocols, sslproto, transports, trsock
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from . import _ferroloop
from ._tls import TlsProtocol
from ._tls import start_tls as _start_tls

if TYPE_CHECKING:
    import ssl

    from .loop import Loop


# The largest water mark the native cores store; a larger one (or infinity) is never reached.
_MAX_MARK = 2**63 - 1


def _water_marks(high: float | None, low: float | None) -> tuple[int, int]:
    """asyncio's defaults and checks for `set_write_buffer_limits()`. asyncio takes any real
    numbers; buffer sizes are whole, so a mark rounded down (and capped) compares the same."""
    if high is None:
        high = 64 * 1024 if low is None else 4 * low
    if low is None:
        low = high // 4
    if not high >= low >= 0:
        raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
    return int(min(high, _MAX_MARK)), int(min(low, _MAX_MARK))


# Addresses are kept per connection as extra info, and a server's connections mostly share their
# local address and their peers' hosts: sharing equal values saves a tuple, a str and an int per
# connection (most of what an idle connection costs on the Python side). Bounded, so that a
# server with many local addresses cannot grow it without limit.
_SHARED_ADDRESSES: dict[Any, Any] = {}
_SHARED_ADDRESSES_MAX = 256


# The extra info a socket transport makes only when asked (see `get_extra_info`).
_LAZY_EXTRA = frozenset({"socket", "sockname", "peername"})


def _shared_address(address: Any) -> Any:
    """An equal address object already in use, if there is one (the local side of a socket)."""
    shared = _SHARED_ADDRESSES.get(address)
    if shared is not None:
        return shared
    if len(_SHARED_ADDRESSES) >= _SHARED_ADDRESSES_MAX:
        _SHARED_ADDRESSES.clear()
    try:
        _SHARED_ADDRESSES[address] = address
    except TypeError:  # an unhashable address from an unusual family: keep it as it is
        pass
    return address


def _peer_address(address: Any) -> Any:
    """The peer's address with its host string interned (peers' ports differ, their hosts
    rarely do)."""
    if type(address) is tuple and address and type(address[0]) is str:
        return (sys.intern(address[0]), *address[1:])
    return address


class _NativeTransport(transports.BaseTransport):
    """What every transport around a native core shares: the protocol, closing, the
    unclosed-transport warning, and the private attributes CPython's helpers read.

    The socket transports keep their state in slots (asyncio's base classes declare `__slots__`,
    and so do these): an idle connection costs less. They still have an instance `__dict__`, as
    asyncio's transports do, which stays unmade until code hangs an attribute on a transport or
    patches one of its methods. The slots are declared by the concrete classes, below
    `_FlowControlMixin`, whose own slots would otherwise clash with them."""

    __slots__ = ()

    _extra: dict[str, Any]
    _core: _ferroloop.SocketCore | _ferroloop.PipeCore
    _fatal_message = "Fatal error on transport"

    def _owned(self) -> Any:
        """The socket or pipe this transport closes when done (None once closed)."""
        raise NotImplementedError

    def _repr_head(self, fd: int) -> tuple[list[str], bool]:
        """asyncio's `repr` start: class, closed/closing, fd; and whether the loop can still say
        what the fd is watched for (the transport is open and its loop too)."""
        info = [type(self).__name__]
        core = getattr(self, "_core", None)
        open_ = core is not None and self._owned() is not None
        if core is None or not open_:
            info.append("closed")
        elif core._closing_flag():  # without sending held writes: a repr changes nothing
            info.append("closing")
        info.append(f"fd={fd}")
        loop = core._loop if core is not None else None
        return info, open_ and loop is not None and not loop.is_closed()

    def _start(
        self,
        loop: Loop,
        protocol: protocols.BaseProtocol,
        waiter: futures.Future[None] | None,
        start_reading: bool = True,
    ) -> None:
        self._core.set_protocol(protocol)
        loop.call_soon(protocol.connection_made, self)
        # Reading (or watching for a vanished reader) starts only once connection_made() has run.
        if start_reading:
            loop.call_soon(self._core._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)  # type: ignore[attr-defined]

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        owned = self._owned() if getattr(self, "_core", None) is not None else None
        if owned is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            owned.close()

    def get_protocol(self) -> protocols.BaseProtocol:
        # None once the connection is lost, as with asyncio's transports.
        return cast("protocols.BaseProtocol", self._core.get_protocol())

    def set_protocol(self, protocol: protocols.BaseProtocol) -> None:
        self._core.set_protocol(protocol)

    def is_closing(self) -> bool:
        return self._core.is_closing()

    def close(self) -> None:
        self._core.close()

    @property
    def _loop(self) -> Loop | None:
        return cast("Loop | None", self._core._loop)

    @property
    def _protocol(self) -> protocols.BaseProtocol | None:
        return self._core.get_protocol()

    @property
    def _closing(self) -> bool:
        return self._core.is_closing()

    def _fatal_error(self, exc: BaseException, message: str | None = None) -> None:
        self._core._fatal_error(exc, message or self._fatal_message)


class _ReadSide(_NativeTransport):
    """The read half every reading transport shares: pausing and resuming."""

    __slots__ = ()

    def is_reading(self) -> bool:
        return self._core.is_reading()

    def pause_reading(self) -> None:
        self._core.pause_reading()

    def resume_reading(self) -> None:
        self._core.resume_reading()


class _WriteSide(_NativeTransport):
    """The write half every writing transport shares: the buffer, its water marks, abort."""

    __slots__ = ()

    _core: _ferroloop.SocketCore | _ferroloop.PipeCore

    def abort(self) -> None:
        self._core.abort()

    def get_write_buffer_size(self) -> int:
        return self._core.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._core.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: float | None = None, low: float | None = None) -> None:
        self._core._set_write_buffer_limits(*_water_marks(high, low))

    @property
    def _protocol_paused(self) -> bool:
        return self._core._protocol_paused

    @property
    def _conn_lost(self) -> int:
        return self._core._conn_lost


class _CoreTransport(_ReadSide, _WriteSide, transports._FlowControlMixin):
    """What the socket transports share: reading, flow control, and the socket's extra info."""

    __slots__ = (
        "__dict__",
        "__weakref__",
        "_core",
        "_extra_dict",
        "_peername",
        "_sock_fd",
        "_socket",
        "_sockname",
        "_trsock",
    )

    _core: _ferroloop.SocketCore

    # Extra info: "socket", "sockname" and "peername", all a plain connection has, live in slots
    # and the TransportSocket is made on first request. asyncio keeps them in the `_extra` dict,
    # which (with its TransportSocket) was the largest part of what an idle connection cost.
    # The dict is made only when there is more to keep, or when code reads asyncio's private
    # `_extra`; from then on it is the one source of truth, as in asyncio.

    def _setup(self, loop: Loop, sock: socket.socket, extra: dict[str, Any] | None) -> None:
        # _FlowControlMixin.__init__ is skipped on purpose: the native core keeps the water marks.
        self._socket = sock
        self._trsock: trsock.TransportSocket | None = None
        self._extra_dict: dict[str, Any] | None = None
        try:
            self._sockname = _shared_address(sock.getsockname())
        except OSError:
            self._sockname = None
        if extra and "peername" in extra:
            peername = extra["peername"]
        else:
            try:
                peername = sock.getpeername()
            except OSError:
                peername = None
        self._peername = _peer_address(peername)
        if extra and extra.keys() != {"peername"}:
            self._extra_info_dict(extra)
        self._sock_fd = sock.fileno()

    def _transport_socket(self) -> trsock.TransportSocket:
        if self._trsock is None:
            self._trsock = trsock.TransportSocket(self._socket)
        return self._trsock

    def _extra_info_dict(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """asyncio's `_extra`, made from the slots (into `extra`, as asyncio fills the dict
        its caller passed) the first time something needs it."""
        if extra is None:
            extra = {}
        extra["socket"] = self._transport_socket()
        extra["sockname"] = self._sockname
        extra["peername"] = self._peername
        self._extra_dict = extra
        return extra

    @property  # a slot in asyncio's BaseTransport
    def _extra(self) -> dict[str, Any]:
        extra = self._extra_dict
        return self._extra_info_dict() if extra is None else extra

    @_extra.setter
    def _extra(self, value: dict[str, Any]) -> None:
        self._extra_dict = value

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        extra = self._extra_dict
        if extra is not None:
            return extra.get(name, default)
        # A set lookup, so an unhashable name raises TypeError as asyncio's dict lookup does.
        if name not in _LAZY_EXTRA:
            return default
        if name == "socket":
            return self._transport_socket()
        if name == "sockname":
            return self._sockname
        if name == "peername":
            return self._peername
        return default

    def _start(
        self,
        loop: Loop,
        protocol: protocols.BaseProtocol,
        waiter: futures.Future[None] | None,
        start_reading: bool = True,
    ) -> None:
        loop._transports[self._sock_fd] = self
        super()._start(loop, protocol, waiter, start_reading)

    def _owned(self) -> Any:
        return self._core._sock

    def __repr__(self) -> str:
        info, watched = self._repr_head(getattr(self, "_sock_fd", -1))
        if watched:
            core = self._core
            info.append("read=polling" if core._reader_installed else "read=idle")
            state = "polling" if core._writer_installed else "idle"
            info.append(f"write=<{state}, bufsize={core._unsent_size()}>")
        return "<{}>".format(" ".join(info))

    # -- what CPython's loop helpers (sendfile, start_tls) and tests read ------------------------

    @property
    def _sock(self) -> socket.socket | None:
        return self._core._sock

    @property
    def _server(self) -> base_events.Server | None:
        return self._core._server

    @property
    def _high_water(self) -> int:
        return self._core.get_write_buffer_limits()[1]

    @property
    def _low_water(self) -> int:
        return self._core.get_write_buffer_limits()[0]

    def _force_close(self, exc: BaseException | None) -> None:
        self._core._force_close(exc)


class SocketTransport(_CoreTransport):
    """A stream socket transport (TCP or Unix) whose reads, writes and buffering are native."""

    __slots__ = ()
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        protocol: protocols.BaseProtocol,
        waiter: futures.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
        server: base_events.Server | None = None,
    ) -> None:
        self._setup(loop, sock, extra)
        self._core = _ferroloop.SocketCore(loop, sock, self._sock_fd, self, server)
        if server is not None:
            server._attach()  # type: ignore[attr-defined]  # asyncio.Server's private API
        base_events._set_nodelay(sock)  # type: ignore[attr-defined]
        self._start(loop, protocol, waiter)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._core.write(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self._core.writelines(list_of_data)

    def write_eof(self) -> None:
        self._core.write_eof()

    def can_write_eof(self) -> bool:
        return True

    @property
    def _eof(self) -> bool:
        return self._core._eof

    def _make_empty_waiter(self) -> futures.Future[None]:
        return self._core._make_empty_waiter()

    def _reset_empty_waiter(self) -> None:
        self._core._reset_empty_waiter()


# `write` and `is_closing` run once per message or per `drain()`: native descriptors reach the
# core without a Python frame (the methods above remain the reference behaviour).
_ferroloop._install_socket_transport_methods(SocketTransport)


class DatagramTransport(_CoreTransport, transports.DatagramTransport):
    """A datagram endpoint (UDP or Unix datagram socket) whose sends and receives are native."""

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        protocol: protocols.BaseProtocol,
        address: Any = None,
        waiter: futures.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self._setup(loop, sock, extra)
        self._address = address
        self._core = _ferroloop.SocketCore(
            loop,
            sock,
            self._sock_fd,
            self,
            datagram=True,
            address=address,
            connected=bool(self._peername),
            family=int(sock.family),
        )
        self._start(loop, protocol, waiter)

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        self._core.sendto(data, addr)


def _pipe_fd(pipe: Any, message: str) -> int:
    """The pipe's fd, switched to non-blocking, after asyncio's check of what it is: a pipe
    (FIFO), a socket or a character device, in either direction; `message` is asyncio's error."""
    fileno: int = pipe.fileno()
    mode = os.fstat(fileno).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
        raise ValueError(message)
    os.set_blocking(fileno, False)
    return fileno


class _PipeTransport(_NativeTransport):
    """What both pipe directions share."""

    _core: _ferroloop.PipeCore
    _fatal_message = "Fatal error on pipe transport"

    def _owned(self) -> Any:
        return self._core._pipe

    def _open(self, loop: Loop, pipe: Any, extra: dict[str, Any] | None, writer: bool) -> None:
        transports.BaseTransport.__init__(self, extra)
        self._extra["pipe"] = pipe
        if writer:
            message = "Pipe transport is only for pipes, sockets and character devices"
        else:
            message = "Pipe transport is for pipes/sockets only."
        self._fileno = _pipe_fd(pipe, message)
        self._core = _ferroloop.PipeCore(loop, pipe, self._fileno, self, writer=writer)

    def __repr__(self) -> str:
        info, watched = self._repr_head(getattr(self, "_fileno", -1))
        core = getattr(self, "_core", None)
        if watched and core is not None:
            writer = isinstance(self, WritePipeTransport)
            polling = core._writer_installed if writer else core._reader_installed
            info.append("polling" if polling else "idle")
            if writer:
                info.append(f"bufsize={core.get_write_buffer_size()}")
        elif core is not None and core._pipe is not None:
            info.append("open")
        else:
            info.append("closed")
        return "<{}>".format(" ".join(info))

    @property
    def _pipe(self) -> Any:
        return self._core._pipe

    @_pipe.setter
    def _pipe(self, pipe: Any) -> None:
        # Tests (CPython's among them) forget a pipe they closed themselves this way.
        self._core._pipe = pipe


class ReadPipeTransport(_PipeTransport, _ReadSide, transports.ReadTransport):
    """The read end of a pipe, FIFO, socket or character device, read natively."""

    max_size = 256 * 1024

    def __init__(
        self,
        loop: Loop,
        pipe: Any,
        protocol: protocols.BaseProtocol,
        waiter: futures.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self._open(loop, pipe, extra, writer=False)
        self._start(loop, protocol, waiter)


class WritePipeTransport(_PipeTransport, _WriteSide, transports._FlowControlMixin, transports.WriteTransport):
    """The write end of a pipe, FIFO, socket or character device, written natively."""

    _core: _ferroloop.PipeCore

    def __init__(
        self,
        loop: Loop,
        pipe: Any,
        protocol: protocols.BaseProtocol,
        waiter: futures.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self._open(loop, pipe, extra, writer=True)
        # As for sockets: `write` bound straight to the core, no Python frame per write.
        self.write = self._core.write  # type: ignore[method-assign]
        mode = os.fstat(self._fileno).st_mode
        # Only pipes and sockets turn readable when their reader goes away; a character device
        # is never watched for it (as with asyncio).
        watch_peer = stat.S_ISSOCK(mode) or (stat.S_ISFIFO(mode) and not sys.platform.startswith("aix"))
        self._start(loop, protocol, waiter, start_reading=watch_peer)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._core.write(data)

    def write_eof(self) -> None:
        self._core.write_eof()

    def can_write_eof(self) -> bool:
        return True


class NativeTransports:
    """The transport factories CPython's connection code calls on its loop."""

    __slots__ = ()

    def _make_socket_transport(
        self,
        sock: socket.socket,
        protocol: protocols.BaseProtocol,
        waiter: futures.Future[None] | None = None,
        *,
        extra: dict[str, Any] | None = None,
        server: base_events.Server | None = None,
    ) -> SocketTransport:
        return SocketTransport(self, sock, protocol, waiter, extra, server)  # type: ignore[arg-type]

    def _make_datagram_transport(
        self,
        sock: socket.socket,
        protocol: protocols.BaseProtocol,
        address: Any = None,
        waiter: futures.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> DatagramTransport:
        return DatagramTransport(self, sock, protocol, address, waiter, extra)  # type: ignore[arg-type]

    def _make_read_pipe_transport(
        self,
        pipe: Any,
        protocol: protocols.BaseProtocol,
        waiter: futures.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ReadPipeTransport:
        return ReadPipeTransport(self, pipe, protocol, waiter, extra)  # type: ignore[arg-type]

    def _make_write_pipe_transport(
        self,
        pipe: Any,
        protocol: protocols.BaseProtocol,
        waiter: futures.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> WritePipeTransport:
        return WritePipeTransport(self, pipe, protocol, waiter, extra)  # type: ignore[arg-type]

    def _make_ssl_transport(
        self,
        rawsock: socket.socket,
        protocol: protocols.BaseProtocol,
        sslcontext: ssl.SSLContext,
        waiter: futures.Future[None] | None = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: dict[str, Any] | None = None,
        server: base_events.Server | None = None,
        ssl_handshake_timeout: float = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> transports.Transport:
        # TLS is CPython's own SSLProtocol (the user's SSLContext, its memory BIOs) on top of a
        # native socket transport; from 3.11 on, its subclass with cheaper reads (`_tls.py`).
        app_waiter = cast("futures.Future[Any]", waiter)
        if sys.version_info >= (3, 11):
            ssl_protocol = TlsProtocol(
                self,  # type: ignore[arg-type]
                protocol,
                sslcontext,
                app_waiter,
                server_side,
                server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,  # type: ignore[arg-type]  # typeshed: int
                ssl_shutdown_timeout=ssl_shutdown_timeout,
            )
        else:  # untested here: Python 3.9 and 3.10 have no shutdown timeout
            ssl_protocol = sslproto.SSLProtocol(
                self,  # type: ignore[arg-type]
                protocol,
                sslcontext,
                app_waiter,
                server_side,
                server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
            )
        SocketTransport(self, rawsock, ssl_protocol, extra=extra, server=server)  # type: ignore[arg-type]
        return ssl_protocol._app_transport

    if sys.version_info >= (3, 11):
        # Upgrades go to ferroloop's TLS protocol too (asyncio's own steps otherwise).
        start_tls = _start_tls
