"""Stream transports (TCP and Unix sockets): protocols, flow control, half-close and faults.

Every test runs on ferroloop and on the stdlib asyncio loop (the oracle) through the ``loop``
fixture of conftest.py, whose teardown fails a test on unexpected exception-handler calls, leaked
fds and unclosed-transport warnings.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import ssl
import struct
import tempfile

import pytest

WAIT = 10.0
BIG = 4 * 1024 * 1024  # far above any socket buffer, so writes must be buffered


def run(loop, aw, timeout=WAIT):
    return loop.run_until_complete(asyncio.wait_for(aw, timeout))


class Recorder(asyncio.Protocol):
    """Records every callback; `data` accumulates what was received."""

    def __init__(self, loop, eof_result=None):
        self.loop = loop
        self.events: list[str] = []
        self.data = bytearray()
        self.transport = None
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.eof = loop.create_future()
        self.eof_result = eof_result
        self.lost_calls: list[BaseException | None] = []
        self._want: tuple[int, asyncio.Future] | None = None

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport
        self.made.set_result(None)

    def data_received(self, data):
        assert isinstance(data, bytes)
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data
        self._check_want()

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)
        return self.eof_result

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost_calls.append(exc)
        if not self.lost.done():
            self.lost.set_result(exc)
        if self._want is not None and not self._want[1].done():
            self._want[1].set_exception(ConnectionError("lost before enough data"))

    def _check_want(self):
        if self._want is not None and len(self.data) >= self._want[0] and not self._want[1].done():
            self._want[1].set_result(None)

    async def received(self, n):
        self._want = (n, self.loop.create_future())
        self._check_want()
        await self._want[1]


class Pair:
    """A server and one connected client on the loop under test, over TCP or a Unix socket."""

    def __init__(self, loop, kind="tcp", server_factory=None, client_factory=None):
        self.loop = loop
        self.kind = kind
        self.server_factory = server_factory or (lambda: Recorder(loop))
        self.client_factory = client_factory or (lambda: Recorder(loop))
        self.server_protocols: list = []
        self.tmpdir = None

    async def open(self):
        def make_server_protocol():
            proto = self.server_factory()
            self.server_protocols.append(proto)
            return proto

        if self.kind == "tcp":
            self.server = await self.loop.create_server(make_server_protocol, "127.0.0.1", 0)
            port = self.server.sockets[0].getsockname()[1]
            tr, proto = await self.loop.create_connection(self.client_factory, "127.0.0.1", port)
        else:
            self.tmpdir = tempfile.TemporaryDirectory()
            path = os.path.join(self.tmpdir.name, "sock")
            self.server = await self.loop.create_unix_server(make_server_protocol, path)
            tr, proto = await self.loop.create_unix_connection(self.client_factory, path)
        self.client_transport, self.client = tr, proto
        while not self.server_protocols or self.server_protocols[0].transport is None:
            await asyncio.sleep(0)
        self.peer = self.server_protocols[0]
        return self

    async def close(self):
        for proto in [self.client, *self.server_protocols]:
            if proto.transport is not None:
                proto.transport.close()
        for proto in [self.client, *self.server_protocols]:
            if hasattr(proto, "lost"):
                await proto.lost
        self.server.close()
        await self.server.wait_closed()
        if self.tmpdir is not None:
            self.tmpdir.cleanup()


def with_pair(loop, body, **kwargs):
    async def main():
        pair = await Pair(loop, **kwargs).open()
        try:
            return await body(pair)
        finally:
            await pair.close()

    return run(loop, main())


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_transport_is_an_asyncio_transport_with_socket_extra_info(loop, kind):
    async def body(pair):
        tr = pair.client_transport
        assert isinstance(tr, asyncio.Transport)
        sock = tr.get_extra_info("socket")
        assert sock.fileno() >= 0
        assert tr.get_extra_info("sockname") == sock.getsockname()
        assert tr.get_extra_info("peername") == sock.getpeername()
        assert tr.get_extra_info("missing", "default") == "default"
        assert tr.get_protocol() is pair.client
        assert tr.can_write_eof()
        assert tr.is_reading() and not tr.is_closing()
        if kind == "tcp":
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    with_pair(loop, body, kind=kind)


def test_code_can_hang_attributes_on_a_transport_and_patch_its_methods(loop):
    # Libraries keep their own state on transports, and tests patch a transport's methods
    # (uvicorn's swallow a websocket's pongs by replacing `write`); asyncio's transports allow it.
    async def body(pair):
        tr = pair.client_transport
        tr.app_state = "mine"
        assert tr.app_state == "mine"
        swallowed = []
        tr.write = swallowed.append
        tr.write(b"dropped")
        assert swallowed == [b"dropped"]
        del tr.write
        tr.write(b"sent")
        await pair.peer.received(4)
        assert bytes(pair.peer.data) == b"sent"

    with_pair(loop, body)


def test_private_extra_dict_holds_asyncios_keys_and_rules_get_extra_info(loop):
    """`_extra` (private, but read by libraries) has the keys asyncio puts there, and what is
    stored through it is what get_extra_info() answers."""

    async def body(pair):
        tr = pair.client_transport
        extra = tr._extra
        assert {"socket", "sockname", "peername"} <= extra.keys()
        assert extra["socket"] is tr.get_extra_info("socket")
        assert extra["peername"] == tr.get_extra_info("peername")
        extra["peername"] = ("203.0.113.1", 1)
        extra["custom"] = "value"
        assert tr.get_extra_info("peername") == ("203.0.113.1", 1)
        assert tr.get_extra_info("custom") == "value"

    with_pair(loop, body)


def test_a_transports_reader_handle_shows_the_read_ready_method(loop):
    """The reader the transport installs is a handle whose callback (and repr) names the
    transport side's `_read_ready`, as asyncio's does, also where the loop calls it natively."""

    async def body(pair):
        fd = pair.client_transport.get_extra_info("socket").fileno()
        handle = loop._selector.get_key(fd).data[0]
        assert handle._callback.__name__ == "_read_ready"
        assert "_read_ready" in repr(handle)

    with_pair(loop, body)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_bytes_written_arrive_in_order_and_close_calls_connection_lost_once(loop, kind):
    async def body(pair):
        pair.client_transport.write(b"abc")
        pair.client_transport.write(bytearray(b"def"))
        pair.client_transport.write(memoryview(b"xxghi")[2:])
        pair.client_transport.writelines([b"j", bytearray(b"k"), memoryview(b"l")])
        await pair.peer.received(12)
        assert bytes(pair.peer.data) == b"abcdefghijkl"
        pair.client_transport.close()
        assert pair.client_transport.is_closing()
        assert await pair.client.lost is None
        await pair.peer.eof
        await pair.peer.lost
        assert pair.client.events == ["made", "lost"]
        assert pair.peer.events == ["made", "data", "eof", "lost"]
        assert pair.client.lost_calls == [None]
        assert pair.client_transport.get_extra_info("socket") is not None

    with_pair(loop, body, kind=kind)


def test_large_write_is_buffered_then_fully_delivered(loop):
    payload = os.urandom(BIG)

    async def body(pair):
        pair.client_transport.write(payload)
        assert pair.client_transport.get_write_buffer_size() > 0
        await pair.peer.received(len(payload))
        assert bytes(pair.peer.data) == payload
        assert pair.client_transport.get_write_buffer_size() == 0

    with_pair(loop, body)


def test_close_sends_the_buffer_before_connection_lost(loop):
    payload = os.urandom(BIG)

    async def body(pair):
        pair.client_transport.write(payload)
        pair.client_transport.close()
        # Closing twice is a no-op.
        pair.client_transport.close()
        await pair.peer.eof
        assert bytes(pair.peer.data) == payload
        assert await pair.client.lost is None

    with_pair(loop, body)


class Buffered(asyncio.BufferedProtocol):
    def __init__(self, loop, size=7):
        self.buf = bytearray(size)
        self.data = bytearray()
        self.sizes: list[int] = []
        self.transport = None
        self.lost = loop.create_future()
        self.eof = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        self.sizes.append(sizehint)
        return self.buf

    def buffer_updated(self, nbytes):
        self.data += self.buf[:nbytes]

    def eof_received(self):
        self.eof.set_result(None)

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


def test_buffered_protocol_receives_into_its_own_buffer(loop):
    payload = os.urandom(1000)

    async def body(pair):
        pair.peer.transport.write(payload)
        pair.peer.transport.write_eof()
        await pair.client.eof
        assert bytes(pair.client.data) == payload
        # Each read fills at most the 7-byte buffer the protocol offered.
        assert len(pair.client.sizes) >= len(payload) // 7
        assert set(pair.client.sizes) == {-1}

    with_pair(loop, body, client_factory=lambda: Buffered(loop))


def test_buffered_protocol_returning_an_empty_buffer_is_a_fatal_error(loop, handler_calls):
    async def body(pair):
        pair.peer.transport.write(b"data")
        exc = await pair.client.lost
        assert isinstance(exc, RuntimeError)
        assert str(exc) == "get_buffer() returned an empty buffer"

    with_pair(loop, body, client_factory=lambda: Buffered(loop, size=0))
    assert [c["message"] for c in handler_calls] == ["Fatal error: protocol.get_buffer() call failed."]
    assert isinstance(handler_calls[0]["transport"], asyncio.Transport)


def test_switching_to_a_buffered_protocol_mid_stream(loop):
    async def body(pair):
        pair.peer.transport.write(b"first")
        await pair.client.received(5)
        buffered = Buffered(loop)
        pair.client_transport.set_protocol(buffered)
        assert pair.client_transport.get_protocol() is buffered
        pair.peer.transport.write(b"second")
        pair.peer.transport.write_eof()
        await buffered.eof
        assert bytes(buffered.data) == b"second"
        pair.client_transport.close()
        await buffered.lost
        pair.client.transport = None
        pair.client.lost.set_result(None)

    with_pair(loop, body)


def test_eof_received_returning_true_keeps_the_transport_open_for_writing(loop):
    async def body(pair):
        pair.client_transport.write(b"request")
        pair.client_transport.write_eof()
        # write_eof() twice is a no-op; write() after it is an error.
        pair.client_transport.write_eof()
        with pytest.raises(RuntimeError, match=r"Cannot call write\(\) after write_eof\(\)"):
            pair.client_transport.write(b"more")
        await pair.peer.eof
        assert bytes(pair.peer.data) == b"request"
        assert not pair.peer.transport.is_closing()
        pair.peer.transport.write(b"response")
        pair.peer.transport.close()
        await pair.client.eof
        assert bytes(pair.client.data) == b"response"
        await pair.peer.lost

    with_pair(loop, body, server_factory=lambda: Recorder(loop, eof_result=True))


def test_eof_received_returning_false_closes_the_transport(loop):
    async def body(pair):
        pair.client_transport.write_eof()
        await pair.peer.eof
        assert await pair.peer.lost is None
        assert pair.peer.transport.is_closing()
        await pair.client.eof

    with_pair(loop, body)


def test_write_rejects_non_bytes_with_asyncio_message(loop):
    async def body(pair):
        with pytest.raises(TypeError, match="data argument must be a bytes-like object, not 'str'"):
            pair.client_transport.write("text")
        with pytest.raises(TypeError):
            pair.client_transport.writelines([b"ok", "text"])
        pair.client_transport.write(b"")
        pair.client_transport.write(b"end")
        await pair.peer.received(3)
        # The failed writelines() wrote nothing.
        assert bytes(pair.peer.data) == b"end"

    with_pair(loop, body)


def test_write_buffer_limits_defaults_and_validation(loop):
    async def body(pair):
        tr = pair.client_transport
        assert tr.get_write_buffer_limits() == (16384, 65536)
        tr.set_write_buffer_limits(high=1000)
        assert tr.get_write_buffer_limits() == (250, 1000)
        tr.set_write_buffer_limits(low=100)
        assert tr.get_write_buffer_limits() == (100, 400)
        with pytest.raises(ValueError, match=r"high \(1\) must be >= low \(2\) must be >= 0"):
            tr.set_write_buffer_limits(high=1, low=2)
        assert tr.get_write_buffer_limits() == (100, 400)

    with_pair(loop, body)


class FlowRecorder(Recorder):
    def __init__(self, loop):
        super().__init__(loop)
        self.pauses = 0
        self.resumes = 0
        self.resumed = loop.create_future()

    def pause_writing(self):
        self.pauses += 1

    def resume_writing(self):
        self.resumes += 1
        if not self.resumed.done():
            self.resumed.set_result(None)


def test_pause_and_resume_writing_at_the_water_marks(loop):
    payload = os.urandom(BIG)

    async def body(pair):
        pair.peer.transport.pause_reading()
        tr = pair.client_transport
        tr.set_write_buffer_limits(high=64 * 1024)
        tr.write(payload)
        assert tr.get_write_buffer_size() > 64 * 1024
        assert pair.client.pauses == 1
        tr.write(b"tail")
        assert pair.client.pauses == 1
        pair.peer.transport.resume_reading()
        await pair.client.resumed
        assert tr.get_write_buffer_size() <= 16 * 1024
        await pair.peer.received(len(payload) + 4)
        assert bytes(pair.peer.data) == payload + b"tail"
        assert pair.client.resumes == 1

    with_pair(loop, body, client_factory=lambda: FlowRecorder(loop))


def test_setting_a_lower_high_water_mark_pauses_at_once(loop):
    async def body(pair):
        pair.peer.transport.pause_reading()
        tr = pair.client_transport
        tr.write(os.urandom(BIG))
        pauses = pair.client.pauses
        tr.set_write_buffer_limits(high=0)
        assert pair.client.pauses == max(pauses, 1)
        tr.abort()
        await pair.client.lost

    with_pair(loop, body, client_factory=lambda: FlowRecorder(loop))


def test_slow_reader_keeps_a_draining_writers_buffer_bounded(loop):
    chunk = b"x" * 65536
    count = 64

    async def main():
        done = loop.create_future()
        seen_max = 0

        async def handle(reader, writer):
            got = 0
            while got < len(chunk) * count:
                data = await reader.read(4096)
                if not data:
                    break
                got += len(data)
                if got % (256 * 1024) < 4096:
                    await asyncio.sleep(0.001)
            writer.close()
            await writer.wait_closed()
            done.set_result(got)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        high = writer.transport.get_write_buffer_limits()[1]
        for _ in range(count):
            writer.write(chunk)
            seen_max = max(seen_max, writer.transport.get_write_buffer_size())
            await writer.drain()
        assert await done == len(chunk) * count
        # drain() waits while the buffer is above the high-water mark: one chunk over it at most.
        assert seen_max <= high + len(chunk)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=30)


def test_pause_reading_holds_data_until_resume_reading(loop):
    async def body(pair):
        tr = pair.client_transport
        tr.pause_reading()
        assert not tr.is_reading()
        tr.pause_reading()  # no-op
        pair.peer.transport.write(b"held")
        for _ in range(20):
            await asyncio.sleep(0)
        assert bytes(pair.client.data) == b""
        tr.resume_reading()
        assert tr.is_reading()
        await pair.client.received(4)
        assert bytes(pair.client.data) == b"held"

    with_pair(loop, body)


def test_close_while_reading_is_paused_calls_connection_lost(loop):
    async def body(pair):
        tr = pair.client_transport
        tr.pause_reading()
        tr.close()
        assert not tr.is_reading()
        tr.resume_reading()  # no-op once closing
        assert await pair.client.lost is None
        assert pair.client.lost_calls == [None]

    with_pair(loop, body)


def test_abort_while_writing_is_paused_drops_the_buffer(loop):
    async def body(pair):
        pair.peer.transport.pause_reading()
        tr = pair.client_transport
        tr.write(os.urandom(BIG))
        assert pair.client.pauses == 1
        tr.abort()
        assert tr.is_closing()
        assert tr.get_write_buffer_size() == 0
        assert await pair.client.lost is None
        tr.abort()  # no-op
        tr.write(b"dropped")  # silently dropped once the connection is lost
        assert pair.client.lost_calls == [None]

    with_pair(loop, body, client_factory=lambda: FlowRecorder(loop))


def test_peer_reset_during_buffered_write_loses_the_connection_with_the_error(loop, caplog):
    async def body(pair):
        tr = pair.client_transport
        peer_sock = pair.peer.transport.get_extra_info("socket")
        pair.peer.transport.pause_reading()
        tr.write(os.urandom(BIG))
        # Abortive close: the kernel answers further data with RST.
        peer_sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        pair.peer.transport.abort()
        exc = await pair.client.lost
        assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
        assert pair.client.lost_calls == [exc]
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(8):
                tr.write(b"after")
        assert "socket.send() raised exception." in caplog.text

    with_pair(loop, body)


def test_exception_in_data_received_is_reported_and_closes(loop, handler_calls):
    class Failing(Recorder):
        def data_received(self, data):
            raise ValueError("bad data")

    async def body(pair):
        pair.peer.transport.write(b"x")
        exc = await pair.client.lost
        assert isinstance(exc, ValueError)

    with_pair(loop, body, client_factory=lambda: Failing(loop))
    assert len(handler_calls) == 1
    ctx = handler_calls[0]
    assert ctx["message"] == "Fatal error: protocol.data_received() call failed."
    assert isinstance(ctx["exception"], ValueError)
    assert isinstance(ctx["protocol"], Recorder)
    assert isinstance(ctx["transport"], asyncio.Transport)


def test_exception_in_pause_writing_is_reported_and_the_transport_stays_usable(loop, handler_calls):
    class BadPause(Recorder):
        def pause_writing(self):
            raise ValueError("no pause")

    async def body(pair):
        payload = os.urandom(BIG)
        pair.client_transport.write(payload)
        await pair.peer.received(len(payload))

    with_pair(loop, body, client_factory=lambda: BadPause(loop))
    assert [c["message"] for c in handler_calls] == ["protocol.pause_writing() failed"]


def test_connect_accepted_socket_wraps_a_connected_socket(loop):
    async def main():
        a, b = socket.socketpair()
        try:
            tr, proto = await loop.connect_accepted_socket(lambda: Recorder(loop), a)
            b.sendall(b"ping")
            await proto.received(4)
            tr.write(b"pong")
            b.setblocking(False)
            got = await loop.sock_recv(b, 4)
            assert got == b"pong"
            tr.close()
            await proto.lost
        finally:
            b.close()

    run(loop, main())


def test_streams_round_trip_over_native_transports(loop):
    async def main():
        async def handle(reader, writer):
            while line := await reader.readline():
                writer.write(line.upper())
                await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for word in (b"alpha\n", b"beta\n"):
            writer.write(word)
            assert await reader.readline() == word.upper()
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


async def _stream_pair(loop, protocol):
    """A server that writes what it is sent, and a client transport carrying `protocol`."""
    server_side = loop.create_future()

    async def handle(reader, writer):
        server_side.set_result(writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(lambda: protocol, "127.0.0.1", port)
    return server, await server_side, transport


async def _close_stream_pair(server, writer, transport):
    transport.close()
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


def test_stream_reader_protocol_subclass_gets_its_data_received_called(loop):
    seen = []

    class Counting(asyncio.StreamReaderProtocol):
        def data_received(self, data):
            seen.append(data)
            super().data_received(data)

    async def main():
        reader = asyncio.StreamReader()
        server, writer, transport = await _stream_pair(loop, Counting(reader))
        writer.write(b"counted")
        assert await reader.readexactly(7) == b"counted"
        await _close_stream_pair(server, writer, transport)

    run(loop, main())
    assert b"".join(seen) == b"counted"


def test_patched_stream_reader_protocol_data_received_is_called(loop, monkeypatch):
    seen = []
    original = asyncio.StreamReaderProtocol.data_received

    def spy(self, data):
        seen.append(data)
        original(self, data)

    monkeypatch.setattr(asyncio.StreamReaderProtocol, "data_received", spy)

    async def main():
        reader = asyncio.StreamReader()
        server, writer, transport = await _stream_pair(loop, asyncio.StreamReaderProtocol(reader))
        writer.write(b"spied")
        assert await reader.readexactly(5) == b"spied"
        await _close_stream_pair(server, writer, transport)

    run(loop, main())
    assert b"".join(seen) == b"spied"


def test_stream_data_for_a_reader_that_is_gone_is_dropped_quietly(loop):
    """A StreamReaderProtocol holds its reader weakly: data arriving after the program dropped the
    reader is discarded, with no error."""

    async def main():
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        server, writer, transport = await _stream_pair(loop, protocol)
        del reader
        gc.collect()
        writer.write(b"nobody reads this")
        await writer.drain()
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert not transport.is_closing()
        await _close_stream_pair(server, writer, transport)

    run(loop, main())


def test_tls_round_trip_over_native_transports(loop):
    utils = pytest.importorskip("test.test_asyncio.utils")

    async def main():
        async def handle(reader, writer):
            writer.write(await reader.readexactly(5))
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=utils.simple_server_sslcontext())
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=utils.simple_client_sslcontext(), server_hostname=""
        )
        assert isinstance(writer.get_extra_info("ssl_object"), ssl.SSLObject)
        assert writer.get_extra_info("cipher") is not None
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_start_tls_upgrades_a_plain_connection(loop):
    utils = pytest.importorskip("test.test_asyncio.utils")

    class Upgrader(asyncio.Protocol):
        """Answers b"GO" to b"STARTTLS", switches to TLS, then echoes."""

        def __init__(self):
            self.tls = None
            self.tls_transport = None
            self.pending = b""
            self.lost = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            if self.tls is None:
                assert data == b"STARTTLS"
                self.transport.write(b"GO")
                self.tls = loop.create_task(self.upgrade())
            else:
                # Decrypted data can arrive with the end of the handshake, before start_tls()
                # has returned the new transport.
                self.pending += data
                self.flush()

        def flush(self):
            if self.tls_transport is not None and self.pending:
                self.tls_transport.write(self.pending)
                self.pending = b""

        async def upgrade(self):
            ctx = utils.simple_server_sslcontext()
            self.tls_transport = await loop.start_tls(self.transport, self, ctx, server_side=True)
            self.flush()

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        protocols = []

        def factory():
            protocols.append(Upgrader())
            return protocols[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"STARTTLS")
        assert await reader.readexactly(2) == b"GO"
        await writer.start_tls(utils.simple_client_sslcontext(), server_hostname="")
        assert isinstance(writer.get_extra_info("ssl_object"), ssl.SSLObject)
        writer.write(b"secret")
        assert await reader.readexactly(6) == b"secret"
        await protocols[0].tls
        writer.close()
        await writer.wait_closed()
        await protocols[0].lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_sendfile_over_a_native_transport(loop, tmp_path):
    payload = os.urandom(1024 * 1024 + 17)
    path = tmp_path / "blob"
    path.write_bytes(payload)

    async def body(pair):
        with open(path, "rb") as f:
            sent = await loop.sendfile(pair.client_transport, f, offset=17)
        assert sent == len(payload) - 17
        await pair.peer.received(sent)
        assert bytes(pair.peer.data) == payload[17:]
        # The transport reads again afterwards.
        pair.peer.transport.write(b"after")
        await pair.client.received(5)

    with_pair(loop, body)


def test_closing_the_server_side_is_seen_as_eof_by_the_client(loop):
    async def body(pair):
        pair.peer.transport.write(b"bye")
        pair.peer.transport.close()
        await pair.client.eof
        assert bytes(pair.client.data) == b"bye"
        assert await pair.client.lost is None

    with_pair(loop, body)
