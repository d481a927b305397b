"""TLS for ferroloop's transports: CPython's `SSLProtocol`, reading without an exception per read.

`asyncio.sslproto.SSLProtocol` decrypts what arrived by calling `SSLObject.read()` until it
raises `SSLWantReadError`. With OpenSSL 3 that final exception costs about half as much as
encrypting and decrypting a 1 KiB message (`python bench/tls_read_cost.py`: 2.0-3.4 us against
3.7-7.2 us on the development VM): `_ssl` builds it from OpenSSL's error queue and formats its
message. Every batch of records received pays it once.

`TlsProtocol` stops reading when nothing is left that could be decrypted: no bytes waiting in the
incoming memory BIO and no decrypted bytes buffered in the `SSLObject`. The `ssl` module never
turns on OpenSSL's read-ahead, so the record layer holds at most the start of an incomplete
record, which a further read could not finish either: the read that would have raised is exactly
the one skipped. Everything else (states, handshake, shutdown, flow control, errors) is
CPython's own code, and the user's `ssl.SSLContext` is used unchanged. `start_tls()` is here too,
so that connections upgraded to TLS get the same protocol.

The rest of CPython's protocol runs unchanged, with one difference in where it looks up its
states. Its methods compare `self._state` with members of `SSLProtocolState` about ten times per
message echoed, and on 3.11 each such lookup costs about 130 ns: `EnumType` defines
`__getattr__`, which sends every attribute lookup on an enum class through the slow path of
`type.__getattribute__`. `TlsProtocol` runs the same functions (their code objects, unchanged)
over a copy of `asyncio.sslproto`'s namespace in which the two state enums are plain namespaces
holding the same members. A user who assigns to an attribute of `asyncio.sslproto` after
ferroloop is imported does not reach this copy.

Used on Python 3.11 and later, whose `SSLProtocol` has the read methods overridden here and
compares states this way (tested on 3.11 only); earlier versions keep asyncio's.
"""

from __future__ import annotations

import enum
import types
from asyncio import sslproto, transports
from typing import TYPE_CHECKING, Any

try:
    import ssl
except ImportError:  # pragma: no cover - CPython built without OpenSSL
    ssl = None  # type: ignore[assignment]

# What asyncio's protocol treats as "nothing more to read now" (only defined with ssl).
SSLAgainErrors = getattr(sslproto, "SSLAgainErrors", ())

# The most plaintext one TLS record carries (RFC 8446 5.1, RFC 5246 6.2.1). asyncio reads with
# `max_size` (256 KiB): `_ssl` allocates a bytes object of the size asked for, then shrinks it.
# Above glibc's mmap threshold (128 KiB until a chunk that large is freed whole, which that
# shrinking prevents) every read then costs an mmap, an mremap, a munmap and page faults.
RECORD_PLAINTEXT_MAX = 16 * 1024


class TlsProtocol(sslproto.SSLProtocol):
    """`asyncio.sslproto.SSLProtocol` whose reads end without raising `SSLWantReadError`."""

    if TYPE_CHECKING:
        # The parts of Python 3.11's protocol used here, which typeshed does not describe.
        _sslobj: Any
        _incoming: Any
        _app_protocol: Any

        def _call_eof_received(self) -> None: ...
        def _app_protocol_get_buffer(self, n: int) -> Any: ...
        def _app_protocol_buffer_updated(self, nbytes: int) -> None: ...
        def _get_read_buffer_size(self) -> int: ...
        def _do_read(self) -> None: ...

    def _do_read__copied(self) -> None:
        sslobj = self._sslobj
        incoming = self._incoming
        max_size = min(self.max_size, RECORD_PLAINTEXT_MAX)  # a read never returns more
        chunk = b"1"
        first = None
        rest = None
        try:
            while True:
                chunk = sslobj.read(max_size)
                if not chunk:
                    break
                if first is None:
                    first = chunk
                elif rest is None:
                    rest = [first, chunk]
                else:
                    rest.append(chunk)
                if not incoming.pending and not sslobj.pending():
                    break
        except SSLAgainErrors:
            pass
        if rest is not None:
            self._app_protocol.data_received(b"".join(rest))
        elif first is not None:
            self._app_protocol.data_received(first)
        if not chunk:
            # close_notify
            self._call_eof_received()
            self._start_shutdown()

    def _do_read__buffered(self) -> None:
        sslobj = self._sslobj
        incoming = self._incoming
        offset = 0
        count = 1
        buf = self._app_protocol_get_buffer(self._get_read_buffer_size())
        wants = len(buf)
        try:
            count = sslobj.read(wants, buf)
            if count > 0:
                offset = count
                while offset < wants:
                    if not incoming.pending and not sslobj.pending():
                        break
                    count = sslobj.read(wants - offset, buf[offset:])
                    if count > 0:
                        offset += count
                    else:
                        break
                else:
                    # The buffer is full: read the rest on the next turn, as asyncio does.
                    self._loop.call_soon(self._do_read)
        except SSLAgainErrors:
            pass
        if offset > 0:
            self._app_protocol_buffer_updated(offset)
        if not count:
            # close_notify
            self._call_eof_received()
            self._start_shutdown()


