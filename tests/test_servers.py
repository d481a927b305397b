"""Connections and servers: create_connection/create_server arguments, Server objects, Unix
servers, errors with asyncio's types and messages, sendfile. Every test runs on ferroloop and on
the stdlib asyncio loop (the oracle)."""

from __future__ import annotations

import asyncio
import contextvars
import errno
import gc
import os
import selectors
import socket
import ssl
import sys
import tempfile
import warnings

import pytest

WAIT = 10.0


def run(loop, aw, timeout=WAIT):
    return loop.run_until_complete(asyncio.wait_for(aw, timeout))


def _ipv6_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_works(), reason="no IPv6 loopback")


class Hello(asyncio.Protocol):
    """Writes b"hello" and closes on connection."""

    def connection_made(self, transport):
        transport.write(b"hello")
        transport.close()


async def read_hello(host, port=None, **kwargs):
    if port is None:
        reader, writer = await asyncio.open_unix_connection(host, **kwargs)
    else:
        reader, writer = await asyncio.open_connection(host, port, **kwargs)
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


connection_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("connection_var", default=None)


def test_each_accepted_connection_gets_its_own_context(loop):
    # The protocol factory runs in a context of its own for each connection: what it sets is
    # seen by that connection's callbacks and by no other connection.
    seen = []

    class Tagged(asyncio.Protocol):
        def __init__(self):
            seen.append(("factory", connection_var.get()))
            connection_var.set(len(seen))

        def connection_made(self, transport):
            seen.append(("connection_made", connection_var.get()))
            transport.write(b"hello")

        def data_received(self, data):
            seen.append(("data_received", connection_var.get()))

        def eof_received(self):
            return False

    async def one_connection(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.readexactly(5) == b"hello"
        writer.write(b"x")
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await loop.create_server(Tagged, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        await one_connection(port)
        await one_connection(port)
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert seen == [
        ("factory", None),
        ("connection_made", 1),
        ("data_received", 1),
        ("factory", None),
        ("connection_made", 4),
        ("data_received", 4),
    ]


def test_server_keeps_accepting_after_a_protocol_factory_error(loop, handler_calls):
    loop.set_debug(True)
    attempts = 0

    def factory():
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("no protocol for you")
        return Hello()

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not handler_calls:
            await asyncio.sleep(0.01)
        writer.close()
        await writer.wait_closed()
        assert await read_hello("127.0.0.1", port) == b"hello"
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert [c["message"] for c in handler_calls] == ["Error on transport creation for incoming connection"]
    exc = handler_calls[0]["exception"]
    assert isinstance(exc, RuntimeError)
    # asyncio leaves the failed connection's socket to the garbage collector (the exception's
    # traceback holds it, and it warns when collected); ferroloop closes it at once.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        exc.__traceback__ = None
        gc.collect()


def test_server_object_lifecycle(loop):
    async def main():
        server = await loop.create_server(Hello, "127.0.0.1", 0, start_serving=False)
        assert isinstance(server, asyncio.AbstractServer)
        assert server.get_loop() is loop
        assert not server.is_serving()
        (sock,) = server.sockets
        port = sock.getsockname()[1]
        assert sock.family == socket.AF_INET
        await server.start_serving()
        assert server.is_serving()
        assert await read_hello("127.0.0.1", port) == b"hello"
        async with server:
            assert await read_hello("127.0.0.1", port) == b"hello"
        assert not server.is_serving()
        await server.wait_closed()
        with pytest.raises(OSError):
            await read_hello("127.0.0.1", port)

    run(loop, main())


def test_serve_forever_serves_until_cancelled(loop):
    async def main():
        server = await loop.create_server(Hello, "127.0.0.1", 0, start_serving=False)
        port = server.sockets[0].getsockname()[1]
        task = loop.create_task(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving()
        assert await read_hello("127.0.0.1", port) == b"hello"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()
        await server.wait_closed()

    run(loop, main())


@needs_ipv6
def test_create_server_listens_on_each_host(loop):
    async def main():
        server = await loop.create_server(Hello, ["127.0.0.1", "::1"], 0)
        families = sorted(s.family for s in server.sockets)
        assert families == sorted([socket.AF_INET, socket.AF_INET6])
        for s in server.sockets:
            host, port = s.getsockname()[:2]
            assert await read_hello(host, port) == b"hello"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_address_in_use_error_names_the_address(loop):
    async def main():
        server = await loop.create_server(Hello, "127.0.0.1", 0, reuse_address=False)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(OSError) as info:
                await loop.create_server(Hello, "127.0.0.1", port, reuse_address=False)
            assert info.value.errno == errno.EADDRINUSE
            assert f"('127.0.0.1', {port})" in str(info.value)
        finally:
            server.close()
            await server.wait_closed()

    run(loop, main())


def test_reuse_port_lets_two_servers_share_a_port(loop):
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT")

    async def main():
        first = await loop.create_server(Hello, "127.0.0.1", 0, reuse_port=True)
        port = first.sockets[0].getsockname()[1]
        second = await loop.create_server(Hello, "127.0.0.1", port, reuse_port=True)
        assert await read_hello("127.0.0.1", port) == b"hello"
        for server in (first, second):
            server.close()
            await server.wait_closed()

    run(loop, main())


def test_connection_refused_raises_connection_refused_error(loop):
    async def main():
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)

    run(loop, main())


def test_create_connection_with_local_addr_family_and_happy_eyeballs(loop):
    async def main():
        server = await loop.create_server(Hello, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            local_port = probe.getsockname()[1]
        got = loop.create_future()

        class Collect(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
                self.data = b""

            def data_received(self, data):
                self.data += data

            def connection_lost(self, exc):
                got.set_result(self.data)

        tr, _ = await loop.create_connection(
            Collect,
            "localhost",
            port,
            family=socket.AF_INET,
            local_addr=("127.0.0.1", local_port),
            happy_eyeballs_delay=0.05,
            interleave=1,
        )
        assert tr.get_extra_info("sockname") == ("127.0.0.1", local_port)
        assert await got == b"hello"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_create_connection_rejects_bad_argument_combinations(loop):
    async def main():
        with pytest.raises(ValueError, match="host and port was not specified and no sock specified"):
            await loop.create_connection(asyncio.Protocol)
        with socket.socket() as s:
            with pytest.raises(ValueError, match="host/port and sock can not be specified at the same time"):
                await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1, sock=s)
        with pytest.raises(ValueError, match="server_hostname is only meaningful with ssl"):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1, server_hostname="x")
        with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful with ssl"):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1, ssl_handshake_timeout=1)

    run(loop, main())


def test_unix_server_replaces_a_stale_socket_file(loop):
    async def main():
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "stale.sock")
            stale = socket.socket(socket.AF_UNIX)
            stale.bind(path)
            stale.close()  # the file stays behind
            server = await loop.create_unix_server(Hello, path)
            assert await read_hello(path) == b"hello"
            server.close()
            await server.wait_closed()

    run(loop, main())


def test_unix_server_refuses_to_replace_a_regular_file(loop):
    async def main():
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "regular")
            with open(path, "w") as f:
                f.write("not a socket")
            with pytest.raises(OSError) as info:
                await loop.create_unix_server(Hello, path)
            assert info.value.errno == errno.EADDRINUSE

    run(loop, main())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux abstract namespace")