def _look_up_states_without_enum_getattr(cls: type, base: type) -> None:
    """Gives `cls` each function `base` defines and `cls` does not, over plain state lookups.

    The copies share their code objects with `base`'s functions, so they behave exactly alike;
    only `SSLProtocolState.X` and `AppProtocolState.X` resolve through a `SimpleNamespace`.
    Nothing changes where `EnumType` has no `__getattr__` (3.12 removed it), or where the module
    does not define the enums.
    """
    plain: dict[str, types.SimpleNamespace] = {}
    for name in ("SSLProtocolState", "AppProtocolState"):
        states: Any = getattr(sslproto, name, None)
        if not (isinstance(states, enum.EnumMeta) and hasattr(type(states), "__getattr__")):
            return
        members: list[enum.Enum] = list(states)
        plain[name] = types.SimpleNamespace(**{member.name: member for member in members})
    namespace = {**vars(sslproto), **plain}
    for name, function in vars(base).items():
        if not isinstance(function, types.FunctionType) or name in vars(cls):
            continue
        copy = types.FunctionType(
            function.__code__, namespace, function.__name__, function.__defaults__, function.__closure__
        )
        copy.__kwdefaults__ = function.__kwdefaults__
        copy.__qualname__ = function.__qualname__
        copy.__module__ = function.__module__
        copy.__doc__ = function.__doc__
        copy.__dict__.update(function.__dict__)
        setattr(cls, name, copy)


_look_up_states_without_enum_getattr(TlsProtocol, sslproto.SSLProtocol)


async def start_tls(
    loop: Any,  # the loop's `self`: `NativeTransports.start_tls` is this function
    transport: Any,
    protocol: Any,
    sslcontext: ssl.SSLContext,
    *,
    server_side: bool = False,
    server_hostname: str | None = None,
    ssl_handshake_timeout: float | None = None,
    ssl_shutdown_timeout: float | None = None,
) -> transports.Transport:
    """`loop.start_tls()` with the same checks, steps and errors as asyncio's, over `TlsProtocol`."""
    if ssl is None:
        raise RuntimeError("Python ssl module is not available")
    if not isinstance(sslcontext, ssl.SSLContext):
        raise TypeError(f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}")
    if not getattr(transport, "_start_tls_compatible", False):
        raise TypeError(f"transport {transport!r} is not supported by start_tls()")
    waiter = loop.create_future()
    tls = TlsProtocol(
        loop,
        protocol,
        sslcontext,
        waiter,
        server_side,
        server_hostname,
        ssl_handshake_timeout=ssl_handshake_timeout,  # type: ignore[arg-type]  # typeshed: int
        ssl_shutdown_timeout=ssl_shutdown_timeout,
        call_connection_made=False,
    )
    # Nothing may reach the TLS protocol before its connection_made(): reading stays paused
    # until the two callbacks below have run, in this order.
    transport.pause_reading()
    transport.set_protocol(tls)
    made = loop.call_soon(tls.connection_made, transport)
    resumed = loop.call_soon(transport.resume_reading)
    try:
        await waiter
    except BaseException:
        transport.close()
        made.cancel()
        resumed.cancel()
        raise
    return tls._app_transport