def test_unix_server_in_the_abstract_namespace(loop):
    async def main():
        name = "\0ferroloop-" + os.urandom(6).hex()
        server = await loop.create_unix_server(Hello, name)
        assert await read_hello(name) == b"hello"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_servers_from_existing_sockets(loop):
    async def main():
        tcp = socket.socket()
        tcp.bind(("127.0.0.1", 0))
        port = tcp.getsockname()[1]
        server = await loop.create_server(Hello, sock=tcp)
        assert await read_hello("127.0.0.1", port) == b"hello"
        server.close()
        await server.wait_closed()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "s")
            unix = socket.socket(socket.AF_UNIX)
            unix.bind(path)
            server = await loop.create_unix_server(Hello, sock=unix)
            assert await read_hello(path) == b"hello"
            server.close()
            await server.wait_closed()

    run(loop, main())


def test_sock_sendfile_sends_a_file_range(loop, tmp_path):
    payload = os.urandom(300_000)
    path = tmp_path / "f"
    path.write_bytes(payload)

    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        with a, b, open(path, "rb") as f:
            sending = loop.create_task(loop.sock_sendfile(a, f, offset=100, count=200_000))
            got = bytearray()
            while len(got) < 200_000:
                got += await loop.sock_recv(b, 65536)
            assert await sending == 200_000
            assert bytes(got) == payload[100:200_100]
            assert f.tell() == 200_100

    run(loop, main())


def test_sendfile_without_fallback_on_tls_raises(loop, tmp_path):
    utils = pytest.importorskip("test.test_asyncio.utils")
    path = tmp_path / "f"
    path.write_bytes(b"data")

    async def main():
        server = await asyncio.start_server(
            lambda r, w: w.close(), "127.0.0.1", 0, ssl=utils.simple_server_sslcontext()
        )
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=utils.simple_client_sslcontext(), server_hostname=""
        )
        with open(path, "rb") as f:
            with pytest.raises(RuntimeError, match="fallback is disabled"):
                await loop.sendfile(writer.transport, f, fallback=False)
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass
        server.close()
        await server.wait_closed()

    run(loop, main())


class _FailingListener:
    """A listening socket stand-in whose accept() raises the given errors in turn."""

    def __init__(self, *errors):
        self._sock = socket.socket()
        self.errors = list(errors)
        self.accepts = 0

    def accept(self):
        self.accepts += 1
        raise self.errors.pop(0)

    def fileno(self):
        return self._sock.fileno()

    def close(self):
        self._sock.close()


def test_accept_error_other_than_exhausted_resources_propagates(loop):
    # The loop's reader for a listening socket raises such an error (the loop then reports it).
    listener = _FailingListener(PermissionError(errno.EPERM, "denied by a firewall"), BlockingIOError())
    try:
        with pytest.raises(PermissionError):
            loop._accept_connection(Hello, listener)
        assert listener.accepts == 1
    finally:
        listener.close()


def test_accept_out_of_fds_reports_and_backs_off(loop, handler_calls, monkeypatch):
    monkeypatch.setattr(asyncio.constants, "ACCEPT_RETRY_DELAY", 0.01)
    listener = _FailingListener(OSError(errno.EMFILE, "Too many open files"), BlockingIOError())
    try:
        loop._accept_connection(Hello, listener)
        # asyncio goes on calling accept() after such an error (up to `backlog` times, reporting
        # each failure); ferroloop stops at the first.
        assert listener.accepts >= 1
        assert [c["message"] for c in handler_calls] == ["socket.accept() out of system resource"]
        assert handler_calls[0]["exception"].errno == errno.EMFILE
        # Accepting resumes after the retry delay: the listener is watched again.
        with pytest.raises(KeyError):
            loop._selector.get_key(listener.fileno())
        loop.run_until_complete(asyncio.sleep(0.1))
        assert loop._selector.get_key(listener.fileno()).events == selectors.EVENT_READ
        assert loop.remove_reader(listener.fileno())
    finally:
        listener.close()
